//! `cargo xtask bench`: builds `warden-bench` (package `warden-tests`) in release and runs it
//! as root. The harness itself lives there, because it needs agent-user and the eBPF object;
//! xtask must build without them (its setup step runs before anything eBPF is built).
//! See docs/benchmarks.md.
use std::{path::PathBuf, process::Command};

use anyhow::bail;

use crate::util::{self, cargo, is_root, target_dir};

/// Options passed through to `warden-bench`.
#[derive(Debug, Default, clap::Args)]
pub struct BenchArgs {
    /// Fewer rounds (3) and a quarter of the operations: a smoke run of ~20 s.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of (a b c) per workload (default 5; 3 with --quick).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Operations per run: one number for every workload, or `open=N,exec=N,...`.
    #[arg(long)]
    pub ops: Option<String>,
    /// Workloads to run, comma-separated: open, exec, connect, fork (default all).
    #[arg(long)]
    pub only: Option<String>,
    /// Ring buffer bytes for the sensor (default: the loader's default).
    #[arg(long)]
    pub ring_bytes: Option<u32>,
    /// Before each run, wait up to this many seconds for a quiet machine (default 5).
    #[arg(long)]
    pub settle: Option<f64>,
    /// Diagnostic: report in-kernel run time per BPF program (adds its own small cost).
    #[arg(long)]
    pub bpf_stats: bool,
    /// Diagnostic: in (c), drain the ring only after each run (kernel side alone).
    #[arg(long)]
    pub pause_consumer: bool,
    /// Repeat a run disturbed by other processes (> 0.25 core) up to N times (default 2).
    #[arg(long)]
    pub retries: Option<u32>,
    /// The consumer also drains every N ms, besides its own 10 ms tick and the kernel's wake-ups.
    #[arg(long)]
    pub poll_ms: Option<u64>,
    /// Also run the storms under peers' watching (bpftrace counting the same syscalls; auditd
    /// with exec/open/connect rules, its rules undone after each run).
    #[arg(long)]
    pub peers: bool,
    /// Skip the storms inside a `warden run` task, live rules, DNS and replay/OCSF/report.
    #[arg(long)]
    pub no_extra: bool,
    /// Only the offline paths (replay --rules, replay --format ocsf, report) on a written log of
    /// this many records (300000 if no number is given), 3 runs each; loads nothing, needs no root.
    #[arg(long, value_name = "RECORDS", num_args = 0..=1, default_missing_value = "300000")]
    pub offline_only: Option<u64>,
    /// Results file (default target/bench/results.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The bench and `warden`, in release (the storms inside a task, live rules, DNS and the
/// offline paths run `warden`).
fn build() -> anyhow::Result<()> {
    util::run(cargo().args([
        "build",
        "--release",
        "--package",
        "warden-tests",
        "--bin",
        "warden-bench",
        "--package",
        "agent-user",
        "--bin",
        "warden",
    ]))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(records) = args.offline_only {
        build()?;
        let bin = target_dir().join("release/warden-bench");
        return util::run(Command::new(&bin).arg("--offline-only").arg(records.to_string()));
    }
    if !is_root() {
        bail!("the benchmark loads BPF programs and creates cgroups: run `cargo xtask bench` as root");
    }
    build()?;
    if args.peers {
        util::ensure_apt("/usr/bin/bpftrace", "bpftrace")?;
        util::ensure_apt("/usr/sbin/auditd", "auditd")?;
    }
    if !args.no_extra {
        // The DNS storm's upstream, as the DNS host tests start it.
        util::ensure_apt("/usr/sbin/dnsmasq", "dnsmasq-base")?;
    }
    let bin = target_dir().join("release/warden-bench");
    let out = args.out.unwrap_or_else(|| target_dir().join("bench/results.json"));
    let mut cmd = Command::new(&bin);
    for (on, flag) in [
        (args.quick, "--quick"),
        (args.bpf_stats, "--bpf-stats"),
        (args.pause_consumer, "--pause-consumer"),
        (args.no_extra, "--no-extra"),
        (args.peers, "--peers"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    if let Some(n) = args.rounds {
        cmd.arg("--rounds").arg(n.to_string());
    }
    if let Some(ops) = &args.ops {
        cmd.arg("--ops").arg(ops);
    }
    if let Some(only) = &args.only {
        cmd.arg("--only").arg(only);
    }
    if let Some(n) = args.ring_bytes {
        cmd.arg("--ring-bytes").arg(n.to_string());
    }
    if let Some(n) = args.retries {
        cmd.arg("--retries").arg(n.to_string());
    }
    if let Some(ms) = args.poll_ms {
        cmd.arg("--poll-ms").arg(ms.to_string());
    }
    if let Some(s) = args.settle {
        cmd.arg("--settle").arg(s.to_string());
    }
    cmd.arg("--out").arg(&out);
    util::run(&mut cmd)
}
