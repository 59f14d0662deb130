//! Benchmarks (placeholder until the harness lands).
#[derive(Debug, Default, clap::Args)]
pub struct BenchArgs {}

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("benchmarks are not implemented yet")
}
