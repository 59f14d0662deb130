//! Host tier: path-named unix sockets, judged like files on both engines. Real listeners run in
//! this (unconfined) test process, in temp directories the scope denies or grants; the task
//! connects and sends with `warden-node-probe`. On the fallback engine the cgroup
//! `connect_unix`/`sendmsg_unix` programs judge the name the task gave; on the BPF LSM engine
//! `unix_stream_connect`/`unix_may_send` judge the socket's file. Each refusal is asserted to be
//! the program's (EACCES, a record naming the path) and to have reached no listener.
use std::{
    fs,
    io::Write,
    os::unix::net::{UnixDatagram, UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use warden_tests::{coverage, engine, require, run_warden, spawn_warden};

const NODE: &str = env!("CARGO_BIN_EXE_warden-node-probe");

/// A stream listener and a datagram socket bound in `dir`, served from this process; counts
/// what reached them (accepted connections, received datagrams).
struct Servers {
    stream: PathBuf,
    dgram: PathBuf,
    reached: Arc<AtomicUsize>,
}

impl Servers {
    fn new(dir: &Path) -> Self {
        let (stream, dgram) = (dir.join("server.sock"), dir.join("dgram.sock"));
        let l = UnixListener::bind(&stream).unwrap();
        let d = UnixDatagram::bind(&dgram).unwrap();
        let reached = Arc::new(AtomicUsize::new(0));
        let r = reached.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                r.fetch_add(1, Ordering::SeqCst);
                let mut c = c;
                let _ = c.write_all(b"hi\n");
            }
        });
        let r = reached.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            while d.recv(&mut b).is_ok() {
                r.fetch_add(1, Ordering::SeqCst);
            }
        });
        Servers { stream, dgram, reached }
    }

    fn reached(&self) -> usize {
        // Let an accepted connection or a queued datagram be counted.
        std::thread::sleep(Duration::from_millis(100));
        self.reached.load(Ordering::SeqCst)
    }
}

/// `<d>/denied` (in `files.deny`), `<d>/allowed` (in `files.read`), `<d>/outside` (in neither),
/// each with its servers.
struct Layout {
    _t: tempfile::TempDir,
    d: PathBuf,
    denied: Servers,
    allowed: Servers,
    outside: Servers,
}

impl Layout {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(t.path()).unwrap();
        for sub in ["denied", "allowed", "outside"] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        let (denied, allowed, outside) = (
            Servers::new(&d.join("denied")),
            Servers::new(&d.join("allowed")),
            Servers::new(&d.join("outside")),
        );
        Layout { _t: t, d, denied, allowed, outside }
    }

    fn scope(&self, task: &str) -> String {
        let probe_dir = Path::new(NODE).parent().unwrap().display().to_string();
        format!(
            "version: 1\ntask: {task}\nfiles:\n  read: [/usr, /lib, /lib64, /etc, /bin, /dev, /proc, {probe_dir}, {d}/denied, {d}/allowed]\n  deny: [{d}/denied]\n",
            d = self.d.display()
        )
    }
}

fn deny_of<'a>(records: &[&'a serde_json::Value], path: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| r["path"] == path)
        .unwrap_or_else(|| panic!("no unix_connect record for {path}: {records:#?}"))
}

#[test]
fn unix_socket_names_are_judged_like_files() {
    if !require("unix_socket_names_are_judged_like_files", "landlock") {
        return;
    }
    let l = Layout::new();
    let (n, d) = (NODE, l.d.display());
    let (ds, dd, os) = (l.denied.stream.display(), l.denied.dgram.display(), l.outside.stream.display());
    let script = format!(
        "{n} unix-connect {as_} | sed s/^unix-connect/allowed/
         {n} unix-send {ad} | sed s/^unix-send/allowed-dgram/
         {n} unix-connect {ds} | sed s/^unix-connect/denied/
         {n} unix-send {dd} | sed s/^unix-send/denied-dgram/
         {n} unix-connect {os} | sed s/^unix-connect/outside-read/
         {n} unix-connect {d}/allowed/../denied/server.sock | sed s/^unix-connect/dotdot/
         {n} unix-connect /proc/self/root{ds} | sed s/^unix-connect/via-proc/
         cd {d}/denied && {n} unix-connect server.sock | sed s/^unix-connect/relative/",
        as_ = l.allowed.stream.display(),
        ad = l.allowed.dgram.display(),
    );
    let out = run_warden(&l.scope("unix-names"), &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    // Ordinary work: the allowed listener answered, the datagram was delivered.
    assert_eq!(out.result("allowed"), "ok", "a connect the scope allows works");
    assert_eq!(out.result("allowed-dgram"), "ok");
    assert_eq!(l.allowed.reached(), 2, "both reached the allowed servers");
    for op in ["denied", "denied-dgram", "outside-read", "dotdot", "via-proc", "relative"] {
        assert_eq!(out.result(op), "err 13", "{op}: refused by the unix rules (EACCES)\n{}", out.stdout);
    }
    assert_eq!(l.denied.reached(), 0, "nothing reached the denied servers");
    assert_eq!(l.outside.reached(), 0, "nothing reached the server outside files.read");
    let records = out.records_of("unix_connect", "deny");
    let r = deny_of(&records, &ds.to_string());
    assert_eq!((r["rule"].as_str(), r["arg"].as_u64()), (Some("files.deny"), Some(1)), "{r}");
    let r = deny_of(&records, &dd.to_string());
    assert_eq!((r["rule"].as_str(), r["arg"].as_u64()), (Some("files.deny"), Some(2)), "{r}");
    assert_eq!(deny_of(&records, &os.to_string())["rule"], "files.read");
    if engine() == "bpf-lsm" {
        // The socket's file is judged: every way of naming it is the same file.
        assert_eq!(records.len(), 6, "{:#?}", out.judged());
    } else {
        // The name is judged: names that cannot be judged by their text are refused.
        for name in [
            format!("{d}/allowed/../denied/server.sock"),
            format!("/proc/self/root{ds}"),
            "server.sock".into(),
        ] {
            assert_eq!(deny_of(&records, &name)["rule"], "files.unix_name", "{name}");
        }
        assert_eq!(records.len(), 6, "{:#?}", out.judged());
    }
    coverage("unix socket connect", "syscall", "enforced");
}

#[test]
fn audit_mode_records_unix_connects_and_allows_them() {
    if !require("audit_mode_records_unix_connects_and_allows_them", "landlock") {
        return;
    }
    let l = Layout::new();
    let n = NODE;
    let script = format!(
        "{n} unix-connect {ds} | sed s/^unix-connect/denied/
         {n} unix-send {dd} | sed s/^unix-send/denied-dgram/",
        ds = l.denied.stream.display(),
        dd = l.denied.dgram.display(),
    );
    let out = run_warden(&l.scope("unix-audit"), &script, &["--mode", "audit"]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.result("denied"), "ok", "audit mode refuses nothing");
    assert_eq!(out.result("denied-dgram"), "ok");
    assert_eq!(l.denied.reached(), 2);
    let records = out.records_of("unix_connect", "audit");
    assert_eq!(records.len(), 2, "{:#?}", out.judged());
    for p in [&l.denied.stream, &l.denied.dgram] {
        let r = deny_of(&records, p.to_str().unwrap());
        assert_eq!((r["rule"].as_str(), r["action"].as_str()), (Some("files.deny"), None), "{r}");
    }
}

#[test]
fn processes_outside_the_sandbox_still_connect() {
    if !require("processes_outside_the_sandbox_still_connect", "landlock") {
        return;
    }
    let l = Layout::new();
    let n = NODE;
    // The task is refused while it runs; this process (outside its cgroup) is not.
    let script = format!(
        "{n} unix-connect {ds} | sed s/^unix-connect/denied/; sleep 2",
        ds = l.denied.stream.display()
    );
    let running = spawn_warden(&l.scope("unix-outside"), &script, &[]);
    std::thread::sleep(Duration::from_millis(1200));
    let mut s = UnixStream::connect(&l.denied.stream).expect("a process outside the sandbox connects");
    let mut b = [0u8; 3];
    std::io::Read::read_exact(&mut s, &mut b).unwrap();
    assert_eq!(&b, b"hi\n");
    UnixDatagram::unbound().unwrap().send_to(b"x", &l.denied.dgram).expect("and sends");
    let out = running.finish();
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.result("denied"), "err 13", "the task was refused meanwhile");
    assert_eq!(l.denied.reached(), 2, "only this process's connection and datagram arrived");
}

/// Under the node daemon the unix programs are pinned with the task's egress links: they keep
/// refusing while no daemon runs (a process the test puts in the task's cgroup), a restarted
/// daemon re-adopts them without attaching twice, and task end removes them.
#[test]
fn daemon_tasks_pin_the_unix_programs() {
    if !require("daemon_tasks_pin_the_unix_programs", "root") || engine() == "bpf-lsm" {
        // Under BPF LSM the LSM hooks judge; nothing is attached per task.
        return;
    }
    let l = Layout::new();
    let mut d = warden_tests::daemon::TestDaemon::start("");
    let t = d.start_task("unix-daemon", &l.scope("unix-daemon"));
    let id = t["id"].as_str().unwrap().to_string();
    let cgroup = PathBuf::from(t["cgroup"].as_str().unwrap());
    let ds = l.denied.stream.display().to_string();
    let out = d.exec(&id, &format!("{NODE} unix-connect {ds}"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unix-connect err 13", "{}", d.stderr());
    let version = d.ready["startup"]["version"].as_str().unwrap().to_string();
    let pins = d.pin_root.join(&version).join("tasks").join(&id);
    for p in ["unix_connect", "unix_sendmsg"] {
        assert!(pins.join(p).exists(), "{p} not pinned in {}", pins.display());
    }
    let in_task = || {
        let cg = agent_user::sandbox::Cgroup::open(&cgroup).unwrap();
        let o = warden_tests::command_in(&cg, NODE, &["unix-connect", &ds]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    d.kill9();
    assert_eq!(in_task(), "unix-connect err 13", "refused while no daemon runs");
    d.launch(&[]);
    let st = &d.ready["startup"];
    assert!(st["adopted_tasks"].as_array().unwrap().iter().any(|t| t == id.as_str()), "{st}");
    let out = d.exec(&id, &format!("{NODE} unix-connect {ds}"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "unix-connect err 13", "{}", d.stderr());
    let denied = d.wait_record(&id, Duration::from_secs(5), |r| {
        r["kind"] == "unix_connect" && r["decision"] == "deny" && r["path"] == ds.as_str()
    });
    assert_eq!(denied["rule"], "files.deny");
    assert!(d.end(&id).status.success());
    assert!(!pins.exists(), "the task's unix links outlived it");
    assert_eq!(l.denied.reached(), 0);
}
