//! `warden nats flush SPOOL --url URL`: publish what a spool still holds.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64},
    time::{Duration, Instant},
};

use super::Failure;
use crate::audit::nats::publish_spool;

#[derive(Debug, clap::Subcommand)]
pub enum NatsCmd {
    /// Publish the unsent records of a spool (left when the server was unreachable).
    Flush {
        spool: PathBuf,
        #[arg(long)]
        url: String,
        /// Node name for the subject (default: this host's name).
        #[arg(long)]
        node: Option<String>,
        /// Give up after this long.
        #[arg(long, default_value = "60s", value_parser = crate::util::parse_duration)]
        timeout: Duration,
    },
}

pub fn run(cmd: NatsCmd) -> Result<i32, Failure> {
    let NatsCmd::Flush { spool, url, node, timeout } = cmd;
    if !spool.exists() {
        return Err(Failure::Usage(anyhow::anyhow!("no spool at {}", spool.display())));
    }
    let node = node.unwrap_or_else(crate::task::node_name);
    let stop = AtomicBool::new(true);
    let give_up = AtomicBool::new(false);
    let published = AtomicU64::new(0);
    let st = publish_spool(&url, &node, &spool, &stop, &give_up, &published, Some(Instant::now() + timeout))
        .map_err(|e| Failure::Runtime(e.into()))?;
    println!("{}: {} published, {} pending", spool.display(), st.published, st.pending);
    Ok(if st.pending == 0 { 0 } else { 1 })
}
