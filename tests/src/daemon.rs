//! A `warden daemon` of the test's own: its socket, state, secrets, log and key in a temp
//! directory, its pins under `<bpffs>/warden-test-<pid>-<n>` and its sandboxes under
//! `<cgroup2>/warden-test/daemon-<pid>-<n>` (on hosts that bind `pids` to cgroup v1, their
//! process-limit twins under `<v1 pids>/warden-test/daemon-<pid>-<n>`). Dropping it kills the
//! daemon, every process left in its sandboxes, and removes the cgroups (both hierarchies),
//! pins and secret mounts, also when the test panicked.
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use agent_user::sandbox::{Cgroup, cgroup2_mount};

use crate::warden_bin;

static N: AtomicU32 = AtomicU32::new(0);

/// Where test daemons keep their socket, state, secrets, log and key.
pub const DAEMONS_DIR: &str = "/var/lib/warden-tests";

/// A daemon under test.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub secrets_dir: PathBuf,
    /// `<bpffs>/<pin_name>`.
    pub pin_root: PathBuf,
    /// The sandboxes' parent cgroup.
    pub cgroup_parent: PathBuf,
    /// The parent of the sandboxes' v1 pids twins, on hosts where cgroup v1 has `pids` (the
    /// daemon removes a twin when its task ends, but not when it is killed).
    pub pids_v1_parent: Option<PathBuf>,
    /// The same for the memory twins, on hosts where cgroup v1 has `memory`.
    pub memory_v1_parent: Option<PathBuf>,
    pub metrics_port: u16,
    child: Option<Child>,
    /// The `ready` line of the last start.
    pub ready: serde_json::Value,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl TestDaemon {
    /// Writes a config (plus `extra` YAML lines) and starts the daemon.
    pub fn start(extra: &str) -> Self {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Self {
        let n = N.fetch_add(1, Ordering::Relaxed);
        // A directory of its own, as a deployment gives the daemon (/var/lib/warden,
        // /run/warden): on the fallback engine the parents of the daemon's protected files lose
        // the right to create entries (Landlock grants whole directories), so a daemon whose
        // key sat directly in /tmp would take /tmp away from every task.
        std::fs::create_dir_all(DAEMONS_DIR).expect("daemons dir");
        let dir = tempfile::Builder::new().prefix("d-").tempdir_in(DAEMONS_DIR).expect("tempdir");
        let d = dir.path();
        let pin_name = format!("warden-test-{}-{n}", std::process::id());
        let cg_rel = format!("warden-test/daemon-{}-{n}", std::process::id());
        let metrics_port = free_port();
        let config = d.join("warden.yaml");
        std::fs::write(
            &config,
            format!(
                "socket: {d}/warden.sock\nstate_dir: {d}/state\nsecrets_dir: {d}/secrets\npin_name: {pin_name}\n\
                 cgroup_parent: {cg_rel}\nkey: {d}/node.key\nlog:\n  path: {d}/events.jsonl\n\
                 metrics:\n  listen: 127.0.0.1:{metrics_port}\n{extra}",
                d = d.display()
            ),
        )
        .expect("write config");
        let mount = cgroup2_mount().expect("cgroup2");
        let mut me = Self {
            socket: d.join("warden.sock"),
            log: d.join("events.jsonl"),
            secrets_dir: d.join("secrets"),
            pin_root: PathBuf::from("/sys/fs/bpf").join(pin_name),
            pids_v1_parent: std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|mi| agent_user::util::mountinfo::v1_pids_mount_in(&mi))
                .map(|v1| v1.join(&cg_rel)),
            memory_v1_parent: std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|mi| agent_user::util::mountinfo::v1_mount_in(&mi, "memory"))
                .map(|v1| v1.join(&cg_rel)),
            cgroup_parent: mount.join(&cg_rel),
            metrics_port,
            config,
            dir,
            child: None,
            ready: serde_json::Value::Null,
        };
        me.launch(env);
        me
    }

    /// (Re)starts the daemon process with the same config; waits for its `ready` line.
    pub fn launch(&mut self, env: &[(&str, &str)]) {
        let mut cmd = Command::new(warden_bin());
        cmd.args(["daemon", "--config"]).arg(&self.config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .env("WARDEN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("daemon.err"))
                    .expect("daemon.err"),
            ))
            .spawn()
            .expect("spawn warden daemon");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
        self.child = Some(child);
        assert!(!line.is_empty(), "daemon did not become ready; stderr:\n{}", self.stderr());
        self.ready = serde_json::from_str(&line).expect("ready line is JSON");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: the daemon dies without any cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.err")).unwrap_or_default()
    }

    /// `warden ARGS` against this daemon.
    pub fn warden(&self, args: &[&str]) -> Output {
        Command::new(warden_bin()).args(args).env("WARDEN_SOCKET", &self.socket).output().expect("run warden")
    }

    /// A `warden ARGS` command against this daemon, to spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(warden_bin());
        c.args(args).env("WARDEN_SOCKET", &self.socket);
        c
    }

    /// Writes `scope` to a file in the temp dir and starts a task; returns its info.
    pub fn start_task(&self, name: &str, scope: &str) -> serde_json::Value {
        let p = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, scope).expect("write scope");
        let out = self.warden(&["task", "start", "--json", "--scope", p.to_str().expect("utf-8")]);
        assert!(
            out.status.success(),
            "task start failed: {}\ndaemon:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.stderr()
        );
        serde_json::from_slice(&out.stdout).expect("task JSON")
    }

    /// `warden task exec ID -- sh -c SCRIPT`.
    pub fn exec(&self, id: &str, script: &str) -> Output {
        self.warden(&["task", "exec", id, "--", "/bin/sh", "-c", script])
    }

    pub fn end(&self, id: &str) -> Output {
        self.warden(&["task", "end", id])
    }

    /// The node log's records: its whole lines (the daemon may be writing the last one).
    pub fn records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
        whole.lines().map(|l| serde_json::from_str(l).expect("record is JSON")).collect()
    }

    /// Records of one task.
    pub fn records_of(&self, task: &str) -> Vec<serde_json::Value> {
        self.records().into_iter().filter(|r| r["task"] == task).collect()
    }

    /// Waits until some record of `task` satisfies `f`.
    pub fn wait_record(
        &self,
        task: &str,
        timeout: Duration,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let timeout = timeout * crate::WAIT_SLACK;
        let t0 = Instant::now();
        loop {
            if let Some(r) = self.records_of(task).into_iter().find(|r| f(r)) {
                return r;
            }
            assert!(
                t0.elapsed() < timeout,
                "no matching record of {task}; log:\n{}",
                self.records_of(task).iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `warden verify` of the node log: the whole chain, across restarts, findings included.
    pub fn assert_log_verifies(&self) {
        let v = Command::new(warden_bin()).arg("verify").arg(&self.log).output().expect("run warden verify");
        assert!(
            v.status.success(),
            "node log does not verify:\n{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }

    /// GET /metrics.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Ok(cg) = Cgroup::open(dir) {
        let _ = cg.kill_all(Duration::from_secs(5));
        let _ = cg.remove();
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
        remove_cgroup_tree(&self.cgroup_parent);
        if let Some(parent) = self.cgroup_parent.parent() {
            let _ = std::fs::remove_dir(parent);
        }
        // The v1 twins hold the same processes as the v2 sandboxes, killed above: only the
        // directories are left, deepest first; then `warden-test` there too once empty.
        // Also when this daemon's twin is already gone (its tasks ended): the daemon made
        // `warden-test` at start either way.
        for v1 in [&self.pids_v1_parent, &self.memory_v1_parent].into_iter().flatten() {
            crate::remove_v1_twin(v1);
        }
        // Issued secrets are tmpfs mounts under secrets_dir.
        if let Ok(rd) = std::fs::read_dir(&self.secrets_dir) {
            for e in rd.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // Unpinning detaches whatever the daemon left attached.
        let _ = std::fs::remove_dir_all(&self.pin_root);
        // The call endpoint's directory, beside the socket's (left by a killed daemon).
        if let Some(dir) = agent_user::daemon::inside::socket_path(&self.socket).parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
