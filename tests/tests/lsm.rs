//! BPF LSM engine: `bprm_check_security` refuses an executable, identified by (dev, inode),
//! to the tasks of one sandbox's cgroups, and to no one else.
//!
//! These tests need a kernel that runs BPF LSM programs. The development host's kernel
//! refuses them, so here they print `SKIP`; the VM tier (`cargo xtask vm`) runs them on stock
//! Debian kernels with `WARDEN_REQUIRE=bpf_lsm`, where a skip is a failure.
//!
//! The eBPF object is loaded and the LSM program attached once per process: in the VM, BTF
//! parsing alone takes seconds. Each test takes its own sandbox slot and cgroup, so the tests
//! stay independent when they run in parallel on a capable host.
use std::{
    fs,
    io::ErrorKind,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    sync::{
        Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use agent_user::loader::{LoadOptions, Sensor, user_dev_to_kernel};
use warden_tests::{TestCgroup, command_in, require};

/// The exit code the shell copies are asked for, so a run is told apart from any failure.
const EXIT_CODE: i32 = 7;

/// The sensor shared by every test in this binary, with the LSM exec program attached.
fn sensor() -> MutexGuard<'static, Sensor> {
    static SENSOR: OnceLock<Mutex<Sensor>> = OnceLock::new();
    SENSOR
        .get_or_init(|| {
            let mut s = Sensor::load(&LoadOptions::default()).expect("load the sensor");
            s.attach_lsm_exec().expect("attach the BPF LSM exec program");
            Mutex::new(s)
        })
        .lock()
        // A test that panicked while holding the lock left the maps consistent (each update
        // is one syscall), so the next test may go on.
        .unwrap_or_else(PoisonError::into_inner)
}

/// A sandbox slot bound to cgroups for the length of one test; unbound on drop.
struct Sandbox {
    slot: u32,
}

impl Sandbox {
    fn watch(cgroup_id: u64) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let slot = NEXT.fetch_add(1, Ordering::Relaxed);
        sensor().watch(&[cgroup_id], slot).expect("watch the test cgroup");
        Self { slot }
    }

    fn deny_exec(&self, file: &Path) {
        let md = fs::metadata(file).expect("stat the file to deny");
        sensor()
            .deny_exec(self.slot, user_dev_to_kernel(md.dev()), md.ino())
            .expect("add the exec deny entry");
    }

    fn unwatch(&self) -> usize {
        sensor().unwatch_slot(self.slot).expect("unwatch the slot")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = sensor().unwatch_slot(self.slot);
    }
}

/// Two copies of the shell `/bin/sh` resolves to (dash or bash on a host, busybox in the
/// VM): same bytes, different inodes, so a deny of one says nothing about the other.
struct Shells {
    _dir: tempfile::TempDir,
    denied: PathBuf,
    allowed: PathBuf,
}

impl Shells {
    fn new() -> Self {
        let real = fs::canonicalize("/bin/sh").expect("resolve /bin/sh");
        let dir = tempfile::tempdir().expect("temp dir");
        let denied = dir.path().join("denied-sh");
        let allowed = dir.path().join("allowed-sh");
        fs::copy(&real, &denied).expect("copy the shell");
        fs::copy(&real, &allowed).expect("copy the shell");
        let (d, a) = (fs::metadata(&denied).unwrap(), fs::metadata(&allowed).unwrap());
        assert_ne!((d.dev(), d.ino()), (a.dev(), a.ino()), "the two copies must be different files");
        Self { _dir: dir, denied, allowed }
    }
}

/// Runs `shell -c 'exit 7'` with argv[0] `sh`, so a busybox copy runs its `sh` applet
/// whatever the file is called (dash and bash ignore argv[0]). Returns the spawn error,
/// which for a refused exec is the execve errno.
fn run_shell(mut cmd: Command) -> std::io::Result<ExitStatus> {
    cmd.arg0("sh").args(["-c", &format!("exit {EXIT_CODE}")]);
    // A freshly written executable can be briefly "busy" while a child forked by another
    // thread still holds the copy's write descriptor; that is not what is tested here.
    for _ in 0..50 {
        match cmd.status() {
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other,
        }
    }
    cmd.status()
}

fn in_cgroup(cg: &TestCgroup, program: &Path) -> Command {
    command_in(&cg.cg, program.to_str().expect("utf-8 temp path"), &[])
}

fn assert_denied(result: std::io::Result<ExitStatus>, what: &str) {
    match result {
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{what}: exec failed, but not with EPERM: {e}")
        }
        Ok(status) => panic!("{what}: exec was not refused, the program ran and exited with {status}"),
    }
}

fn assert_ran(result: std::io::Result<ExitStatus>, what: &str) {
    let status = result.unwrap_or_else(|e| panic!("{what}: exec failed: {e}"));
    assert_eq!(status.code(), Some(EXIT_CODE), "{what}: unexpected exit status {status}");
}

#[test]
fn exec_deny_is_scoped_to_the_sandbox_cgroup() {
    if !require("exec_deny_is_scoped_to_the_sandbox_cgroup", "bpf_lsm") {
        return;
    }
    let shells = Shells::new();
    let cg = TestCgroup::new("lsm-exec");
    let sandbox = Sandbox::watch(cg.id());
    sandbox.deny_exec(&shells.denied);

    assert_denied(run_shell(in_cgroup(&cg, &shells.denied)), "denied copy inside the sandbox cgroup");
    assert_ran(run_shell(in_cgroup(&cg, &shells.allowed)), "allowed copy inside the sandbox cgroup");
    assert_ran(run_shell(Command::new(&shells.denied)), "denied copy outside the sandbox cgroup");
}

#[test]
fn exec_deny_covers_child_cgroups_created_later() {
    if !require("exec_deny_covers_child_cgroups_created_later", "bpf_lsm") {
        return;
    }
    let shells = Shells::new();
    let cg = TestCgroup::new("lsm-child");
    let sandbox = Sandbox::watch(cg.id());
    sandbox.deny_exec(&shells.denied);
    // Made after the watch: the kernel's cgroup_mkdir program adds it to the sandbox.
    let inner = cg.child("inner");
    // Made after the watch too, but outside the sandbox: not watched.
    let sibling = TestCgroup::new("lsm-sibling");
    let in_inner = |p: &Path| command_in(&inner, p.to_str().expect("utf-8 temp path"), &[]);

    assert_denied(run_shell(in_inner(&shells.denied)), "denied copy in a child cgroup made after the watch");
    assert_ran(run_shell(in_inner(&shells.allowed)), "allowed copy in the child cgroup");
    assert_ran(run_shell(in_cgroup(&sibling, &shells.denied)), "denied copy in an unwatched sibling cgroup");
}

#[test]
fn exec_deny_ends_when_the_cgroup_is_unwatched() {
    if !require("exec_deny_ends_when_the_cgroup_is_unwatched", "bpf_lsm") {
        return;
    }
    let shells = Shells::new();
    let cg = TestCgroup::new("lsm-unwatch");
    let sandbox = Sandbox::watch(cg.id());
    sandbox.deny_exec(&shells.denied);
    assert_denied(run_shell(in_cgroup(&cg, &shells.denied)), "denied copy while the cgroup is watched");

    assert_eq!(sandbox.unwatch(), 1, "exactly the test cgroup was bound to the slot");
    assert_ran(run_shell(in_cgroup(&cg, &shells.denied)), "denied copy after the cgroup was unwatched");
}

/// A secret the node daemon issues for a task opens for its tool only, and only during the
/// task: the BPF LSM engine judges the issued file by identity, as any guarded secret.
#[test]
fn daemon_issued_secret_opens_only_for_its_tool() {
    if !require("daemon_issued_secret_opens_only_for_its_tool", "bpf_lsm") {
        return;
    }
    let mut d = warden_tests::daemon::TestDaemon::start("engine: bpf-lsm\n");
    let vault = d.dir.path().join("vault");
    fs::write(&vault, "TOKEN-issued-7c2").unwrap();
    let scope = format!(
        "version: 1\ntask: sec\nexec:\n  allow: [/bin/sh, /usr/bin/cat, /usr/bin/head, /usr/bin/sleep]\n\
         secrets:\n  - name: tok\n    from: file:{}\n    tools: [/usr/bin/cat]\n",
        vault.display()
    );
    let t = d.start_task("sec", &scope);
    let id = t["id"].as_str().unwrap();
    assert_eq!(t["engine"], "bpf-lsm");
    let secret = PathBuf::from(t["secrets"][0]["path"].as_str().unwrap());
    let o = d.exec(
        id,
        "/usr/bin/cat \"$WARDEN_SECRET_TOK\" && echo; \
         /usr/bin/head -c 64 \"$WARDEN_SECRET_TOK\" >/dev/null 2>&1 && echo head read || echo head refused",
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("TOKEN-issued-7c2"), "the tool could not read its secret: {out}\n{}", d.stderr());
    assert!(out.contains("head refused"), "another program read the secret: {out}");
    let denied =
        d.wait_record(id, Duration::from_secs(5), |r| r["decision"] == "deny" && r["exe"] == "/usr/bin/head");
    assert!(denied["path"].as_str().is_some_and(|p| p.ends_with("/tok")), "{denied}");

    // The pinned LSM engine keeps refusing while the daemon is down, and is re-adopted.
    let outdir = tempfile::tempdir().unwrap();
    let out = outdir.path().join("down.out");
    let script = format!(
        "/usr/bin/sleep 2; /usr/bin/head -c 64 \"$WARDEN_SECRET_TOK\" >/dev/null 2>&1 && echo read > {o} || echo refused > {o}",
        o = out.display()
    );
    let mut bg = d.command(&["task", "exec", id, "--", "/bin/sh", "-c", &script]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    d.kill9();
    assert!(bg.wait().unwrap().success());
    assert_eq!(fs::read_to_string(&out).unwrap().trim(), "refused", "read while the daemon was down");
    d.launch(&[]);
    let st = d.ready["startup"].clone();
    assert_eq!(
        st["adopted_links"].as_array().unwrap().len(),
        agent_user::loader::SCHED_PROGRAMS.len() + agent_user::loader::LSM_PROGRAMS.len(),
        "{st}"
    );
    assert!(st["adopted_tasks"].as_array().unwrap().iter().any(|t| t == id), "{st}");
    assert!(d.end(id).status.success());
    assert!(!secret.exists(), "the secret outlived the task");
}
