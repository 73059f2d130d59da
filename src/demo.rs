//! `tickmesh demo`. (lands with the engine work)
pub fn run(_: &crate::cli::DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
