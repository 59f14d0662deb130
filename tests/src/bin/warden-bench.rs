//! `warden-bench`: what Warden costs a workload, against a baseline measured in the same run.
//!
//! Three configurations run alternately, `a b c a b c ...`, one fresh worker process per run:
//! - (a) nothing loaded;
//! - (b) Warden's sensor loaded, the worker outside any sandbox;
//! - (c) the worker inside a sandbox cgroup the sensor watches (from its first instruction),
//!   a consumer thread draining and decoding the ring buffer.
//!
//! Medians over the rounds are reported with slowdown ratios and the project's targets, and
//! written to `results.json`. Nothing about time is asserted; a configuration that cannot be
//! set up (no root, sensor fails to load, no events from the sandbox) is a hard error.
//! Run it through `cargo xtask bench` (release build, root).
#[path = "bench/consumer.rs"]
mod consumer;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/tasks.rs"]
mod tasks;
#[path = "bench/throughput.rs"]
mod throughput;
#[path = "bench/workload.rs"]
mod workload;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use agent_user::{
    loader::{LoadOptions, Sensor},
    sandbox::{Cgroup, cgroup2_mount},
};
use anyhow::{Context as _, bail, ensure};
use serde_json::json;
use warden_tests::{TestCgroup, command_in};

use crate::{
    consumer::{Consumer, Tally},
    report::{Config, EventStats, ProgramCost, Run, Summary, percentile, thousands},
    workload::{WorkerReport, Workload, warmup_ops},
};

/// Sandbox slot the bench cgroup is bound to.
const SLOT: u32 = 1;

const USAGE: &str = "\
usage: warden-bench [options]        (as root; normally via `cargo xtask bench`)
  --quick              3 rounds, a quarter of the default operations
  --rounds N           rounds of (a b c) per workload (default 5)
  --ops N | W=N,...    operations per run: for every workload, or per workload
                       (defaults: open=400000 exec=1500 connect=20000 fork=6000)
  --only W,...         workloads to run (open, exec, connect, fork; default all)
  --ring-bytes N       ring buffer size for (b) and (c) (default: the loader's)
  --settle SECS        before each run, wait up to SECS (default 5) for other processes
                       to use less than 0.1 core (0: do not wait)
  --retries N          repeat a run during which other processes used more than 0.25
                       core, up to N times (default 2)
  --out PATH           results file (default: <target>/bench/results.json)
  --peers              also run open, exec and connect, outside any sandbox, under a peer's
                       watching: bpftrace counting the same syscalls, and auditd with
                       exec/open/connect rules (needs bpftrace, auditd; restores the audit rules)
  --no-extra           skip what follows the rounds: the storms inside a warden run task
                       (run in every round), live rules, DNS, replay/OCSF/report
diagnostics (they change what (b)/(c) measure; the output says so):
  --bpf-stats          count run time per BPF program (BPF_ENABLE_STATS) and report the
                       in-kernel cost per operation; adds two clock reads per program run
  --pause-consumer     in (c), do not drain the ring while the worker runs (drain after):
                       separates the kernel side from the consumer's wake-ups and CPU
  --poll-ms N          the consumer also drains every N ms, besides RingBufSource's own
                       tick (DRAIN_TICK, 10 ms) and the kernel's wake-ups
alone (first argument; nothing is loaded, needs no root):
  --offline-only [RECORDS [REPS]]   replay --rules, replay --format ocsf and report on a
                       written log (default 300000 records, 3 repetitions)
  --dns-only [ROUNDS [QUERIES]]     the DNS storm
  --daemon-rss-only    the daemon's RSS with 256 tasks";

/// Resolved options.
#[derive(Debug)]
struct Opts {
    rounds: u32,
    workloads: Vec<(Workload, u64)>,
    ring_bytes: Option<u32>,
    out: PathBuf,
    quick: bool,
    settle: Duration,
    bpf_stats: bool,
    pause_consumer: bool,
    poll: Option<Duration>,
    retries: u32,
    /// The storms inside a task, live rules, DNS and the offline paths.
    extra: bool,
    /// The storms under peers' watching.
    peers: bool,
}

impl Opts {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut quick = false;
        let mut rounds = None;
        let mut ops_all = None;
        let mut ops_each: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut only: Option<Vec<Workload>> = None;
        let mut ring_bytes = None;
        let mut out = None;
        let mut settle = Duration::from_secs(5);
        let mut bpf_stats = false;
        let mut pause_consumer = false;
        let mut poll = None;
        let mut retries = 2;
        let mut extra = true;
        let mut peers = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (a.as_str(), None),
            };
            let mut value = || -> anyhow::Result<String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().cloned().with_context(|| format!("{flag} needs a value\n{USAGE}")),
                }
            };
            match flag {
                "--quick" => quick = true,
                "--no-extra" => extra = false,
                "--peers" => peers = true,
                "--bpf-stats" => bpf_stats = true,
                "--pause-consumer" => pause_consumer = true,
                "--poll-ms" => {
                    let ms = value()?.parse::<u64>().context("--poll-ms")?;
                    poll = (ms > 0).then(|| Duration::from_millis(ms));
                }
                "--rounds" => rounds = Some(value()?.parse::<u32>().context("--rounds")?),
                "--ops" => {
                    let v = value()?;
                    if v.contains('=') {
                        for part in v.split(',') {
                            let (w, n) =
                                part.split_once('=').with_context(|| format!("--ops: bad entry `{part}`"))?;
                            ops_each.insert(Workload::parse(w)?.name(), n.parse().context("--ops")?);
                        }
                    } else {
                        ops_all = Some(v.parse::<u64>().context("--ops")?);
                    }
                }
                "--only" => {
                    only = Some(value()?.split(',').map(Workload::parse).collect::<anyhow::Result<_>>()?)
                }
                "--ring-bytes" => ring_bytes = Some(value()?.parse::<u32>().context("--ring-bytes")?),
                "--out" => out = Some(PathBuf::from(value()?)),
                "--retries" => retries = value()?.parse::<u32>().context("--retries")?,
                "--settle" => settle = Duration::from_secs_f64(value()?.parse::<f64>().context("--settle")?),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n{USAGE}"),
            }
        }
        let rounds = rounds.unwrap_or(if quick { 3 } else { 5 });
        ensure!(rounds >= 1, "--rounds must be at least 1");
        let workloads = only
            .unwrap_or_else(|| Workload::ALL.to_vec())
            .into_iter()
            .map(|w| {
                let default = if quick { w.default_ops() / 4 } else { w.default_ops() };
                let n = ops_each.get(w.name()).copied().or(ops_all).unwrap_or(default);
                (w, n.max(1))
            })
            .collect();
        let out = match out {
            Some(p) => p,
            // <target>/release/warden-bench → <target>/bench/results.json
            None => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .context("cannot locate the target directory; pass --out")?
                .join("bench/results.json"),
        };
        Ok(Self {
            rounds,
            workloads,
            ring_bytes,
            out,
            quick,
            settle,
            bpf_stats,
            pause_consumer,
            poll,
            retries,
            extra,
            peers,
        })
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("__worker") {
        workload::worker_main(&args[1..])
    } else if args.first().map(String::as_str) == Some("--daemon-rss-only") {
        // The daemon's memory with 256 tasks, alone (also part of every full run).
        daemon_rss_only()
    } else if args.first().map(String::as_str) == Some("--offline-only") {
        // The offline paths alone (also part of every full run): `--offline-only [RECORDS [REPS]]`.
        offline_only(&args[1..])
    } else if args.first().map(String::as_str) == Some("--dns-only") {
        // The DNS storm alone (also part of every full run): `--dns-only [ROUNDS [QUERIES]]`.
        dns_only(&args[1..])
    } else {
        Opts::parse(&args).and_then(bench)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warden-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `warden-bench --daemon-rss-only`.
fn daemon_rss_only() -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    tasks::Tools::find(exe.to_str().context("non-UTF-8 executable path")?, dir.path())?.daemon_rss(256)?;
    Ok(())
}

/// `warden-bench --offline-only [RECORDS [REPS]]`.
fn offline_only(args: &[String]) -> anyhow::Result<()> {
    let records = args.first().map(|a| a.parse()).transpose().context("records")?.unwrap_or(300_000);
    let reps = args.get(1).map(|a| a.parse()).transpose().context("repetitions")?.unwrap_or(3);
    ensure!(records >= 2 && reps >= 1, "--offline-only: at least 2 records and 1 repetition");
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    tasks::Tools::find(exe.to_str().context("non-UTF-8 executable path")?, dir.path())?
        .offline(records, reps)?;
    Ok(())
}

/// `warden-bench --dns-only [ROUNDS [QUERIES]]`.
fn dns_only(args: &[String]) -> anyhow::Result<()> {
    let rounds = args.first().map(|a| a.parse()).transpose().context("rounds")?.unwrap_or(5);
    let queries = args.get(1).map(|a| a.parse()).transpose().context("queries")?.unwrap_or(2_000);
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    tasks::Tools::find(exe.to_str().context("non-UTF-8 executable path")?, dir.path())?
        .dns_storm(rounds, queries)?;
    Ok(())
}

/// What configurations (b) and (c) had loaded.
#[derive(Default)]
struct SensorInfo {
    /// Programs loaded in the kernel (global hooks, and the egress ones on the sandbox cgroup).
    programs: Vec<String>,
    /// "bpf-lsm", or "fallback (...)" when the kernel refuses BPF LSM.
    engine: String,
}

/// Everything a run needs to start a worker.
struct Env {
    exe: String,
    file: PathBuf,
    cg: TestCgroup,
    /// The sandbox cgroup as `/proc/<pid>/cgroup` shows it.
    cg_rel: String,
    /// Longest wait for a quiet machine before a run.
    settle: Duration,
    /// How often a disturbed run is repeated.
    retries: u32,
}

fn bench(opts: Opts) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    let euid = unsafe { libc::geteuid() };
    ensure!(euid == 0, "warden-bench loads BPF programs and creates cgroups: run it as root");
    let started = Instant::now();
    let machine = machine_info();
    let mut warnings = Vec::new();
    catch_interrupts();
    let _stats = match opts.bpf_stats {
        true => Some(
            aya::sys::enable_stats(aya::sys::Stats::RunTime)
                .context("--bpf-stats: BPF_ENABLE_STATS failed")?,
        ),
        false => None,
    };

    let dir = tempfile::tempdir().context("temporary directory for the open storm's file")?;
    let file = dir.path().join("target-file");
    std::fs::write(&file, [0u8; 4096]).context("create the open storm's file")?;
    let cg = TestCgroup::new("bench");
    let mount = cgroup2_mount()?;
    let cg_rel = format!("/{}", cg.path().strip_prefix(&mount)?.display());
    let env = Env {
        exe: std::env::current_exe()?.to_str().context("non-UTF-8 executable path")?.to_string(),
        file,
        cg,
        cg_rel,
        settle: opts.settle,
        retries: opts.retries,
    };

    eprintln!(
        "warden-bench: {} rounds of (a b c) × {} workloads on {} ({} CPUs), sandbox cgroup {}",
        opts.rounds,
        opts.workloads.len(),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["cpus"],
        env.cg_rel
    );
    let mut runs = Vec::new();
    let mut sensor = SensorInfo::default();
    let tools = if opts.extra { Some(tasks::Tools::find(&env.exe, dir.path())?) } else { None };
    // `warden run`'s CPU for a task that records next to nothing: subtracted from its CPU in
    // the storms, so what is left is the pipeline's work per operation.
    let idle_task_cpu_ns = match &tools {
        Some(t) => t.idle_task_cpu_ns().context("warden run -- /bin/true")?,
        None => 0,
    };
    let audit_before = agent_user::kaudit::netlink::status().map(|s| s.enabled != 0).ok();
    // (d): per round, the storm inside a `warden run` task, paired with that round's (a).
    let mut in_task: Vec<InTask> = Vec::new();
    // --peers: per round, the storm outside any sandbox under each peer, paired with (a).
    let mut peer_runs: Vec<PeerRun> = Vec::new();
    // Why a peer did not run (not installed, another audit daemon registered), reported.
    let mut peer_skipped: Vec<String> = Vec::new();
    for round in 1..=opts.rounds {
        for &(w, ops) in &opts.workloads {
            ensure!(!INTERRUPTED.load(Ordering::Relaxed), "interrupted");
            let r = measure(&env, &opts, round, w, ops, &mut sensor)
                .with_context(|| format!("round {round}, workload {}", w.name()))?;
            eprintln!("{}", progress(round, opts.rounds, &r));
            if let Some(t) = &tools
                && tasks::target_in_task(w).is_some()
            {
                settle(env.settle);
                let (d, warden_cpu) = t
                    .storm_in_task(w, ops, &env.file)
                    .with_context(|| format!("round {round}, workload {} inside a task", w.name()))?;
                let a = r.iter().find(|x| x.config == Config::A).context("(a) run")?;
                let x = InTask {
                    round,
                    w,
                    a: a.ops_per_sec(),
                    d: d.ops as f64 / (d.elapsed_ns as f64 / 1e9),
                    a_cpu: a.cpu_per_op(),
                    d_cpu: d.cpu_ns_per_op(),
                    // Per operation run in the task, warm-up included.
                    warden_cpu: warden_cpu.saturating_sub(idle_task_cpu_ns) as f64
                        / (d.ops + warmup_ops(d.ops)).max(1) as f64,
                };
                eprintln!(
                    "[round {round}/{}] {:<8} d (in a warden run task) {:>10}/s, worker CPU {:.3}× (a)'s",
                    opts.rounds,
                    w.name(),
                    thousands(x.d),
                    x.d_cpu / x.a_cpu
                );
                in_task.push(x);
            }
            if opts.peers && tasks::target_in_task(w).is_some() {
                let a_run = r.iter().find(|x| x.config == Config::A).context("(a) run")?;
                for start in
                    [tasks::Peer::bpftrace as fn() -> anyhow::Result<tasks::Peer>, tasks::Peer::auditd]
                {
                    settle(env.settle);
                    let mut peer = match start() {
                        Ok(p) => p,
                        Err(e) => {
                            let e = format!("{e:#}");
                            eprintln!("[round {round}/{}] {:<8} peer not run: {e}", opts.rounds, w.name());
                            if !peer_skipped.contains(&e) {
                                peer_skipped.push(e);
                            }
                            continue;
                        }
                    };
                    let name = peer.name();
                    let p = worker(&env, w, ops, None).with_context(|| format!("{} under {name}", w.name()));
                    peer.stop();
                    drop(peer);
                    let (p, _, _) = p?;
                    let a = a_run.ops_per_sec();
                    let ops_s = p.ops as f64 / (p.elapsed_ns as f64 / 1e9);
                    let cpu = p.cpu_ns_per_op() / a_run.cpu_per_op();
                    eprintln!(
                        "[round {round}/{}] {:<8} {name} watching {:>10}/s, worker CPU {cpu:.3}× (a)'s",
                        opts.rounds,
                        w.name(),
                        thousands(ops_s)
                    );
                    peer_runs.push(PeerRun { round, w, peer: name, a, ops_s, cpu });
                }
            }
            runs.extend(r);
        }
    }
    let audit_after = agent_user::kaudit::netlink::status().map(|s| s.enabled != 0).ok();

    let summaries: Vec<Summary> = opts.workloads.iter().map(|&(w, _)| Summary::new(w, &runs)).collect();
    println!(
        "\nWarden benchmark — {} ({} CPUs, {}), {} rounds",
        machine["kernel"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        opts.rounds
    );
    println!("sensor in (b)/(c): engine {}; programs loaded: {}", sensor.engine, sensor.programs.join(", "));
    if opts.bpf_stats {
        println!("DIAGNOSTIC --bpf-stats: BPF run-time statistics on; (b) and (c) include their cost");
    }
    if opts.pause_consumer {
        println!("DIAGNOSTIC --pause-consumer: in (c) the ring is drained only after each run");
    }
    for s in &summaries {
        print!("{}", s.render());
        if s.b_events_in_window > 0 {
            warnings.push(format!("{}: (b) delivered events from an unwatched worker", s.workload.name()));
        }
    }
    let polluted = runs.iter().filter(|r| r.foreign_programs > 0).count();
    if polluted > 0 {
        warnings.push(format!(
            "{polluted} (a) runs had other lifecycle BPF programs loaded (not \"nothing loaded\")"
        ));
    }
    print!("{}", report::render_table(&summaries));
    let rules = throughput::measure(if opts.quick { 50_000 } else { 200_000 }).context("rules throughput")?;
    if tools.is_some() {
        println!(
            "\n`warden run -- /bin/true` (start-up and end of a task) used {:.0} ms of CPU; subtracted below",
            idle_task_cpu_ns as f64 / 1e6
        );
    }
    let task_storms = report_in_task(&in_task, &opts);
    let peers = report_peers(&peer_runs, &peer_skipped, &in_task, &opts);
    let mut extra = json!(null);
    if let Some(t) = &tools {
        let live = t.rules_storm(if opts.quick { 25_000 } else { 100_000 }).context("live rules storm")?;
        let dns = t
            .dns_storm(if opts.quick { 3 } else { 5 }, if opts.quick { 500 } else { 2_000 })
            .context("dns storm")?;
        let offline =
            t.offline(if opts.quick { 100_000 } else { 300_000 }, 3).context("replay/OCSF/report")?;
        let daemon = t.daemon_rss(256).context("daemon RSS")?;
        extra = json!({ "live_rules": live, "dns": dns, "offline": offline, "daemon_rss": daemon });
    }
    println!(
        "kernel audit: {} before the run, {} after (Warden turns it on with `-a never,task` when it is off; (b) \
         and (c) ran with it on)",
        audit_before.map_or("unknown", |on| if on { "on" } else { "off" }),
        audit_after.map_or("unknown", |on| if on { "on" } else { "off" })
    );
    for w in &warnings {
        println!("WARNING: {w}");
    }

    let results = json!({
        "schema": 1,
        "machine": machine,
        "params": {
            "rounds": opts.rounds,
            "quick": opts.quick,
            "ops": opts.workloads.iter().map(|(w, n)| (w.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "warmup_ops": "ops / 10, before the timed loop of every run",
            "ring_bytes": opts.ring_bytes.unwrap_or(LoadOptions::default().ring_bytes),
            "order": "per round and workload: a, then the sensor is loaded, b, c, then it is unloaded",
            "settle_s": opts.settle.as_secs_f64(),
            "retries": opts.retries,
            "bpf_stats": opts.bpf_stats,
            "pause_consumer": opts.pause_consumer,
            "poll_ms": opts.poll.map(|d| d.as_millis() as u64),
            "drain_tick_ms": agent_user::source::DRAIN_TICK.as_millis() as u64,
        },
        "sensor": { "engine": sensor.engine, "programs": sensor.programs },
        "targets": {
            "b_slowdown_max": report::TARGET_B,
            "c_slowdown_max": { "open": 1.3, "exec": 1.2, "connect": 1.1 },
            "c_zero_drops_up_to_events_per_sec": report::TARGET_ZERO_DROPS_EVENTS_PER_SEC,
        },
        "workloads": summaries.iter().map(Summary::json).collect::<Vec<_>>(),
        "rules_throughput": rules,
        "in_task": task_storms,
        "idle_task_cpu_ns": idle_task_cpu_ns,
        "peers": peers,
        "extra": extra,
        "kernel_audit": { "enabled_before": audit_before, "enabled_after": audit_after },
        "runs": runs.iter().map(|r| json!({
            "round": r.round,
            "workload": r.workload.name(),
            "config": r.config.key(),
            "ops": r.ops,
            "elapsed_ns": r.elapsed_ns,
            "ops_per_sec": r.ops_per_sec(),
            "foreign_programs": r.foreign_programs,
            "background_cores": r.background_cores,
            "steal_cores": r.steal_cores,
            "attempts": r.attempts,
            "programs": r.programs.iter().map(|p| json!({ "name": p.name, "runs": p.runs, "ns": p.ns })).collect::<Vec<_>>(),
            "events": r.events.as_ref().map(|e| json!({
                "in_window": e.in_window,
                "total": e.total,
                "undecodable": e.undecodable,
                "drops": e.drops,
                "ring_fill_bytes": e.ring_fill_bytes,
                "latency_p50_ns": e.latency_p50_ns,
                "latency_p99_ns": e.latency_p99_ns,
                "latency_max_ns": e.latency_max_ns,
            })),
        })).collect::<Vec<_>>(),
        "warnings": warnings,
        "duration_s": started.elapsed().as_secs_f64(),
    });
    if let Some(parent) = opts.out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    std::fs::write(&opts.out, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("write {}", opts.out.display()))?;
    println!("\nresults: {} ({:.0} s)", opts.out.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// One round of one workload: (a), then load the sensor, (b), (c), unload.
fn measure(
    env: &Env,
    opts: &Opts,
    round: u32,
    w: Workload,
    ops: u64,
    info: &mut SensorInfo,
) -> anyhow::Result<Vec<Run>> {
    let run = |config, (report, _, bg): &(WorkerReport, u32, Background), events| Run {
        round,
        workload: w,
        config,
        ops: report.ops,
        elapsed_ns: report.elapsed_ns,
        cpu_ns: report.cpu_ns,
        events,
        foreign_programs: 0,
        background_cores: bg.busy_cores,
        steal_cores: bg.steal_cores,
        attempts: bg.attempts,
        programs: Vec::new(),
    };
    let mut out = Vec::with_capacity(3);

    let foreign = foreign_sensor_programs();
    if !foreign.is_empty() {
        eprintln!(
            "warden-bench: WARNING: other lifecycle BPF programs are loaded ({}); (a) is not \"nothing loaded\"",
            foreign.join(", ")
        );
    }
    let a = worker(env, w, ops, None).context("configuration (a)")?;
    out.push(Run { foreign_programs: foreign.len(), ..run(Config::A, &a, None) });

    let mut load = LoadOptions::default();
    if let Some(b) = opts.ring_bytes {
        load.ring_bytes = b;
    }
    let mut sensor = Sensor::load(&load).context("configuration (b)/(c): cannot load Warden's sensor")?;
    // As `warden run --engine auto`: the BPF LSM engine where the kernel allows it.
    // As `warden run`: kernel audit on (with `-a never,task`), so (b) shows what it costs the
    // processes outside every sandbox.
    if let Err(e) = agent_user::kaudit::netlink::ensure_enabled() {
        eprintln!("warden-bench: WARNING: cannot turn kernel audit on: {e}");
    }
    let engine = match sensor.attach_lsm_engine() {
        Ok(()) => "bpf-lsm".to_string(),
        Err(e) => format!("fallback (BPF LSM unavailable: {e})"),
    };
    sensor.watch(&[env.cg.id()], SLOT).context("configuration (c): cannot watch the sandbox cgroup")?;
    sensor.attach_egress(&env.cg.cg).context("configuration (c): cannot attach the egress programs")?;
    let mut ours: Vec<(String, u32)> = sensor
        .ebpf_mut()
        .programs()
        .filter_map(|(n, p)| p.info().ok().map(|i| (n.to_string(), i.id())))
        .collect();
    ours.sort();
    if info.programs.is_empty() {
        *info = SensorInfo { programs: ours.iter().map(|(n, _)| n.clone()).collect(), engine };
    }
    let ring = sensor.take_ring().context("the sensor's ring buffer was already taken")?;
    let mut consumer = Consumer::start(ring, opts.poll).context("configuration (c)")?;
    check_events_flow(env, &consumer).context("configuration (c) is not working")?;

    let stats_before = program_stats(&mut sensor, opts.bpf_stats);
    let b = worker(env, w, ops, None).context("configuration (b)")?;
    let programs = program_delta(&stats_before, &program_stats(&mut sensor, opts.bpf_stats));
    let tally = consumer.take();
    out.push(Run { programs, ..run(Config::B, &b, Some(event_stats(&tally, &b.0, 0))) });

    let drops_before = sensor.drops(SLOT)?.total;
    let stats_before = program_stats(&mut sensor, opts.bpf_stats);
    if opts.pause_consumer {
        consumer.pause();
    }
    let c = worker(env, w, ops, Some(&env.cg.cg)).context("configuration (c)");
    consumer.resume();
    let c = c?;
    let programs = program_delta(&stats_before, &program_stats(&mut sensor, opts.bpf_stats));
    let pid = c.1;
    let drops = sensor.drops(SLOT)?.total - drops_before;
    let ring_fill = sensor.ring_fill()?;
    // The worker's own exit record is the last of the run: wait until it was delivered.
    let drained = consumer.wait_until(Duration::from_secs(10), |t| t.exits.contains(&pid));
    ensure!(
        drained || drops > 0,
        "configuration (c): the worker's exit event never arrived (no drops counted): events stopped flowing"
    );
    let tally = consumer.take();
    let mut events = event_stats(&tally, &c.0, drops);
    events.ring_fill_bytes = ring_fill;
    out.push(Run { programs, ..run(Config::C, &c, Some(events)) });

    consumer.stop().context("ring consumer")?;
    drop(consumer);
    drop(sensor);
    // Detaching is synchronous, freeing the programs is not: wait until they are gone so the
    // next (a) run's check for other loaded programs does not see ours.
    let ids: Vec<u32> = ours.iter().map(|(_, id)| *id).collect();
    let start = Instant::now();
    while aya::programs::loaded_programs().filter_map(Result::ok).any(|p| ids.contains(&p.id())) {
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the sensor's programs were still loaded 10 s after unloading it"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(out)
}

/// One round's storm inside a task, (d), beside that round's (a).
struct InTask {
    round: u32,
    w: Workload,
    /// ops/s of (a) and (d).
    a: f64,
    d: f64,
    /// Worker CPU ns per op in (a) and (d).
    a_cpu: f64,
    d_cpu: f64,
    /// `warden run`'s own CPU ns per op of the task (warm-up included), start-up subtracted.
    warden_cpu: f64,
}

/// The storms inside a task beside (a): medians, paired ratios, targets. The verdict is taken
/// on the paired worker-CPU-time ratio (median over rounds of (d)'s CPU per op over (a)'s):
/// on a shared host, other processes move wall time by tens of percent, CPU time far less.
fn report_in_task(runs: &[InTask], opts: &Opts) -> serde_json::Value {
    let med = |mut x: Vec<f64>| {
        x.sort_by(f64::total_cmp);
        if x.is_empty() { 0.0 } else { x[x.len() / 2] }
    };
    let mut out = Vec::new();
    if !runs.is_empty() {
        println!("\nInside a `warden run` task (Landlock, seccomp, sensor, pipeline) vs (a), same rounds:");
        println!(
            "| workload | (a) ops/s | (d) in task ops/s | wall (d)/(a) | paired | worker CPU/op (a) | worker CPU (d)/(a), paired | target | | warden run's CPU/op, start-up subtracted |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
    }
    for &(w, _) in &opts.workloads {
        let mine: Vec<_> = runs.iter().filter(|r| r.w == w).collect();
        let Some(target) = tasks::target_in_task(w) else { continue };
        if mine.is_empty() {
            continue;
        }
        let a = med(mine.iter().map(|r| r.a).collect());
        let d = med(mine.iter().map(|r| r.d).collect());
        let paired = med(mine.iter().map(|r| r.a / r.d).collect());
        let cpu = med(mine.iter().map(|r| r.d_cpu / r.a_cpu).collect());
        let a_cpu = med(mine.iter().map(|r| r.a_cpu).collect());
        let warden_cpu = med(mine.iter().map(|r| r.warden_cpu).collect());
        let ratio = a / d;
        println!(
            "| {} | {} | {} | {ratio:.3}× | {paired:.3}× | {:.2} µs | {cpu:.3}× | ≤ {target:.2}× | {} | {:.2} µs |",
            w.name(),
            thousands(a),
            thousands(d),
            a_cpu / 1e3,
            if cpu <= target { "met" } else { "missed" },
            warden_cpu / 1e3,
        );
        out.push(json!({
            "workload": w.name(), "a_ops_per_sec": a, "d_ops_per_sec": d, "slowdown": ratio,
            "slowdown_paired": paired, "cpu_slowdown_paired": cpu, "a_cpu_ns_per_op": a_cpu,
            "warden_cpu_ns_per_op": warden_cpu, "target": target, "met": cpu <= target,
            "runs": mine.iter().map(|r| json!({"round": r.round, "a": r.a, "d": r.d, "a_cpu_ns_per_op": r.a_cpu,
                "d_cpu_ns_per_op": r.d_cpu, "warden_cpu_ns_per_op": r.warden_cpu})).collect::<Vec<_>>(),
        }));
    }
    serde_json::Value::Array(out)
}

/// One storm under a peer's watching, paired with (a) of the same round.
struct PeerRun {
    round: u32,
    w: Workload,
    peer: &'static str,
    /// (a)'s ops/s.
    a: f64,
    /// ops/s under the peer.
    ops_s: f64,
    /// Worker CPU per op under the peer over (a)'s.
    cpu: f64,
}

/// `--peers`: the peers' cost beside Warden's (d), same rounds.
fn report_peers(peer: &[PeerRun], skipped: &[String], in_task: &[InTask], opts: &Opts) -> serde_json::Value {
    if peer.is_empty() && skipped.is_empty() {
        return json!(null);
    }
    let med = |mut x: Vec<f64>| {
        x.sort_by(f64::total_cmp);
        if x.is_empty() { f64::NAN } else { x[x.len() / 2] }
    };
    let cell = |wall: f64, cpu: f64| {
        if wall.is_nan() { "-".to_string() } else { format!("{wall:.3}× / {cpu:.3}×") }
    };
    println!("\nPeers (same rounds; time per op over (a), wall / worker CPU, medians of paired rounds):");
    println!(
        "| workload | bpftrace counting the syscalls (worker unwatched by Warden) | auditd with exec/open/connect rules | Warden, worker in a task (d) |"
    );
    println!("|---|---|---|---|");
    let mut out = Vec::new();
    for &(w, _) in &opts.workloads {
        let of = |name: &str| -> (f64, f64, Vec<serde_json::Value>) {
            let p: Vec<_> = peer.iter().filter(|r| r.w == w && r.peer == name).collect();
            (
                med(p.iter().map(|r| r.a / r.ops_s).collect()),
                med(p.iter().map(|r| r.cpu).collect()),
                p.iter()
                    .map(|r| json!({"round": r.round, "a": r.a, "peer": r.ops_s, "cpu_ratio": r.cpu}))
                    .collect(),
            )
        };
        let (bt, bt_cpu, bt_runs) = of("bpftrace");
        let (ad, ad_cpu, ad_runs) = of("auditd");
        if bt_runs.is_empty() && ad_runs.is_empty() {
            continue;
        }
        let d = med(in_task.iter().filter(|r| r.w == w).map(|r| r.a / r.d).collect());
        let d_cpu = med(in_task.iter().filter(|r| r.w == w).map(|r| r.d_cpu / r.a_cpu).collect());
        println!("| {} | {} | {} | {} |", w.name(), cell(bt, bt_cpu), cell(ad, ad_cpu), cell(d, d_cpu));
        let some = |x: f64| (!x.is_nan()).then_some(x);
        out.push(json!({ "workload": w.name(),
            "bpftrace_paired": some(bt), "bpftrace_cpu_paired": some(bt_cpu), "bpftrace_runs": bt_runs,
            "auditd_paired": some(ad), "auditd_cpu_paired": some(ad_cpu), "auditd_runs": ad_runs,
            "warden_in_task_paired": some(d), "warden_in_task_cpu_paired": some(d_cpu) }));
    }
    for e in skipped {
        println!("peer not run: {e}");
    }
    json!({ "workloads": out, "not_run": skipped })
}

/// Spawns `/bin/true` in the sandbox and waits for its exec and exit to come through.
fn check_events_flow(env: &Env, consumer: &Consumer) -> anyhow::Result<()> {
    let status = command_in(&env.cg.cg, "/bin/true", &[])
        .stdin(Stdio::null())
        .status()
        .context("spawn /bin/true in the sandbox")?;
    ensure!(status.success(), "/bin/true in the sandbox exited with {status}");
    // The pid is not known from `status()`; any exec in this cgroup followed by an exit will do.
    let cg_id = env.cg.id();
    let ok = consumer
        .wait_until(Duration::from_secs(5), |t| t.exec_cgroups.contains(&cg_id) && !t.exits.is_empty());
    ensure!(ok, "no exec/exit events from the sandbox cgroup within 5 s of running /bin/true in it");
    consumer.take();
    Ok(())
}

/// Per program of the sensor: (name, run count, run time in ns). Empty unless `enabled`
/// (the kernel only counts while `BPF_ENABLE_STATS` is held, see `--bpf-stats`).
fn program_stats(sensor: &mut Sensor, enabled: bool) -> Vec<(String, u64, u64)> {
    if !enabled {
        return Vec::new();
    }
    let mut v: Vec<_> = sensor
        .ebpf_mut()
        .programs()
        .filter_map(|(n, p)| {
            p.info().ok().map(|i| (n.to_string(), i.run_count(), i.run_time().as_nanos() as u64))
        })
        .collect();
    v.sort();
    v
}

fn program_delta(before: &[(String, u64, u64)], after: &[(String, u64, u64)]) -> Vec<ProgramCost> {
    after
        .iter()
        .map(|(name, runs, ns)| {
            let (r0, n0) = before.iter().find(|b| &b.0 == name).map_or((0, 0), |b| (b.1, b.2));
            ProgramCost { name: name.clone(), runs: runs - r0, ns: ns - n0 }
        })
        .collect()
}

/// Runs one worker, in `cg` from its first instruction if given. Returns its report, its pid
/// and the CPU the rest of the machine used meanwhile.
fn worker(
    env: &Env,
    w: Workload,
    ops: u64,
    cg: Option<&Cgroup>,
) -> anyhow::Result<(WorkerReport, u32, Background)> {
    let mut attempt = 1;
    loop {
        let (report, pid, mut bg) = worker_once(env, w, ops, cg)?;
        bg.attempts = attempt;
        if bg.busy_cores <= report::DISTURBED_BACKGROUND_CORES || attempt > env.retries {
            return Ok((report, pid, bg));
        }
        eprintln!(
            "warden-bench: other processes used {:.2} cores during a {} run; running it again",
            bg.busy_cores,
            w.name()
        );
        attempt += 1;
    }
}

fn worker_once(
    env: &Env,
    w: Workload,
    ops: u64,
    cg: Option<&Cgroup>,
) -> anyhow::Result<(WorkerReport, u32, Background)> {
    let warmup = warmup_ops(ops);
    let (ops_s, warm_s) = (ops.to_string(), warmup.to_string());
    let args = ["__worker", w.name(), &ops_s, &warm_s, env.file.to_str().context("non-UTF-8 temp path")?];
    let mut cmd = match cg {
        Some(cg) => command_in(cg, &env.exe, &args),
        None => {
            let mut c = Command::new(&env.exe);
            c.args(args);
            c
        }
    };
    settle(env.settle);
    let before = CpuSample::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the worker")?;
    let pid = child.id();
    let out = child.wait_with_output().context("wait for the worker")?;
    let background = CpuSample::now().background_since(&before);
    ensure!(out.status.success(), "{} worker failed: {}", w.name(), out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = WorkerReport::parse(stdout.lines().last().unwrap_or_default())?;
    let inside = report.cgroup == env.cg_rel;
    ensure!(
        inside == cg.is_some(),
        "worker ran in cgroup `{}`, expected {} the sandbox `{}`",
        report.cgroup,
        if cg.is_some() { "inside" } else { "outside" },
        env.cg_rel
    );
    Ok((report, pid, background))
}

fn event_stats(tally: &Tally, r: &WorkerReport, drops: u64) -> EventStats {
    let mut lat: Vec<u64> = tally
        .ktimes
        .iter()
        .zip(&tally.latency_ns)
        .filter(|(k, _)| **k >= r.start_boot_ns && **k <= r.end_boot_ns)
        .map(|(_, l)| *l)
        .collect();
    EventStats {
        in_window: tally.in_window(r.start_boot_ns, r.end_boot_ns),
        total: tally.records,
        undecodable: tally.undecodable,
        drops,
        latency_max_ns: lat.iter().copied().max().unwrap_or(0),
        latency_p99_ns: percentile(&mut lat, 99.0),
        latency_p50_ns: percentile(&mut lat, 50.0),
        ring_fill_bytes: 0,
    }
}

fn progress(round: u32, rounds: u32, runs: &[Run]) -> String {
    let mut s = format!("[round {round}/{rounds}] {:<8}", runs.first().map_or("", |r| r.workload.name()));
    for r in runs {
        s.push_str(&format!(" {} {:>10}/s", r.config.key(), thousands(r.ops_per_sec())));
        if let (Config::C, Some(e)) = (r.config, &r.events) {
            s.push_str(&format!(
                " ({} ev/s, {} drops)",
                thousands(r.events_per_sec().unwrap_or(0.0)),
                e.drops
            ));
        }
    }
    let bg = runs.iter().map(|r| r.background_cores).fold(0.0, f64::max);
    s.push_str(&format!("  bg {bg:.2}"));
    s
}

/// Kernel, CPU and memory of this machine.
fn machine_info() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "kernel": format!("Linux {}", read("/proc/sys/kernel/osrelease").trim()),
        "kernel_version": read("/proc/sys/kernel/version").trim(),
        "cpu_model": cpu_model,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "mem_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
    })
}

/// Lifecycle programs loaded by someone else (for example a parallel test run) make (a) less
/// than "nothing loaded": they are named, counted per run and reported.
fn foreign_sensor_programs() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_string))
        .filter(|n| n.starts_with("sched_process_") || n.starts_with("cgroup_mkdir"))
        .collect()
}

/// Set by SIGINT/SIGTERM. The signal also reaches the worker (same process group), whose
/// failure ends the bench through the normal error path, which removes the sandbox cgroup.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_interrupt as *const () as libc::sighandler_t) };
    }
}

/// Waits (up to `max`) until other processes use less than a tenth of a core over 300 ms.
fn settle(max: Duration) {
    let start = Instant::now();
    while start.elapsed() < max && !INTERRUPTED.load(Ordering::Relaxed) {
        let before = CpuSample::now();
        std::thread::sleep(Duration::from_millis(300));
        if CpuSample::now().background_since(&before).busy_cores < report::NOISY_BACKGROUND_CORES {
            return;
        }
    }
}

/// CPU time of the whole machine (`/proc/stat`) and of this process and its waited-for
/// children (`getrusage`), to tell how much of the machine something else used during a run.
struct CpuSample {
    at: Instant,
    /// user + nice + system + irq + softirq, all CPUs, seconds.
    busy_s: f64,
    steal_s: f64,
    /// This process (consumer thread included) plus its waited-for children, seconds.
    ours_s: f64,
}

/// CPU used by other processes, and stolen by the hypervisor, during a run, in cores.
#[derive(Debug, Clone, Copy)]
struct Background {
    busy_cores: f64,
    steal_cores: f64,
    /// Runs it took (disturbed runs are repeated).
    attempts: u32,
}

impl CpuSample {
    fn now() -> Self {
        // SAFETY: trivial syscall.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .map(|l| l.split_whitespace().filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default();
        let field = |i: usize| f.get(i).copied().unwrap_or(0.0) / hz;
        // user nice system idle iowait irq softirq steal ...
        let busy_s = field(0) + field(1) + field(2) + field(5) + field(6);
        let rusage_s = |who| {
            // SAFETY: valid out-pointer.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid `who` and out-pointer.
            unsafe { libc::getrusage(who, &mut ru) };
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            tv(ru.ru_utime) + tv(ru.ru_stime)
        };
        Self {
            at: Instant::now(),
            busy_s,
            steal_s: field(7),
            ours_s: rusage_s(libc::RUSAGE_SELF) + rusage_s(libc::RUSAGE_CHILDREN),
        }
    }

    fn background_since(&self, before: &Self) -> Background {
        let wall = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let others = (self.busy_s - before.busy_s) - (self.ours_s - before.ours_s);
        Background {
            busy_cores: others.max(0.0) / wall,
            steal_cores: (self.steal_s - before.steal_s) / wall,
            attempts: 1,
        }
    }
}
