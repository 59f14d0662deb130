//! `warden probe`
use super::Failure;
use crate::loader::probe::probe;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ProbeArgs) -> Result<i32, Failure> {
    let report = probe();
    if args.json {
        let s = serde_json::to_string_pretty(&report).map_err(|e| Failure::Runtime(e.into()))?;
        println!("{s}");
    } else {
        print!("{}", report.table());
    }
    Ok(0)
}
