//! What the sensor-only configurations do not show (issue 16, issue 11): the storms inside a
//! real `warden run` task (Landlock, seccomp, the whole pipeline), the starter rules live on
//! the fastest storm, DNS through Warden's per-task resolver, and the offline paths (replay,
//! OCSF, report) on a log of 300k records. Every number is a ratio to a baseline measured in
//! the same run, or a rate beside its target; nothing is asserted about time.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};

use crate::workload::{DNS_NAME, WorkerReport, Workload, warmup_ops};

/// CPU time (user + system) of this process's waited-for children, in ns.
fn children_cpu_ns() -> u64 {
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    // SAFETY: valid out-pointer of the right type.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage with a valid `who` and out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Target of the storms inside a task, as time per operation over (a).
pub fn target_in_task(w: Workload) -> Option<f64> {
    match w {
        Workload::Open => Some(1.15),
        Workload::Exec | Workload::Connect => Some(1.05),
        Workload::Fork => None,
    }
}

/// The binaries and files the task runs need.
pub struct Tools {
    pub warden: PathBuf,
    pub exe: String,
    pub dir: PathBuf,
    pub rules: PathBuf,
}

impl Tools {
    /// `warden` next to this binary (xtask builds both), the starter rules of the checkout.
    pub fn find(exe: &str, dir: &Path) -> anyhow::Result<Self> {
        let warden = Path::new(exe).with_file_name("warden");
        ensure!(warden.exists(), "{} not found: build it (`cargo xtask bench` does)", warden.display());
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/starter");
        Ok(Self { warden, exe: exe.to_string(), dir: dir.to_path_buf(), rules })
    }

    /// A scope for the storms: the bench binary and `/bin/true` may run, 127.0.0.1 may be
    /// reached; files are left to the protected defaults every task gets.
    fn storm_scope(&self) -> anyhow::Result<PathBuf> {
        let p = self.dir.join("storm-scope.yaml");
        let text = format!(
            "version: 1\ntask: bench\nexec:\n  allow: [\"{}\", /bin/true, /usr/bin/true]\nnetwork:\n  egress:\n    - to: 127.0.0.1/32\n",
            self.exe
        );
        std::fs::write(&p, text).context("write the storm scope")?;
        Ok(p)
    }

    /// Runs one worker as a `warden run` task; returns its report and the log's path. The
    /// report gains `warden_cpu_ns`: the CPU time `warden run` itself used (its children's
    /// minus the worker's whole process).
    pub fn in_task(
        &self,
        w: &str,
        ops: u64,
        arg: &str,
        scope: &Path,
        extra: &[&str],
    ) -> anyhow::Result<(Value, PathBuf)> {
        let log = self.dir.join(format!("task-{w}.jsonl"));
        let children_before = children_cpu_ns();
        let out = Command::new(&self.warden)
            .arg("run")
            .arg("--scope")
            .arg(scope)
            .arg("--log")
            .arg(&log)
            .args(extra)
            .arg("--")
            .arg(&self.exe)
            .args(["__worker", w, &ops.to_string(), &warmup_ops(ops).to_string(), arg])
            .stdin(Stdio::null())
            .output()
            .context("start warden run")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "warden run of the {w} worker failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let children = children_cpu_ns() - children_before;
        let line = stdout.lines().last().unwrap_or_default();
        let mut v: Value =
            serde_json::from_str(line).with_context(|| format!("bad worker output {line:?}"))?;
        let worker_total = v["cpu_total_ns"].as_u64().unwrap_or(0);
        v["warden_cpu_ns"] = json!(children.saturating_sub(worker_total));
        Ok((v, log))
    }

    /// The CPU time `warden run` uses for a task that records next to nothing (`/bin/true`
    /// under the storm scope): its start-up and end, median of 3. Subtracted from the storms'
    /// `warden_cpu_ns` to get the pipeline's CPU per operation.
    pub fn idle_task_cpu_ns(&self) -> anyhow::Result<u64> {
        let scope = self.storm_scope()?;
        let log = self.dir.join("task-idle.jsonl");
        let mut v = Vec::new();
        for _ in 0..3 {
            let before = children_cpu_ns();
            let out = Command::new(&self.warden)
                .arg("run")
                .arg("--scope")
                .arg(&scope)
                .arg("--log")
                .arg(&log)
                .args(["--", "/bin/true"])
                .stdin(Stdio::null())
                .output()
                .context("start warden run -- /bin/true")?;
            ensure!(
                out.status.success(),
                "warden run -- /bin/true: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            v.push(children_cpu_ns() - before);
        }
        v.sort_unstable();
        Ok(v[1])
    }

    /// The storm `w` inside a task: the worker's report, and the CPU time `warden run` used
    /// for the whole task (start-up included).
    pub fn storm_in_task(&self, w: Workload, ops: u64, file: &Path) -> anyhow::Result<(WorkerReport, u64)> {
        let scope = self.storm_scope()?;
        let (v, _) = self.in_task(w.name(), ops, file.to_str().context("temp path")?, &scope, &[])?;
        let r = WorkerReport::parse(&v.to_string())?;
        Ok((r, v["warden_cpu_ns"].as_u64().unwrap_or(0)))
    }

    /// The connect storm (the fastest event rate of this engine) under `--rules rules/starter`:
    /// records written, drops and gaps.
    pub fn rules_storm(&self, ops: u64) -> anyhow::Result<Value> {
        let scope = self.storm_scope()?;
        let rules = self.rules.to_str().context("rules path")?.to_string();
        let start = Instant::now();
        let (v, log) = self.in_task("connect", ops, "-", &scope, &["--rules", &rules])?;
        let wall = start.elapsed().as_secs_f64();
        let text = std::fs::read_to_string(&log).context("read the task's log")?;
        let (mut records, mut gaps, mut gap_drops, mut end_drops, mut findings) =
            (0u64, 0u64, 0u64, None, 0u64);
        for line in text.lines() {
            let Ok(r) = serde_json::from_str::<Value>(line) else { continue };
            records += 1;
            match r["kind"].as_str() {
                Some("gap") => {
                    gaps += 1;
                    gap_drops += r["drops"].as_u64().unwrap_or(0);
                }
                Some("task_end") => end_drops = r["drops"].as_u64(),
                Some("finding") => findings += 1,
                _ => {}
            }
        }
        let elapsed = v["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9;
        let out = json!({
            "connects": ops,
            "connects_per_sec": ops as f64 / elapsed,
            "records": records,
            "gaps": gaps,
            "gap_drops": gap_drops,
            "task_end_drops": end_drops,
            "finding_records": findings,
            "wall_s": wall,
        });
        println!(
            "live rules (--rules rules/starter) on the connect storm: {ops} connects at {:.0}/s → {records} records, \
             drops {} (task_end), {gaps} gap record(s){}",
            ops as f64 / elapsed,
            end_drops.map_or("?".to_string(), |d| d.to_string()),
            if end_drops == Some(0) && gaps == 0 {
                ": zero drops (target met)"
            } else {
                ": DROPS (target missed)"
            }
        );
        Ok(out)
    }

    /// DNS: `queries` one at a time through Warden's resolver (a task whose scope grants
    /// the name) and straight to the same dnsmasq, alternating for `rounds`.
    pub fn dns_storm(&self, rounds: u32, queries: u64) -> anyhow::Result<Value> {
        let zone = [format!("--host-record={DNS_NAME},127.0.99.1")];
        let server = warden_tests::dnsmasq::Dnsmasq::start(&zone);
        let scope = self.dir.join("dns-scope.yaml");
        std::fs::write(
            &scope,
            format!(
                "version: 1\ntask: bench-dns\nexec:\n  allow: [\"{}\"]\nnetwork:\n  egress:\n    - host: \"{DNS_NAME}\"\n      ports: [443]\n      protocol: tcp\n  dns:\n    upstream: [\"{}\"]\n    accept_private: [127.0.0.0/8]\n",
                self.exe, server.addr
            ),
        )?;
        // The task asks the server's address on port 53: the kernel hands it to Warden.
        let via = format!("{}:53", server.addr.ip());
        let (mut direct, mut warden) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let out = Command::new(&self.exe)
                .args(["__worker", "dns", &queries.to_string(), &warmup_ops(queries).to_string()])
                .arg(server.addr.to_string())
                .stdin(Stdio::null())
                .output()
                .context("dns worker")?;
            ensure!(out.status.success(), "direct dns worker: {}", String::from_utf8_lossy(&out.stderr));
            let d: Value =
                serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or(""))?;
            let (mut w, log) = self.in_task("dns", queries, &via, &scope, &[])?;
            // The resolver's own view: each `dns` record's latency (query received → answer
            // ready), so a stall outside it (scheduling, the kernel's redirect) shows apart.
            let mut inner: Vec<u64> = std::fs::read_to_string(&log)
                .context("read the dns task's log")?
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|r| r["kind"] == "dns")
                .filter_map(|r| r["latency_us"].as_u64())
                .collect();
            inner.sort_unstable();
            let pct = |p: f64| {
                inner.get(((inner.len() as f64 * p) as usize).min(inner.len().saturating_sub(1))).copied()
            };
            w["resolver_p50_us"] = json!(pct(0.5));
            w["resolver_p99_us"] = json!(pct(0.99));
            w["resolver_max_us"] = json!(inner.last());
            let qps = |v: &Value| {
                v["ops"].as_f64().unwrap_or(0.0) / (v["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9)
            };
            eprintln!(
                "[dns round {round}/{rounds}] direct {:.0} q/s p99 {:.0} µs; through Warden {:.0} q/s p50 {:.0} µs p99 {:.0} µs max {:.0} µs (inside the resolver: p50 {} µs p99 {} µs max {} µs)",
                qps(&d),
                d["p99_ns"].as_f64().unwrap_or(0.0) / 1e3,
                qps(&w),
                w["p50_ns"].as_f64().unwrap_or(0.0) / 1e3,
                w["p99_ns"].as_f64().unwrap_or(0.0) / 1e3,
                w["max_ns"].as_f64().unwrap_or(0.0) / 1e3,
                w["resolver_p50_us"],
                w["resolver_p99_us"],
                w["resolver_max_us"],
            );
            direct.push(d);
            warden.push(w);
        }
        let med = |v: &[Value], f: &dyn Fn(&Value) -> f64| {
            let mut x: Vec<f64> = v.iter().map(f).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let qps =
            |v: &Value| v["ops"].as_f64().unwrap_or(0.0) / (v["elapsed_ns"].as_f64().unwrap_or(1.0) / 1e9);
        let p50 = |v: &Value| v["p50_ns"].as_f64().unwrap_or(0.0) / 1e3;
        let p99 = |v: &Value| v["p99_ns"].as_f64().unwrap_or(0.0) / 1e3;
        let (dq, wq) = (med(&direct, &qps), med(&warden, &qps));
        let (d50, w50, d99, w99) =
            (med(&direct, &p50), med(&warden, &p50), med(&direct, &p99), med(&warden, &p99));
        let added_p99_ms = (w99 - d99) / 1e3;
        println!(
            "dns ({queries} queries × {rounds} rounds, one at a time, UDP): direct {dq:.0} q/s p50 {d50:.0} µs p99 \
             {d99:.0} µs; through Warden's resolver {wq:.0} q/s p50 {w50:.0} µs p99 {w99:.0} µs; time per query \
             {:.2}×, added p99 {added_p99_ms:.3} ms (target ≤ 1 ms: {})",
            dq / wq,
            if added_p99_ms <= 1.0 { "met" } else { "missed" }
        );
        Ok(json!({
            "queries": queries, "rounds": rounds,
            "direct": { "qps": dq, "p50_us": d50, "p99_us": d99 },
            "warden": { "qps": wq, "p50_us": w50, "p99_us": w99 },
            "slowdown": dq / wq,
            "added_p99_ms": added_p99_ms,
            "target_added_p99_ms": 1.0,
            "runs": { "direct": direct, "warden": warden },
        }))
    }

    /// The offline paths on a log of `n` records: `warden replay --rules rules/starter`,
    /// `warden replay --format ocsf`, `warden report --rules rules/starter` (all cores),
    /// each run `reps` times; medians of wall time, CPU time and peak RSS.
    pub fn offline(&self, n: u64, reps: u32) -> anyhow::Result<Value> {
        let log = self.dir.join("offline.jsonl");
        let bytes = write_log(&log, n)?;
        let rules = self.rules.to_str().context("rules path")?;
        let log_s = log.to_str().context("log path")?;
        let html = self.dir.join("report.html");
        let cases: [(&str, Vec<&str>, f64); 3] = [
            ("replay --rules rules/starter", vec!["replay", "--rules", rules, log_s], 1_000_000.0),
            ("replay --format ocsf", vec!["replay", "--format", "ocsf", log_s], 250_000.0),
            (
                "report --rules rules/starter",
                vec!["report", log_s, "--html", html.to_str().unwrap_or(""), "--rules", rules],
                0.0,
            ),
        ];
        let mut out = Vec::new();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        for (name, args, target) in cases {
            let mut runs = Vec::new();
            for _ in 0..reps {
                // Peak RSS through /usr/bin/time: a child forked from this (large) process
                // would carry this process's peak into its own `ru_maxrss` across exec.
                let rss_file = self.dir.join("maxrss");
                let mut c = Command::new("/usr/bin/time");
                c.args(["-f", "%M", "-o"]).arg(&rss_file).arg(&self.warden);
                c.args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
                let busy = busy_ticks();
                let mut t = timed(c)?;
                // Other processes' CPU meanwhile (the machine's busy time minus the run's own).
                t.bg_cores = busy
                    .zip(busy_ticks())
                    .map(|(a, b)| ((b - a) as f64 / clock_ticks() - t.cpu_s).max(0.0) / t.wall_s);
                t.maxrss_kib = std::fs::read_to_string(&rss_file)
                    .ok()
                    .and_then(|s| s.lines().last()?.trim().parse().ok())
                    .unwrap_or(-1);
                runs.push(t);
            }
            let med = |f: fn(&Timed) -> f64| {
                let mut x: Vec<f64> = runs.iter().map(f).collect();
                x.sort_by(f64::total_cmp);
                x[x.len() / 2]
            };
            let (wall, cpu, rss) = (med(|t| t.wall_s), med(|t| t.cpu_s), med(|t| t.maxrss_kib as f64));
            let bg = med(|t| t.bg_cores.unwrap_or(f64::NAN));
            let rate = n as f64 / wall;
            // What the CPU per record allows when every core is the replay's (the wall-clock
            // ratio on a shared machine says more about the neighbours than about Warden).
            let ceiling = n as f64 / cpu * cores as f64;
            println!(
                "{name}: {n} records ({:.0} MB) in {wall:.2} s wall, {cpu:.2} s CPU ({:.2} µs per record) → \
                 {rate:.0} records/s{}, {:.0} records per CPU-second{}, peak RSS {:.0} MiB, other processes \
                 used {bg:.2} of {cores} cores meanwhile",
                bytes as f64 / 1e6,
                cpu / n as f64 * 1e6,
                if target > 0.0 {
                    format!(" = {:.2}× the {target:.0}/s target (wall)", rate / target)
                } else {
                    String::new()
                },
                n as f64 / cpu,
                if target > 0.0 {
                    format!(" (× {cores} cores = {:.2}× the target with the cores free)", ceiling / target)
                } else {
                    String::new()
                },
                rss / 1024.0
            );
            out.push(json!({
                "command": name, "records": n, "log_bytes": bytes, "wall_s": wall, "cpu_s": cpu,
                "records_per_sec": rate, "records_per_cpu_sec": n as f64 / cpu, "maxrss_kib": rss,
                "cpu_us_per_record": cpu / n as f64 * 1e6, "cores": cores, "background_cores": bg,
                "target_records_per_sec": (target > 0.0).then_some(target),
                "ratio_to_target": (target > 0.0).then(|| rate / target),
                "ratio_to_target_cores_free": (target > 0.0).then(|| ceiling / target),
                "runs": runs.iter().map(|t| json!({"wall_s": t.wall_s, "cpu_s": t.cpu_s, "maxrss_kib": t.maxrss_kib, "background_cores": t.bg_cores})).collect::<Vec<_>>(),
            }));
        }
        let _ = std::fs::remove_file(&log);
        Ok(Value::Array(out))
    }
}

/// One timed child process.
pub struct Timed {
    pub wall_s: f64,
    pub cpu_s: f64,
    pub maxrss_kib: i64,
    /// Cores other processes used during the run (offline paths only).
    pub bg_cores: Option<f64>,
}

/// The machine's busy time so far, in clock ticks (`/proc/stat`: all but idle and iowait).
fn busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    Some(f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum())
}

/// Clock ticks per second (`USER_HZ`).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// Runs `cmd` to its end; its wall time, CPU time (user + system) and peak RSS (`wait4`).
pub fn timed(mut cmd: Command) -> anyhow::Result<Timed> {
    let start = Instant::now();
    let child = cmd.spawn().context("spawn")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: valid out-pointers.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, once (the `Child` is not waited on again).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall_s = start.elapsed().as_secs_f64();
    std::mem::forget(child);
    ensure!(r == pid, "wait4: {}", std::io::Error::last_os_error());
    ensure!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed: status {status:#x}");
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Timed { wall_s, cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime), maxrss_kib: ru.ru_maxrss, bg_cores: None })
}

/// A log like a connect storm's under `warden run`: a task_start, then forks, execs, exits
/// and connects (some refused, with ancestry), with chain fields. Returns its size.
pub fn write_log(path: &Path, n: u64) -> anyhow::Result<u64> {
    use std::io::Write as _;
    let f = std::fs::File::create(path).context("create the offline log")?;
    let mut w = std::io::BufWriter::new(f);
    let task = "storm-0123456789abcdef";
    let hex = |x: u64| format!("{:016x}", x.wrapping_mul(0x9e37_79b9_7f4a_7c15)).repeat(4);
    writeln!(
        w,
        "{}",
        json!({"v": 2, "seq": 1, "time": "2026-12-03T10:00:00.000000001Z", "task": task, "kind": "task_start",
            "decision": "allow", "pid": 999, "ppid": 998, "node": "bench-node", "scope": "s.yaml",
            "cmd": ["warden-bench", "__worker", "connect"], "mode": "enforce", "prev": "0".repeat(64), "hash": hex(1)})
    )?;
    for i in 2..=n {
        let kind = match i % 20 {
            0 => "exec",
            1 => "exit",
            2 => "fork",
            _ => "connect",
        };
        let mut r = json!({"v": 2, "seq": i, "time": format!("2026-12-03T10:{:02}:{:02}.{:09}Z", i / 60_000 % 60, i / 1000 % 60, i),
            "task": task, "kind": kind, "decision": "allow", "pid": 1000 + i % 7, "ppid": 999,
            "exe": "/usr/local/bin/warden-bench", "comm": "warden-bench", "uid": 0, "cgroup_id": 12345,
            "prev": hex(i - 1), "hash": hex(i)});
        let m = r.as_object_mut().context("object")?;
        match kind {
            "exec" => {
                m.insert("path".into(), (if i % 100 == 0 { "/usr/bin/curl" } else { "/bin/true" }).into());
                m.insert("dev".into(), 2049.into());
                m.insert("ino".into(), 1234.into());
            }
            "exit" => {
                m.insert("exit_status".into(), 0.into());
            }
            "fork" => {
                m.insert("child_pid".into(), (5000 + i % 1000).into());
            }
            _ => {
                m.insert("addr".into(), "127.0.0.1".into());
                m.insert("port".into(), 40_000.into());
                m.insert("protocol".into(), "tcp".into());
            }
        }
        if i % 500 == 0 {
            m.insert("decision".into(), "deny".into());
            m.insert("action".into(), "refuse".into());
            m.insert("rule".into(), "network.egress".into());
            m.insert("ancestry".into(), json!([999, 998, 1]));
        }
        writeln!(w, "{r}")?;
    }
    w.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// `--peers`: a peer's watching running around an unwatched worker: `bpftrace` counting the
/// syscalls of the three storms (the way syscall-tracepoint tools watch), or `auditd` with
/// exec/open/connect rules (the way audit-based tools watch).
pub struct Peer {
    name: &'static str,
    child: std::process::Child,
    /// auditd only: the kernel audit state to put back when it stops.
    audit: Option<AuditRestore>,
}

/// The bpftrace program: count every openat, execve and connect on the machine.
const BPFTRACE_PROGRAM: &str = "tracepoint:syscalls:sys_enter_openat, tracepoint:syscalls:sys_enter_execve, \
     tracepoint:syscalls:sys_enter_connect { @[probe] = count(); }";

/// The key of the rules the auditd peer adds, so that exactly those are deleted again.
const AUDIT_PEER_KEY: &str = "warden-bench-peer";

/// Where the auditd peer's configuration and log live (bounded by rotation: 2 × 64 MB).
const AUDIT_PEER_DIR: &str = "/tmp/warden-bench-auditd";

/// What the auditd peer changed in the node's kernel audit state, to undo exactly.
struct AuditRestore {
    /// `auditctl -l` before the peer started.
    rules_before: String,
    /// Whether `-a never,task` was in the list (the peer deletes it so that the worker gets an
    /// audit context: with it no process does and syscall rules never match).
    had_never_task: bool,
}

fn auditctl(args: &[&str]) -> anyhow::Result<String> {
    let out =
        Command::new("auditctl").args(args).output().context("run auditctl (apt-get install auditd)")?;
    ensure!(
        out.status.success(),
        "auditctl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Peer {
    /// Starts bpftrace and waits until its probes are attached.
    pub fn bpftrace() -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        // bpftrace finds syscall tracepoints through tracefs.
        if !Path::new("/sys/kernel/tracing/events").exists() {
            let ok =
                Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]).status()?;
            ensure!(ok.success(), "cannot mount tracefs on /sys/kernel/tracing");
        }
        let mut child = Command::new("/usr/bin/bpftrace")
            .args(["-e", BPFTRACE_PROGRAM])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start bpftrace (apt-get install bpftrace)")?;
        let stdout = child.stdout.take().context("bpftrace stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("Attaching") {
                    let _ = tx.send(());
                }
            }
        });
        let mut peer = Peer { name: "bpftrace", child, audit: None };
        if rx.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
            peer.stop();
            anyhow::bail!("bpftrace did not attach its probes within 60 s");
        }
        // "Attaching" is printed before the last probe is in: give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Ok(peer)
    }

    /// Starts Debian's auditd as the node's audit daemon, logging to [`AUDIT_PEER_DIR`], with
    /// the rules an audit-based watcher of exec, open and connect uses (`-a always,exit -S
    /// openat,execve,connect`), and waits until the kernel sends it records. Refuses when
    /// another audit daemon is registered. Everything it changes is undone by [`Peer::stop`]:
    /// its rules deleted by key, `-a never,task` put back, the rule list checked against the
    /// one saved here.
    pub fn auditd() -> anyhow::Result<Self> {
        let status = agent_user::kaudit::netlink::status().context("kernel audit status")?;
        ensure!(
            status.pid == 0,
            "an audit daemon (port id {}) is already registered; the auditd peer runs only on a node without one",
            status.pid
        );
        let rules_before = auditctl(&["-l"])?;
        ensure!(
            !rules_before.contains(AUDIT_PEER_KEY),
            "audit rules keyed {AUDIT_PEER_KEY} are present: an earlier peer run was not cleaned up \
             (auditctl -D -k {AUDIT_PEER_KEY})"
        );
        let dir = Path::new(AUDIT_PEER_DIR);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        // Debian's configuration, with the log moved here and bounded; nothing else changed.
        let base = std::fs::read_to_string("/etc/audit/auditd.conf").context("/etc/audit/auditd.conf")?;
        let mut conf = String::new();
        for line in base.lines() {
            let key = line.split('=').next().unwrap_or("").trim();
            match key {
                "log_file" => conf.push_str(&format!("log_file = {AUDIT_PEER_DIR}/audit.log\n")),
                "max_log_file" => conf.push_str("max_log_file = 64\n"),
                "num_logs" => conf.push_str("num_logs = 2\n"),
                "max_log_file_action" => conf.push_str("max_log_file_action = ROTATE\n"),
                "space_left_action"
                | "admin_space_left_action"
                | "disk_full_action"
                | "disk_error_action" => conf.push_str(&format!("{key} = IGNORE\n")),
                _ => {
                    conf.push_str(line);
                    conf.push('\n');
                }
            }
        }
        let conf_path = dir.join("auditd.conf");
        std::fs::write(&conf_path, conf)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&conf_path, std::fs::Permissions::from_mode(0o640))?;
        let child = Command::new("auditd")
            .args(["-n", "-c", AUDIT_PEER_DIR])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start auditd (apt-get install auditd)")?;
        let mut peer =
            Peer { name: "auditd", child, audit: Some(AuditRestore { rules_before, had_never_task: false }) };
        let start = Instant::now();
        loop {
            if agent_user::kaudit::netlink::status().is_ok_and(|s| s.pid != 0) {
                break;
            }
            if start.elapsed() > std::time::Duration::from_secs(20)
                || !matches!(peer.child.try_wait(), Ok(None))
            {
                peer.stop();
                anyhow::bail!(
                    "auditd did not register as the audit daemon within 20 s (see {AUDIT_PEER_DIR})"
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let added = (|| -> anyhow::Result<()> {
            // Warden's own rule bytes (auditctl builds `never,task` with another mask, so its
            // `-d` does not match the rule Warden added).
            let had =
                agent_user::kaudit::netlink::delete_never_task_rule().context("delete -a never,task")?;
            if let Some(a) = peer.audit.as_mut() {
                a.had_never_task = had;
            }
            auditctl(&[
                "-a",
                "always,exit",
                "-F",
                "arch=b64",
                "-S",
                "openat",
                "-S",
                "execve",
                "-S",
                "connect",
                "-k",
                AUDIT_PEER_KEY,
            ])?;
            Ok(())
        })();
        if let Err(e) = added {
            peer.stop();
            return Err(e.context("add the auditd peer's rules"));
        }
        Ok(peer)
    }

    /// The peer's name as reported.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Stops it (SIGINT for bpftrace, SIGTERM for auditd, as a user would), waits for it, and
    /// for auditd puts the node's audit rules back as they were.
    pub fn stop(&mut self) {
        let sig = if self.audit.is_some() { libc::SIGTERM } else { libc::SIGINT };
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signals our own child by its pid.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
        let start = Instant::now();
        let mut exited = false;
        while start.elapsed() < std::time::Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(a) = self.audit.take() {
            let _ = auditctl(&["-D", "-k", AUDIT_PEER_KEY]);
            if a.had_never_task
                && let Err(e) = agent_user::kaudit::netlink::add_never_task_rule()
            {
                eprintln!("WARNING: the auditd peer could not put `-a never,task` back: {e}");
            }
            let after = auditctl(&["-l"]).unwrap_or_default();
            if after != a.rules_before {
                eprintln!(
                    "WARNING: the auditd peer could not restore the audit rules exactly.\nbefore:\n{}\nafter:\n{}",
                    a.rules_before, after
                );
            }
            let _ = std::fs::remove_dir_all(AUDIT_PEER_DIR);
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.audit.is_some() || matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
    }
}

impl Tools {
    /// `warden daemon` with `tasks` tasks started at once: [`warden_tests::memory::daemon_rss`]
    /// with this bench's `warden` (the engine the host has).
    pub fn daemon_rss(&self, tasks: usize) -> anyhow::Result<Value> {
        // SAFETY: set before any daemon helper reads it; no other thread of the bench reads
        // the environment now (the ring consumer has stopped).
        unsafe { std::env::set_var("WARDEN_BIN", &self.warden) };
        warden_tests::memory::daemon_rss(tasks, "")
    }
}
