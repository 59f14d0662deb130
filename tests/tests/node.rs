//! Host tier: a hijacked task running as root reaching for the node — machine-wide calls,
//! sockets no egress hook sees, node files, and Warden's own evidence. Every attempt is real
//! and harmless when let through (see `warden-node-probe`), and each asserts the specific
//! refusal (EPERM from the filter, EACCES from the file rules), not merely a failure.
use std::{
    ffi::CString,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use warden_tests::{coverage, engine, probe_report, require, run_warden, warden_bin};

const NODE: &str = env!("CARGO_BIN_EXE_warden-node-probe");
const PROBE: &str = env!("CARGO_BIN_EXE_warden-probe");

/// The default scope of `examples/scope.yaml`: an exec allowlist, `files.write` omitted.
fn example_scope(task: &str) -> String {
    // Compiled in: the VM tier's guests have no source tree.
    let text = include_str!("../../examples/scope.yaml");
    text.replace("task: build-report", &format!("task: {task}"))
        .replace("/usr/bin/python3]", &format!("/usr/bin/python3, /usr/bin/sed, {NODE}, {PROBE}]"))
}

fn outcome(records: usize) -> &'static str {
    if records > 0 { "enforced" } else { "enforced (no record)" }
}

/// A read-only bind mount of a fresh directory, made by the test (outside any sandbox) and
/// unmounted on drop.
struct RoMount {
    target: PathBuf,
    _dir: tempfile::TempDir,
}

impl RoMount {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (src, target) = (dir.path().join("src"), dir.path().join("ro"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&target).unwrap();
        let ok = Command::new("mount").arg("--bind").arg(&src).arg(&target).status().unwrap().success()
            && Command::new("mount").args(["-o", "remount,bind,ro"]).arg(&target).status().unwrap().success();
        let m = RoMount { target, _dir: dir };
        assert!(ok, "test setup: read-only bind mount");
        assert!(m.read_only());
        m
    }

    fn read_only(&self) -> bool {
        nix::sys::statvfs::statvfs(&self.target)
            .unwrap()
            .flags()
            .contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).status();
    }
}

/// A `user` key in root's user keyring, unlinked on drop.
struct UserKey {
    id: i64,
    desc: String,
}

impl UserKey {
    fn add() -> Self {
        let desc = format!("warden-test-{}", std::process::id());
        let (ty, d, payload) =
            (CString::new("user").unwrap(), CString::new(desc.clone()).unwrap(), b"s3cr3t");
        // SAFETY: valid strings and payload; KEY_SPEC_USER_KEYRING is -4.
        let id = unsafe {
            libc::syscall(libc::SYS_add_key, ty.as_ptr(), d.as_ptr(), payload.as_ptr(), payload.len(), -4)
        };
        assert!(id > 0, "test setup: add_key: {}", std::io::Error::last_os_error());
        UserKey { id, desc }
    }
}

impl Drop for UserKey {
    fn drop(&mut self) {
        // SAFETY: KEYCTL_INVALIDATE (21) on the key this test added.
        unsafe { libc::syscall(libc::SYS_keyctl, 21, self.id) };
    }
}

#[test]
fn node_level_calls_are_refused() {
    if !require("node_level_calls_are_refused", "landlock") {
        return;
    }
    let ro = RoMount::new();
    let key = UserKey::add();
    let swap = tempfile::NamedTempFile::new().unwrap();
    swap.as_file().set_len(1 << 20).unwrap();
    let n = NODE;
    let script = format!(
        "{n} reboot
         {n} kexec-load
         {n} mount-setattr {ro}
         {n} fspick /
         {n} swapon {swap}
         {n} acct
         {n} settimeofday
         {n} clock-settime
         {n} syslog
         {n} sethostname
         {n} delete-module
         {n} perf-system
         {n} perf-pid $$
         {n} read-user-key {desc}
         {n} x32-getpid
         {n} reboot-i386; echo i386-status $?",
        ro = ro.target.display(),
        swap = swap.path().display(),
        desc = key.desc,
    );
    let out = run_warden(&example_scope("node-calls"), &script, &[]);
    let still_ro = ro.read_only();
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for op in [
        "reboot",
        "kexec-load",
        "mount-setattr",
        "fspick",
        "swapon",
        "acct",
        "settimeofday",
        "clock-settime",
        "syslog",
        "sethostname",
        "delete-module",
        "perf-system",
        "perf-pid",
        "read-user-key",
        "x32-getpid",
    ] {
        assert_eq!(
            out.result(op),
            "err 1",
            "{op}: refused with EPERM by the filter, not by the kernel's own checks"
        );
    }
    assert!(still_ro, "the read-only mount stays read-only");
    // An i386 call through int 0x80 is not judged by x86-64 numbers: the process is killed (SIGSYS).
    assert_eq!(out.result("i386-status"), "159", "{}", out.stdout);
    coverage("node calls", "syscall", "enforced (no record)");
}

#[test]
fn sockets_outside_the_egress_hooks_are_refused_unless_granted() {
    if !require("sockets_outside_the_egress_hooks_are_refused_unless_granted", "landlock") {
        return;
    }
    let n = NODE;
    let script = format!(
        "{n} raw-ping
         {n} icmp-dgram
         {n} packet
         {n} netlink-diag
         {n} vsock
         {n} tcp
         {n} udp
         {n} netlink-route
         /usr/bin/python3 -c 'import socket; socket.getaddrinfo(\"127.0.0.1\", 80, flags=socket.AI_ADDRCONFIG); print(\"getaddrinfo ok\")'
         /usr/sbin/ip addr show dev lo >/dev/null 2>&1; echo ip-addr $?"
    );
    // iproute2 is not in the VM tier's guests.
    let ip = Path::new("/usr/sbin/ip").exists();
    let out = run_warden("version: 1\ntask: sockets\n", &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for op in ["raw-ping", "icmp-dgram", "packet", "netlink-diag", "vsock"] {
        assert_eq!(out.result(op), "err 1", "{op}");
    }
    for op in ["tcp", "udp", "netlink-route", "getaddrinfo"] {
        assert_eq!(out.result(op), "ok", "{op}: ordinary sockets work");
    }
    if ip {
        assert_eq!(out.result("ip-addr"), "0", "`ip addr` works");
    }
    coverage("raw and packet sockets", "syscall", "enforced (no record)");

    // Each grant gives back its own class.
    let granted = "version: 1\ntask: sockets-granted\ngrant: [net-raw, net-packet, net-netlink, net-other]\n";
    let out = run_warden(granted, &format!("{n} raw-ping; {n} packet; {n} netlink-diag; {n} vsock"), &[]);
    for op in ["raw-ping", "packet", "netlink-diag"] {
        assert_eq!(out.result(op), "ok", "{op} granted: {}", out.stderr);
    }
    // A kernel without vsock answers EAFNOSUPPORT: the filter let the call through.
    let vsock = out.result("vsock");
    assert!(vsock == "ok" || vsock == "err 97", "vsock granted: {vsock}");
}

#[test]
fn node_files_are_protected_without_a_write_section() {
    if !require("node_files_are_protected_without_a_write_section", "landlock") {
        return;
    }
    // (No findmnt in the VM tier's guests, whose root is the initramfs: no disk there.)
    let root_dev = Command::new("findmnt").args(["-n", "-o", "SOURCE", "/"]).output();
    let root_dev =
        root_dev.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    let p = PROBE;
    // Opening for writing writes nothing: these opens are harmless when let through.
    let mut script = format!(
        "{p} write /sys/power/state | sed s/^write/sys-power/
         {p} write /proc/sys/kernel/hostname | sed s/^write/proc-sys/
         {p} write /dev/kmsg | sed s/^write/kmsg/
         {p} write /dev/null | sed s/^write/dev-null/
         {p} open /dev/urandom | sed s/^open/urandom/"
    );
    // Not every kernel has magic SysRq.
    let sysrq = Path::new("/proc/sysrq-trigger").exists();
    if sysrq {
        script.push_str(&format!("\n{p} write /proc/sysrq-trigger | sed s/^write/sysrq/"));
    }
    let disk = root_dev.starts_with("/dev/") && Path::new(&root_dev).exists();
    if disk {
        script.push_str(&format!("\n{p} open {root_dev} | sed s/^open/disk/"));
    }
    let out = run_warden(&example_scope("node-files"), &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for op in ["sys-power", "kmsg"] {
        assert_eq!(out.result(op), "err 13", "{op}");
    }
    // The task's own procfs has /proc/sys read-only (EROFS) before any file rule is asked.
    let proc_sys = out.result("proc-sys");
    assert!(proc_sys == "err 30" || proc_sys == "err 13", "proc-sys: {proc_sys}");
    if sysrq {
        // Likewise read-only in the task's procfs (EROFS), or refused by the file rules.
        let sysrq = out.result("sysrq");
        assert!(sysrq == "err 30" || sysrq == "err 13", "sysrq: {sysrq}");
    }
    if disk {
        assert_eq!(out.result("disk"), "err 13", "reading the root disk would bypass every file rule");
    }
    assert_eq!(out.result("dev-null"), "ok");
    assert_eq!(out.result("urandom"), "ok");
    let records = out.records_of("open", "deny").len() + out.records_of("file", "deny").len();
    if engine() == "bpf-lsm" {
        // /sys/power/state and /dev/kmsg at least; what the read-only procfs mounts refuse
        // (EROFS) never reaches a hook.
        assert!(records >= 2, "{:#?}", out.judged());
    }
    coverage("node files", "syscall", outcome(records));
}

/// Removes a file the task might have created if a protection failed.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[test]
fn the_nodes_own_files_are_protected_without_a_write_section() {
    let test = "the_nodes_own_files_are_protected_without_a_write_section";
    if !require(test, "landlock") {
        return;
    }
    let lsm = engine() == "bpf-lsm";
    let t = tempfile::tempdir().unwrap();
    let work = fs::canonicalize(t.path()).unwrap();
    fs::write(work.join("mine"), "x").unwrap();
    fs::create_dir(work.join("shared")).unwrap();
    let new_etc = RemoveOnDrop(PathBuf::from(format!("/etc/warden-test-{}", std::process::id())));
    // (The VM guest's root has no /var/tmp.)
    fs::create_dir_all("/var/tmp").unwrap();
    let new_tmp = RemoveOnDrop(PathBuf::from(format!("/var/tmp/warden-test-{}", std::process::id())));
    // A node program the scope does not allow (allowed ones are read-only binds on the
    // fallback engine, a different refusal), made by the test where the node's administrator
    // installs programs: not running (ETXTBSY would refuse a write first — in the VM guest
    // every program is busybox), and its own mode, which re-applying changes nothing.
    fs::create_dir_all("/usr/local/bin").unwrap();
    let prog = RemoveOnDrop(PathBuf::from(format!("/usr/local/bin/warden-test-prog-{}", std::process::id())));
    fs::write(&prog.0, "#!/bin/sh\necho node program\n").unwrap();
    fs::set_permissions(&prog.0, fs::Permissions::from_mode(0o755)).unwrap();
    let env = fs::canonicalize(&prog.0).unwrap();
    let mode = fs::metadata(&env).unwrap().permissions().mode() & 0o7777;
    // The link is made on the node program's filesystem (else EXDEV for another reason):
    // in the task's work directory, or the node's temporary one.
    let env_dev = fs::metadata(&prog.0).unwrap().dev();
    let link_dir = [work.clone(), PathBuf::from("/var/tmp")]
        .into_iter()
        .find(|d| fs::metadata(d).is_ok_and(|m| m.dev() == env_dev))
        .expect("a writable directory on /usr/local/bin's filesystem");
    let link = RemoveOnDrop(link_dir.join(format!("warden-test-env-link-{}", std::process::id())));
    let p = PROBE;
    // Every attempt is harmless when let through: opening for writing writes nothing, the
    // new names are removed on drop, the mode is the one the file has.
    let script = format!(
        "{p} write /etc/passwd | sed s/^write/etc-passwd/
         {p} write {env} | sed s/^write/node-program/
         {p} write {etc} | sed s/^write/etc-new/
         {p} link {env} {link} | sed s/^link/link-out/
         {p} chmod {env} {mode:o} | sed s/^chmod/chmod-node/
         {p} chmod {w}/mine 4755 | sed s/^chmod/setuid-own/
         {p} chmod {w}/shared 2775 | sed s/^chmod/setgid-dir-own/
         {p} write {w}/mine | sed s/^write/own-file/
         {p} write {tmp} | sed s/^write/var-tmp/
         {p} open /etc/passwd | sed s/^open/read-passwd/",
        env = env.display(),
        etc = new_etc.0.display(),
        tmp = new_tmp.0.display(),
        link = link.0.display(),
        w = work.display(),
    );
    let out = run_warden(&example_scope("node-own-files"), &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for op in ["etc-passwd", "node-program", "etc-new"] {
        assert_eq!(out.result(op), "err 13", "{op}\n{}", out.stdout);
    }
    // A new name for a node program (same filesystem: a hard link, then writes through it):
    // Landlock refuses a link it may not make with EXDEV (its refer rule), BPF LSM with EACCES.
    assert_eq!(out.result("link-out"), if lsm { "err 13" } else { "err 18" }, "link-out\n{}", out.stdout);
    assert!(!new_etc.0.exists() && !link.0.exists());
    // Making a file setuid: refused by seccomp on both engines (EPERM).
    assert_eq!(out.result("setuid-own"), "err 1");
    // The permissions of a node file: refused at `path_chmod` under BPF LSM; the fallback
    // engine has no hook for it (Landlock has no right for it), only the setuid bit is
    // refused there (docs/containment.md).
    assert_eq!(out.result("chmod-node"), if lsm { "err 13" } else { "ok" });
    // Ordinary work: the task's own files, the node's temporary directory, reading the node.
    // A group's shared directory (setgid) is ordinary work too.
    for op in ["own-file", "var-tmp", "read-passwd", "setgid-dir-own"] {
        assert_eq!(out.result(op), "ok", "{op}\n{}", out.stdout);
    }
    // Each refusal on the record, named by the rule a responder can look up.
    let denies: Vec<&serde_json::Value> = out.records.iter().filter(|r| r["decision"] == "deny").collect();
    let system = |f: &dyn Fn(&str) -> bool| {
        denies.iter().any(|r| r["rule"] == "protected.system" && r["path"].as_str().is_some_and(f))
    };
    let env_s = env.display().to_string();
    let env_dir = env.parent().unwrap().display().to_string();
    assert!(system(&|p| p == "/etc/passwd"), "etc-passwd: {denies:#?}");
    assert!(system(&|p| p == env_s), "node-program: {denies:#?}");
    assert!(system(&|p| p.starts_with("/etc") && p != "/etc/passwd"), "etc-new: {denies:#?}");
    assert!(system(&|p| p == env_dir || p == env_s), "link-out: {denies:#?}");
    if lsm {
        assert!(
            denies.iter().any(|r| r["rule"] == "protected.system" && r["kind"] == "file" && r["arg"] == 10),
            "chmod-node: {denies:#?}"
        );
    }
    // Seccomp's refusals reach the record through the kernel's audit (where it has one).
    if probe_report().features.iter().any(|f| f.name == "kernel_audit" && f.available) {
        assert!(
            denies.iter().any(|r| r["rule"] == "protected.setid" && r["syscall"] == "chmod"),
            "setuid-own: {denies:#?}"
        );
    }
    assert!(
        !denies.iter().any(|r| r["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(work.to_str().unwrap()) && !p.contains("warden-test-env-link"))),
        "the task's own files were refused: {denies:#?}"
    );
    coverage("node's own files", "syscall", outcome(denies.len()));
}

/// Runs `warden run` with the key and log at the given places.
fn run_with(scope: &str, key: &Path, log: &Path, script: &str) -> std::process::Output {
    let dir = log.parent().unwrap();
    let sp = dir.join(format!("scope-{}.yaml", std::process::id()));
    fs::write(&sp, scope).unwrap();
    Command::new(warden_bin())
        .arg("run")
        .arg("--key")
        .arg(key)
        .arg("--scope")
        .arg(&sp)
        .arg("--log")
        .arg(log)
        .args(["--", "/bin/sh", "-c", script])
        .env("WARDEN_SOCKET", dir.join("no-daemon.sock"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn evidence_is_out_of_the_tasks_reach() {
    if !require("evidence_is_out_of_the_tasks_reach", "landlock") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = fs::canonicalize(t.path()).unwrap();
    let (key, log) = (d.join("node.key"), d.join("events.jsonl"));
    let stolen = format!("/tmp/warden-stolen-key-{}", std::process::id());
    let (k, l) = (key.display(), log.display());
    let p = PROBE;
    // The forgery of the issue needs the key: every way of reading it, and every way of
    // rewriting the log, from a task with the example scope.
    let script = format!(
        "{p} open {k} | sed s/^open/key/
         {p} open /proc/self/root{k} | sed s/^open/key-procroot/
         {p} opath-reopen {k} | sed s/^opath-reopen/key-opath/
         /usr/bin/cat {k} > {stolen} 2>/dev/null; echo key-cat $?
         {p} write {l} | sed s/^write/log-write/
         {p} open {l} | sed s/^open/log-read/
         /usr/bin/python3 -c 'open(\"{l}\", \"w\")' 2>/dev/null; echo log-truncate $?
         /usr/bin/rm -f {l}; echo log-remove $?"
    );
    let out = run_with(&example_scope("evidence"), &key, &log, &script);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stolen_bytes = fs::read(&stolen).unwrap_or_default();
    let _ = fs::remove_file(&stolen);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result = |name: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or_default().to_string()
    };
    for op in ["key", "key-procroot", "key-opath", "log-write", "log-read"] {
        assert_eq!(result(op), "err 13", "{op}\n{stdout}");
    }
    for op in ["key-cat", "log-truncate", "log-remove"] {
        assert_ne!(result(op), "0", "{op}\n{stdout}");
    }
    assert!(stolen_bytes.is_empty(), "no byte of the key left the sandbox");
    // The log is whole: it verifies, and it still starts with the task's first record.
    let verify = Command::new(warden_bin()).arg("verify").arg(&log).output().unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", String::from_utf8_lossy(&verify.stdout));
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.lines().next().is_some_and(|l| l.contains("\"task_start\"")), "{text}");
    let denied = text.lines().filter(|l| l.contains("\"decision\":\"deny\"")).count();
    if engine() == "bpf-lsm" {
        assert!(denied >= 5, "each refusal is recorded:\n{text}");
    }
    coverage("evidence files", "syscall", outcome(denied));
}

/// The supervisor's own executable (the real `warden` running the task): a task with no
/// `files` section may neither move it away nor put a file of its own beside it (to rename
/// over it), so the next `warden` the user starts is still Warden. Both engines, recorded.
#[test]
fn the_supervisors_executable_is_out_of_the_tasks_reach() {
    if !require("the_supervisors_executable_is_out_of_the_tasks_reach", "landlock") {
        return;
    }
    let exe = fs::canonicalize(warden_bin()).unwrap();
    let moved = PathBuf::from(format!("{}.moved-{}", exe.display(), std::process::id()));
    let beside = RemoveOnDrop(exe.with_file_name(format!("warden-test-beside-{}", std::process::id())));
    /// Puts the executable back if the protection failed.
    struct MoveBack(PathBuf, PathBuf);
    impl Drop for MoveBack {
        fn drop(&mut self) {
            if self.1.exists() {
                let _ = fs::rename(&self.1, &self.0);
            }
        }
    }
    let _back = MoveBack(exe.clone(), moved.clone());
    let p = PROBE;
    let script = format!(
        "{p} rename {e} {m} | sed s/^rename/move-away/
         {p} write {b} | sed s/^write/beside/",
        e = exe.display(),
        m = moved.display(),
        b = beside.0.display()
    );
    let out = run_warden("version: 1\ntask: supervisor-exe\n", &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for op in ["move-away", "beside"] {
        assert_eq!(out.result(op), "err 13", "{op}\n{}", out.stdout);
    }
    assert!(exe.exists() && !moved.exists() && !beside.0.exists());
    let dir = exe.parent().unwrap().display().to_string();
    let denies: Vec<_> = out
        .records
        .iter()
        .filter(|r| {
            r["decision"] == "deny"
                && ["protected.control", "protected.system"].contains(&r["rule"].as_str().unwrap_or(""))
                && r["path"].as_str().is_some_and(|p| p.starts_with(&dir))
        })
        .collect();
    assert!(!denies.is_empty(), "{:#?}", out.judged());
    coverage("evidence files", "syscall", outcome(denies.len()));
}

/// `--log` directly in `/tmp` with `files.write` omitted: protecting the log refuses every new
/// name in `/tmp` (Landlock cannot grant a directory but one of its files), so the person at
/// the terminal is told at start, and the refusal of `mktemp` there is on the record; the log
/// itself stays out of reach and verifies.
#[test]
fn a_log_directly_in_a_shared_temp_dir_is_announced() {
    if !require("a_log_directly_in_a_shared_temp_dir_is_announced", "landlock") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let log = RemoveOnDrop(PathBuf::from(format!("/tmp/warden-test-log-{}.jsonl", std::process::id())));
    let sp = t.path().join("scope.yaml");
    fs::write(&sp, "version: 1\ntask: log-in-tmp\n").unwrap();
    // A directory of the task's own (the key's, `t`, is protected like the log's).
    let own = t.path().join("own");
    fs::create_dir(&own).unwrap();
    // mktemp last: a refused create followed within a millisecond by a refused write to a
    // file of the same directory is one record (docs/events.md: the kernel names no process),
    // and this test is about the refused create being on the record.
    let script = format!(
        "{p} write {l} | sed s/^write/log-write/
         {p} write {d}/mine | sed s/^write/own-dir/
         /usr/bin/mktemp /tmp/warden-test-mk.XXXXXX >/dev/null 2>&1; echo mktemp $?",
        p = PROBE,
        l = log.0.display(),
        d = own.display()
    );
    let out = Command::new(warden_bin())
        .arg("run")
        .arg("--key")
        .arg(t.path().join("node.key"))
        .arg("--scope")
        .arg(&sp)
        .arg("--log")
        .arg(&log.0)
        .args(["--", "/bin/sh", "-c", &script])
        .env("WARDEN_SOCKET", t.path().join("no-daemon.sock"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("--log {} is directly in /tmp", log.0.display()))
            && stderr.contains("/var/log/warden"),
        "the terminal is told:\n{stderr}"
    );
    let result = |name: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap_or("").to_string()
    };
    assert_eq!(result("mktemp"), "1", "{stdout}");
    assert_eq!(result("log-write"), "err 13", "{stdout}");
    assert_eq!(result("own-dir"), "ok", "{stdout}");
    let verify = Command::new(warden_bin()).arg("verify").arg(&log.0).output().unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", String::from_utf8_lossy(&verify.stdout));
    let text = fs::read_to_string(&log.0).unwrap();
    let denied_tmp =
        text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|r| {
            r["decision"] == "deny"
                && r["path"].as_str().is_some_and(|p| p == "/tmp" || p.starts_with("/tmp/warden-test-mk."))
        });
    assert!(denied_tmp, "the refused mktemp is on the record:\n{text}");
    for e in fs::read_dir("/tmp").unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("warden-test-mk.") {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[test]
fn a_log_inside_a_write_grant_is_refused_at_start() {
    if !require("a_log_inside_a_write_grant_is_refused_at_start", "root") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = fs::canonicalize(t.path()).unwrap();
    let out_dir = d.join("out");
    fs::create_dir_all(&out_dir).unwrap();
    let scope = format!("version: 1\ntask: log-in-grant\nfiles:\n  write: [{}]\n", out_dir.display());
    let marker = d.join("ran");
    let out = run_with(
        &scope,
        &d.join("node.key"),
        &out_dir.join("events.jsonl"),
        &format!("touch {}", marker.display()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--log") && stderr.contains("files.write"), "{stderr}");
    assert!(!marker.exists(), "nothing started");
    assert!(!out_dir.join("events.jsonl").exists(), "nothing written");
}

#[test]
fn records_name_the_kernels_executable_and_the_invoked_path() {
    if !require("records_name_the_kernels_executable_and_the_invoked_path", "tp_btf") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = fs::canonicalize(t.path()).unwrap();
    fs::create_dir_all(d.join("bin")).unwrap();
    // An allowed interpreter under a tool's name, and a refused program under an allowed one's.
    std::os::unix::fs::symlink("/usr/bin/python3", d.join("bin/git")).unwrap();
    std::os::unix::fs::symlink("/usr/bin/ls", d.join("bin/cat")).unwrap();
    let python = fs::canonicalize("/usr/bin/python3").unwrap();
    let ls = fs::canonicalize("/usr/bin/ls").unwrap();
    let scope = "version: 1\ntask: exe-names\nexec:\n  allow: [/bin/sh, /usr/bin/python3]\n";
    let b = d.join("bin");
    let script = format!("{b}/git -c 'print(1)' >/dev/null; {b}/cat /dev/null; true", b = b.display());
    let out = run_warden(scope, &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let git = format!("{}/git", b.display());
    let rec = out
        .records
        .iter()
        .find(|r| r["kind"] == "exec" && r["path"] == git.as_str())
        .unwrap_or_else(|| panic!("no exec of {git}: {:#?}", out.records));
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["exe"].as_str(), python.to_str(), "the kernel's executable, symlinks resolved: {rec}");
    let cat = format!("{}/cat", b.display());
    let denied = out
        .records_of("exec", "deny")
        .into_iter()
        .find(|r| r["path"] == cat.as_str())
        .unwrap_or_else(|| panic!("no deny of {cat}: {:#?}", out.judged()));
    assert_eq!(denied["exe"].as_str(), ls.to_str(), "{denied}");
}

/// A unix stream listener and a datagram socket bound under `dir`, served from this (unconfined)
/// test process: each accepted connection is greeted and closed.
fn unix_servers(dir: &Path) -> (PathBuf, PathBuf) {
    let (stream, dgram) = (dir.join("server.sock"), dir.join("dgram.sock"));
    let l = std::os::unix::net::UnixListener::bind(&stream).unwrap();
    let _d = std::os::unix::net::UnixDatagram::bind(&dgram).unwrap();
    std::thread::spawn(move || {
        let _keep = _d;
        for c in l.incoming().flatten() {
            use std::io::Write;
            let mut c = c;
            let _ = c.write_all(b"hi\n");
        }
    });
    (stream, dgram)
}

/// A node service's control socket (here a real listener in `/run/k3s`, where a container
/// runtime keeps one): a root client of it starts processes outside every sandbox. A task
/// with no `files` section is refused a connect and a datagram (both engines: by the
/// socket's file under BPF LSM, by its name on the fallback), on the record; with `grant:
/// [node-services]` both work.
#[test]
fn node_service_sockets_are_out_of_reach_unless_granted() {
    let test = "node_service_sockets_are_out_of_reach_unless_granted";
    if !require(test, "landlock") {
        return;
    }
    let dir = PathBuf::from("/run/k3s");
    if dir.exists() {
        println!("SKIP {test}: /run/k3s exists on this node (a real service's: not touched)");
        return;
    }
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fs::create_dir_all(&dir).unwrap();
    let _rm = RemoveDir(dir.clone());
    let (stream, dgram) = unix_servers(&dir);
    let n = NODE;
    let script = format!(
        "{n} unix-connect {s} | sed s/^unix-connect/service/
         {n} unix-send {d} | sed s/^unix-send/service-dgram/",
        s = stream.display(),
        d = dgram.display()
    );
    let out = run_warden("version: 1\ntask: services\n", &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for op in ["service", "service-dgram"] {
        assert_eq!(out.result(op), "err 13", "{op}: {}", out.stdout);
    }
    let records = out.records_of("unix_connect", "deny");
    assert!(
        records.iter().any(|r| r["path"] == stream.to_str().unwrap() && r["rule"] == "files.deny"),
        "{:#?}",
        out.judged()
    );
    assert_eq!(records.len(), 2, "{:#?}", out.judged());
    let out = run_warden("version: 1\ntask: services\ngrant: [node-services]\n", &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for op in ["service", "service-dgram"] {
        assert_eq!(out.result(op), "ok", "granted, {op}: {}", out.stdout);
    }
    coverage("node service sockets", "syscall", outcome(records.len()));
}

#[test]
fn unix_socket_connects_are_judged_like_files() {
    if !require("unix_socket_connects_are_judged_like_files", "landlock") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = fs::canonicalize(t.path()).unwrap();
    let (denied, allowed, outside) = (d.join("denied"), d.join("allowed"), d.join("outside"));
    for p in [&denied, &allowed, &outside] {
        fs::create_dir_all(p).unwrap();
    }
    let (ds, dd) = unix_servers(&denied);
    let (a_s, a_d) = unix_servers(&allowed);
    let (os_, _) = unix_servers(&outside);
    let probe_dir = Path::new(NODE).parent().unwrap().display().to_string();
    let scope = format!(
        "version: 1\ntask: unix\nfiles:\n  read: [/usr, /lib, /lib64, /etc, /bin, /dev, /proc, {probe_dir}, {d}/denied, {d}/allowed]\n  deny: [{d}/denied]\n",
        d = d.display()
    );
    let n = NODE;
    let script = format!(
        "{n} unix-connect {as_} | sed s/^unix-connect/allowed/
         {n} unix-send {ad} | sed s/^unix-send/allowed-dgram/
         {n} unix-connect {ds} | sed s/^unix-connect/denied/
         {n} unix-send {dd} | sed s/^unix-send/denied-dgram/
         {n} unix-connect {os} | sed s/^unix-connect/outside-read/",
        as_ = a_s.display(),
        ad = a_d.display(),
        ds = ds.display(),
        dd = dd.display(),
        os = os_.display()
    );
    let out = run_warden(&scope, &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.result("allowed"), "ok", "a connect the scope allows works");
    assert_eq!(out.result("allowed-dgram"), "ok");
    let records = out.records_of("unix_connect", "deny");
    // Both engines: BPF LSM judges the socket's file, the fallback's cgroup unix programs its
    // name (tests/tests/unix.rs covers the ways of naming it).
    for op in ["denied", "denied-dgram", "outside-read"] {
        assert_eq!(out.result(op), "err 13", "{op}: {}", out.stdout);
    }
    assert_eq!(records.len(), 3, "{:#?}", out.judged());
    assert!(records.iter().any(|r| r["path"] == ds.to_str().unwrap() && r["rule"] == "files.deny"));
    assert!(records.iter().any(|r| r["path"] == os_.to_str().unwrap() && r["rule"] == "files.read"));
    coverage("unix socket connect", "syscall", "enforced");
}

/// A hijacked task of the node daemon (no `files` section: everything readable and writable
/// but what Warden protects) reaches for the daemon's own files and another task's secret. The
/// task is root without capabilities, and every target is root's own file: nothing but
/// Warden's rules stands between the task and them (the test reads each one itself first).
#[test]
fn the_daemons_files_and_other_tasks_secrets_are_out_of_reach() {
    if !require("the_daemons_files_and_other_tasks_secrets_are_out_of_reach", "root") {
        return;
    }
    let d = warden_tests::daemon::TestDaemon::start("");
    let vault = d.dir.path().join("vault-a");
    fs::write(&vault, "TOKEN-of-task-a-41d").unwrap();
    let cat = fs::canonicalize("/bin/cat").unwrap();
    let a = d.start_task(
        "owner",
        &format!(
            "version: 1\ntask: owner\nsecrets:\n  - name: tok\n    from: file:{}\n    tools: [{}]\n",
            vault.display(),
            cat.display()
        ),
    );
    let a_id = a["id"].as_str().unwrap().to_string();
    let a_secret = PathBuf::from(a["secrets"][0]["path"].as_str().unwrap());
    let b = d.start_task("intruder", "version: 1\ntask: intruder\n");
    let b_id = b["id"].as_str().unwrap().to_string();

    let key = d.dir.path().join("node.key");
    let state = d.dir.path().join("state");
    let reads = [("key", &key), ("log", &d.log), ("secret", &a_secret), ("source", &vault)];
    for (what, p) in reads {
        assert!(fs::read(p).is_ok_and(|b| !b.is_empty()), "{what} {} must exist for the test", p.display());
    }
    let mut script = String::new();
    for (what, p) in reads {
        script.push_str(&format!(
            "e=$(cat {} 2>&1 >/dev/null) && echo 'REACHED read {what}' || echo \"$e\"; ",
            p.display()
        ));
    }
    script.push_str(&format!(
        "e=$(touch {s}/planted 2>&1) && echo 'REACHED planted state' || echo \"$e\"; \
         e=$( (echo forged >> {log}) 2>&1) && echo 'REACHED appended log' || echo \"$e\"; \
         e=$(touch {dir}/beside-log 2>&1) && echo 'REACHED created beside log' || echo \"$e\"",
        s = state.display(),
        log = d.log.display(),
        dir = d.dir.path().display(),
    ));
    let o = d.exec(&b_id, &script);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(!out.contains("REACHED"), "the task reached Warden's files:\n{out}");
    // Each one refused by Warden's rules (EACCES), not missing.
    // (Names stay listable on the fallback engine: its read roots grant listing directories,
    // and carving that would refuse `ls` of every parent of a protected file.)
    assert_eq!(out.matches("Permission denied").count(), 7, "{out}");
    assert!(!state.join("planted").exists() && !d.dir.path().join("beside-log").exists());
    // The owner's tool still reads the owner's secret: the secrets directory is carved for
    // every task but each task's own secrets are granted back.
    let o = d.exec(&a_id, &format!("{} \"$WARDEN_SECRET_TOK\"", cat.display()));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "TOKEN-of-task-a-41d", "{}", d.stderr());
    // Each refusal is on the intruder's record (Landlock's records carry no path on this
    // kernel's fallback engine; the BPF LSM engine names each file).
    let denied = d.wait_record(&b_id, std::time::Duration::from_secs(5), |r| r["decision"] == "deny");
    if engine() == "bpf-lsm" {
        assert!(denied["path"].is_string(), "{denied}");
    }
    coverage("daemon files and other tasks' secrets", "syscall", "enforced");
    assert!(d.end(&b_id).status.success() && d.end(&a_id).status.success());
}
