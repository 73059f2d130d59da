//! `tickmesh run`. (lands with the control-plane work)
pub fn run(_: &crate::cli::RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
