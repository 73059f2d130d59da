use crate::cli::{ApplyArgs, DeleteArgs, GetArgs, StatsArgs};
pub fn apply(_: &ApplyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn delete(_: &DeleteArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn get(_: &GetArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
pub fn stats(_: &StatsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
