//! The VM test tier (placeholder until the VM runner lands).
#[derive(Debug, Default, clap::Args)]
pub struct VmArgs {}

pub fn run(_args: VmArgs) -> anyhow::Result<()> {
    anyhow::bail!("the VM tier is not implemented yet")
}
