//! Helpers for Warden's privileged integration tests.
//!
//! Tests load real programs into the running kernel and create throwaway
//! cgroups. Every deny is scoped to a cgroup the test itself created, and
//! [`TestCgroup`] kills and removes it on drop, also when the test panics.
//!
//! A test that needs a kernel feature calls [`require`]: when the feature is
//! missing it prints `SKIP <test>: <reason>` and the test returns early; when
//! `WARDEN_REQUIRE` lists the feature (the VM tier sets it), a missing feature
//! fails the test instead, so a skip can never be the normal state there.
pub mod containers;
pub mod daemon;
pub mod dnsmasq;
pub mod memory;

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use agent_user::{
    loader::probe::{ProbeReport, probe},
    sandbox::{Cgroup, cgroup2_mount},
};

/// Cached capability probe.
pub fn probe_report() -> &'static ProbeReport {
    static REPORT: OnceLock<ProbeReport> = OnceLock::new();
    REPORT.get_or_init(probe)
}

/// Whether the calling test may run: root and `feature` (a `warden probe` name, or "root")
/// available. Prints a skip reason otherwise, or panics if `WARDEN_REQUIRE` demands it.
pub fn require(test: &str, feature: &str) -> bool {
    // SAFETY: trivial syscall.
    let root = unsafe { libc::geteuid() } == 0;
    let reason = if !root {
        Some("needs root (loads BPF programs, creates cgroups)".to_string())
    } else if feature == "root" {
        None
    } else {
        let r = probe_report();
        match r.features.iter().find(|f| f.name == feature) {
            Some(f) if f.available => None,
            Some(f) => Some(format!("{feature} unavailable on {}: {}", r.kernel, f.detail)),
            None => Some(format!("unknown feature {feature}")),
        }
    };
    let Some(reason) = reason else { return true };
    let required = std::env::var("WARDEN_REQUIRE").unwrap_or_default();
    if required.split(',').any(|f| f == feature || f == "all") {
        panic!("{test}: required feature missing: {reason}");
    }
    println!("SKIP {test}: {reason}");
    false
}

/// A cgroup created for one test under `<cgroup2>/warden-test/<name>-<pid>-<n>`. Dropping it
/// kills every process inside and removes it (and the shared parent once empty).
pub struct TestCgroup {
    pub cg: Cgroup,
    parent: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let parent = cgroup2_mount().expect("cgroup2 mounted").join("warden-test");
        let cg = Cgroup::create(&parent, &format!("{name}-{}-{n}", std::process::id()))
            .expect("create test cgroup");
        Self { cg, parent }
    }

    /// A child cgroup inside this one (removed with it).
    pub fn child(&self, name: &str) -> Cgroup {
        Cgroup::create(self.cg.path(), name).expect("create child cgroup")
    }

    pub fn path(&self) -> &Path {
        self.cg.path()
    }

    pub fn id(&self) -> u64 {
        self.cg.id()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = self.cg.kill_all(Duration::from_secs(10));
        let _ = self.cg.remove();
        let _ = std::fs::remove_dir(&self.parent);
    }
}

/// A `std::process::Command` that moves itself into `cg` before exec.
pub fn command_in(cg: &Cgroup, program: &str, args: &[&str]) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let procs = std::ffi::CString::new(cg.procs_file().to_str().expect("utf-8 path")).expect("no NUL");
    let mut c = std::process::Command::new(program);
    c.args(args);
    // SAFETY: only raw syscalls on memory prepared before fork.
    unsafe {
        c.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    c
}

/// The v1 twins of the sandbox cgroup `rel` (its path below the cgroup2 mount): where the
/// host's v1 hierarchies have `pids` or `memory`, `warden` puts the task's processes in a cgroup
/// of the same path there too (`limits.processes`, `limits.memory`).
pub fn v1_twins(rel: &Path) -> Vec<PathBuf> {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    ["pids", "memory"]
        .into_iter()
        .filter_map(|c| agent_user::util::mountinfo::v1_mount_in(&mi, c))
        .map(|v1| v1.join(rel))
        .collect()
}

/// Removes a v1 twin whose processes are gone, then its parent once empty, as `warden` does
/// when a task ends; a supervisor that was killed leaves both.
pub fn remove_v1_twin(twin: &Path) {
    if let Ok(cg) = Cgroup::open(twin) {
        let _ = cg.remove();
    }
    if let Some(parent) = twin.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

/// Every wait for something to happen lasts this many times its stated timeout: the VM tier
/// runs beside the host tier and a loaded machine slows what the tests wait for. A wait ends
/// as soon as what it waits for happens, and no test waits for something *not* to happen with
/// it, so the slack costs nothing when things work.
pub const WAIT_SLACK: u32 = 3;

/// Polls `f` until it returns `Some` or `timeout` (times [`WAIT_SLACK`]) passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let timeout = timeout * WAIT_SLACK;
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `warden` binary under test: `WARDEN_BIN` (set by `cargo xtask test`), else the debug
/// build next to this test binary.
pub fn warden_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WARDEN_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/warden
    let exe = std::env::current_exe().expect("current exe");
    let p = exe.parent().and_then(Path::parent).expect("target dir").join("warden");
    assert!(
        p.exists(),
        "warden binary not found at {}; run `cargo xtask test` or set WARDEN_BIN",
        p.display()
    );
    p
}

/// What one `warden run` produced.
pub struct RunOutcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The records of the log file (after a rotation: of the newest part only).
    pub records: Vec<serde_json::Value>,
    /// The log exactly as written (the sealed lines the hash chain covers).
    pub log: String,
    /// Where the log is (`<dir>/events.jsonl`; rotated parts beside it).
    pub log_path: PathBuf,
    /// The run's temp dir (scope, node key, log), removed when the outcome is dropped.
    pub dir: tempfile::TempDir,
}

impl RunOutcome {
    /// The result of a probe line `NAME RESULT...` printed by the task's script.
    pub fn result(&self, name: &str) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| {
                panic!("no result for {name} in stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
            })
            .to_string()
    }

    /// Records with the given kind and decision.
    pub fn records_of(&self, kind: &str, decision: &str) -> Vec<&serde_json::Value> {
        self.records.iter().filter(|r| r["kind"] == kind && r["decision"] == decision).collect()
    }

    /// Every record with decision "deny" or "audit".
    pub fn judged(&self) -> Vec<&serde_json::Value> {
        self.records.iter().filter(|r| r["decision"] == "deny" || r["decision"] == "audit").collect()
    }
}

/// A `warden run` started by [`spawn_warden`] and not yet waited for.
pub struct RunningWarden {
    pub child: std::process::Child,
    /// The log `warden run` writes (it may not exist yet).
    pub log_path: PathBuf,
    dir: tempfile::TempDir,
}

impl RunningWarden {
    /// The run's temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits for `warden` to end and collects what it produced.
    pub fn finish(self) -> RunOutcome {
        let out = self.child.wait_with_output().expect("wait for warden");
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let records: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("record is JSON")).collect();
        // `warden run --engine auto` falls back when BPF LSM programs fail to load; a test must not
        // pass on the fallback while the kernel offers BPF LSM. (A rotated log's newest part does
        // not start with `task_start`.)
        if let Some(start) = records.first().filter(|r| r["kind"] == "task_start") {
            assert_eq!(
                start["engine"].as_str(),
                Some(engine()),
                "warden run used another engine than this kernel offers; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        RunOutcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            records,
            log: text,
            log_path: self.log_path,
            dir: self.dir,
        }
    }
}

/// Starts `warden run` with `scope` (YAML text), `extra` arguments and `sh -c script`, in a temp
/// dir, without waiting: stdin is `/dev/null`, stdout and stderr are captured.
pub fn spawn_warden(scope: &str, script: &str, extra: &[&str]) -> RunningWarden {
    let dir = tempfile::tempdir().expect("tempdir");
    let sp = dir.path().join("scope.yaml");
    std::fs::write(&sp, scope).expect("write scope");
    let log_path = dir.path().join("events.jsonl");
    let child = std::process::Command::new(warden_bin())
        .arg("run")
        .arg("--key")
        .arg(dir.path().join("node.key"))
        .arg("--scope")
        .arg(&sp)
        .arg("--log")
        .arg(&log_path)
        .args(extra)
        .args(["--", "/bin/sh", "-c", script])
        // Its own sensor, even on a machine where a node daemon runs (tests that mean to go
        // through a daemon start their own and point WARDEN_SOCKET at it).
        .env("WARDEN_SOCKET", dir.path().join("no-daemon.sock"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run warden");
    RunningWarden { child, log_path, dir }
}

/// Runs `warden run` with `scope` (YAML text) and `sh -c script`, in a temp dir, to the end,
/// with its own sensor.
pub fn run_warden(scope: &str, script: &str, extra: &[&str]) -> RunOutcome {
    spawn_warden(scope, script, extra).finish()
}

/// The engine `warden run` enforces with on this kernel.
pub fn engine() -> &'static str {
    probe_report().engine.primary
}

/// Notes an observed coverage cell (control × path on this engine) for `docs/coverage.md`.
/// Written as a JSON line to `$WARDEN_COVERAGE_OUT` when set (`cargo xtask test` sets it).
pub fn coverage(control: &str, path: &str, outcome: &str) {
    let Some(out) = std::env::var_os("WARDEN_COVERAGE_OUT") else { return };
    let line = serde_json::json!({
        "engine": engine(),
        "kernel": probe_report().kernel,
        "control": control,
        "path": path,
        "outcome": outcome,
    });
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(out) {
        let _ = writeln!(f, "{line}");
    }
}
