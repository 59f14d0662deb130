//! Host tier: every refusal is on the record. Each attempt below is refused by the kernel
//! (Landlock, seccomp, the pids controller on the fallback engine) and must leave exactly one
//! `deny` record naming what was refused and by which rule — so each attempt has its own
//! target (its own file, its own process) and the records are matched to attempts by it.
use std::{
    fs,
    os::unix::{fs::symlink, process::CommandExt},
    path::Path,
    process::{Child, Command},
};

use serde_json::Value;
use warden_tests::{RunOutcome, coverage, engine, require, run_warden};

const PROBE: &str = env!("CARGO_BIN_EXE_warden-probe");

/// A process outside every sandbox for the task to aim at, killed on drop.
struct Outside(Child);

impl Outside {
    fn sleep() -> Self {
        Outside(Command::new("sleep").arg("120").process_group(0).spawn().expect("spawn sleep"))
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn denies(out: &RunOutcome) -> Vec<&Value> {
    out.records_of_decision("deny")
}

trait Denies {
    fn records_of_decision(&self, d: &str) -> Vec<&Value>;
}

impl Denies for RunOutcome {
    fn records_of_decision(&self, d: &str) -> Vec<&Value> {
        self.records.iter().filter(|r| r["decision"] == d).collect()
    }
}

/// Exactly one deny record satisfies `f`; returns it.
fn one<'a>(out: &'a RunOutcome, what: &str, f: impl Fn(&Value) -> bool) -> &'a Value {
    let m: Vec<&Value> = denies(out).into_iter().filter(|r| f(r)).collect();
    assert_eq!(
        m.len(),
        1,
        "{what}: exactly one deny record, got {}: {m:#?}\nall: {:#?}",
        m.len(),
        denies(out)
    );
    m[0]
}

fn refused(out: &RunOutcome, name: &str) {
    let r = out.result(name);
    assert!(r.starts_with("err"), "{name} must be refused: {r}\n{}", out.stdout);
}

#[test]
fn every_refusal_of_files_signals_and_syscalls_is_one_deny_record() {
    let test = "every_refusal_of_files_signals_and_syscalls_is_one_deny_record";
    if !require(test, "landlock") || !require(test, "kernel_audit") {
        return;
    }
    if engine() != "fallback" {
        println!("SKIP {test}: the BPF LSM engine records these at its hooks (tests/tests/scope.rs, lsm.rs)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = fs::canonicalize(t.path()).unwrap();
    let secret = d.join("secret");
    for sub in ["l", "r"] {
        fs::create_dir_all(secret.join(sub)).unwrap();
        fs::write(secret.join(sub).join("key"), "k").unwrap();
    }
    let names = ["plain", "sym", "procroot", "opath", "openat2", "uring", "uring2"];
    for n in names.iter().chain(&["handle"]) {
        fs::write(secret.join(format!("key-{n}")), "k").unwrap();
    }
    fs::create_dir_all(d.join("out")).unwrap();
    fs::create_dir_all(d.join("ro")).unwrap();
    symlink(secret.join("key-sym"), d.join("link-sym")).unwrap();
    let e = Outside::sleep();
    let abs_name = format!("warden-refusals-{}", std::process::id());
    let abs = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs_name.as_bytes()).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).unwrap()
    };
    let cg = agent_user::sandbox::cgroup2_mount().unwrap();
    let (dp, sp, p) = (d.display(), secret.display(), PROBE);
    let scope = format!(
        "version: 1\ntask: refusals\nfiles:\n  write: [{dp}/out]\n  deny: [{sp}]\ngrant: [io-uring]\n"
    );
    let script = format!(
        "{p} open {sp}/key-plain
         {p} open {dp}/link-sym | sed s/^open/symlink/
         {p} open /proc/self/root{sp}/key-procroot | sed s/^open/procroot/
         {p} opath-reopen {sp}/key-opath
         {p} openat2 {sp}/key-openat2
         {p} uring-open {sp}/key-uring
         {p} uring-openat2 {sp}/key-uring2
         {p} open-by-handle {sp}/key-handle
         {p} link {sp}/l/key {dp}/out/stolen-l
         {p} rename {sp}/r/key {dp}/out/stolen-r
         {p} write {dp}/ro/new.txt
         {p} write {cg}/cgroup.procs | sed s/^write/cgroup-escape/
         {p} kill 1 | sed s/^kill/kill-init/
         {p} kill 1 19 | sed s/^kill/stop-init/
         {p} pidfd-kill 1
         {p} sigio 1
         {p} kill {e} | sed s/^kill/kill-outside/
         {p} ptrace {e}
         {p} bpf
         {p} abstract-connect {abs_name}
         true",
        cg = cg.display(),
        e = e.pid(),
    );
    let out = run_warden(&scope, &script, &[]);
    drop(abs);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for name in [
        "open",
        "symlink",
        "procroot",
        "opath-reopen",
        "openat2",
        "uring-open",
        "uring-openat2",
        "open-by-handle",
        "link",
        "rename",
        "write",
        "cgroup-escape",
        "kill-init",
        "stop-init",
        "pidfd-kill",
        "ptrace",
        "bpf",
        "abstract-connect",
    ] {
        refused(&out, name);
    }
    assert_eq!(out.result("sigio"), "ok", "the SIGIO request itself succeeds; its delivery is refused");
    drop(e);
    let start = &out.records[0];
    assert!(start.get("unrecorded").is_none(), "this kernel records every class: {start}");

    // Reads of the denied files, by every way of opening them.
    for n in names {
        let path = format!("{sp}/key-{n}");
        let r = one(&out, &format!("read key-{n}"), |r| r["path"] == path.as_str());
        assert_eq!((r["kind"].as_str(), r["rule"].as_str()), (Some("open"), Some("files.deny")), "{r}");
        assert_eq!(r["action"], "refuse");
        assert_eq!(r["source"], "landlock");
    }
    // open_by_handle_at opens without a path: seccomp refuses the call itself.
    let r = one(&out, "open_by_handle_at", |r| r["syscall"] == "open_by_handle_at");
    assert_eq!((r["source"].as_str(), r["action"].as_str()), (Some("seccomp"), Some("refuse")), "{r}");
    // A hard link and a rename out of the denied directory: one record each, on its directory.
    for sub in ["l", "r"] {
        let path = format!("{sp}/{sub}");
        let r = one(&out, &format!("link/rename from {sub}"), |r| r["path"] == path.as_str());
        assert_eq!((r["kind"].as_str(), r["rule"].as_str()), (Some("file"), Some("files.deny")), "{r}");
    }
    let ro = format!("{dp}/ro");
    let r = one(&out, "write outside files.write", |r| r["path"] == ro.as_str());
    assert_eq!((r["kind"].as_str(), r["rule"].as_str()), (Some("file"), Some("files.write")), "{r}");
    let procs = format!("{}/cgroup.procs", cg.display());
    let r = one(&out, "cgroup escape", |r| r["path"] == procs.as_str());
    assert_eq!(r["rule"], "protected.control", "{r}");
    // Signals to the task's PID namespace's init (Warden's, outside the Landlock domain): by
    // kill (signal 0 and SIGSTOP), pidfd and SIGIO, each refused and recorded once. A process
    // outside the namespace is not even visible (ESRCH): nothing was refused, nothing recorded.
    assert_eq!(out.result("kill-outside"), "err 3");
    let signals: Vec<&Value> = denies(&out).into_iter().filter(|r| r["kind"] == "signal").collect();
    assert_eq!(signals.len(), 4, "{signals:#?}");
    assert!(signals.iter().all(|r| r["rule"] == "protected.process" && r["target_pid"].is_u64()));
    let r = one(&out, "ptrace", |r| r["kind"] == "ptrace");
    assert_eq!((r["rule"].as_str(), r["source"].as_str()), (Some("protected.process"), Some("seccomp")));
    assert!(r["pid"].as_u64().is_some() && r["ancestry"].as_array().is_some_and(|a| !a.is_empty()), "{r}");
    let r = one(&out, "bpf", |r| r["kind"] == "bpf");
    assert_eq!((r["rule"].as_str(), r["syscall"].as_str()), (Some("protected.bpf"), Some("bpf")));
    one(&out, "abstract unix socket", |r| r["kind"] == "unix");
    // Nothing else was refused, and nothing twice.
    assert_eq!(denies(&out).len(), names.len() + 1 + 2 + 1 + 1 + 4 + 3, "{:#?}", denies(&out));
    // The person at the terminal is told.
    assert!(
        out.stderr.contains(&format!("warden: {} actions were refused", denies(&out).len())),
        "{}",
        out.stderr
    );
}

#[test]
fn refused_syscalls_mounts_foreign_abis_and_forks_are_recorded() {
    let test = "refused_syscalls_mounts_foreign_abis_and_forks_are_recorded";
    if !require(test, "tp_btf") || !require(test, "kernel_audit") {
        return;
    }
    let p = PROBE;
    let script = format!(
        "{p} uring-open /etc/hostname
         {p} mount
         {p} userns-mount
         {p} int80; echo int80 $?
         {p} fork 10"
    );
    let out = run_warden("version: 1\ntask: syscalls\nlimits:\n  processes: 4\n", &script, &[]);
    assert_eq!(out.code, Some(1), "the probe reports the refused forks: {}\n{}", out.stdout, out.stderr);
    for name in ["uring-open", "mount", "userns-mount", "fork"] {
        refused(&out, name);
    }
    assert_eq!(out.result("int80"), "159", "killed by SIGSYS (128+31)");
    assert_eq!(out.result("forked"), "2");
    let r = one(&out, "io_uring", |r| r["syscall"] == "io_uring_setup");
    assert_eq!(r["rule"], "protected.io_uring");
    let mounts = denies(&out).into_iter().filter(|r| r["kind"] == "mount").count();
    if engine() == "fallback" {
        assert_eq!(mounts, 1, "mount: {:#?}", denies(&out));
    } else {
        assert!(mounts >= 1, "{:#?}", denies(&out));
    }
    // The mount in a user namespace stops at the namespace (both engines: seccomp).
    let r = one(&out, "user namespace", |r| r["syscall"] == "unshare");
    assert_eq!(r["rule"], "protected.userns");
    let r = one(&out, "int 0x80", |r| r["syscall"] == "i386:20");
    assert_eq!((r["action"].as_str(), r["rule"].as_str()), (Some("kill"), Some("protected.syscalls")));
    assert!(r["pid"].as_u64().is_some(), "{r}");
    let forks: Vec<&Value> = denies(&out).into_iter().filter(|r| r["kind"] == "fork").collect();
    assert_eq!(forks.len(), 8, "10 forks, 2 allowed: {forks:#?}");
    assert!(forks.iter().all(|r| r["rule"] == "limits.processes" && r["source"] == "pids"));
    let end = out.records.iter().find(|r| r["kind"] == "task_end").unwrap();
    assert_eq!(end["denials"].as_u64(), Some(denies(&out).len() as u64), "{end}");
}

/// An allowed program outside every write grant is guarded by Landlock, not by a read-only
/// mount (which refuses first and leaves no record): a write to it is refused and recorded,
/// the program still runs unchanged, and ordinary work beside it — a build that writes and
/// runs its own program in an `exec.allow` directory, python, shell tools — is not refused.
/// Running a copy in the `noexec` write root is refused unrecorded, and the task's start
/// record says that class is unrecorded.
#[test]
fn a_write_to_an_allowed_program_is_refused_on_the_record() {
    let test = "a_write_to_an_allowed_program_is_refused_on_the_record";
    if !require(test, "landlock") || !require(test, "kernel_audit") {
        return;
    }
    if engine() != "fallback" {
        println!("SKIP {test}: under BPF LSM every allowed program is bound read-only (EROFS, unrecorded)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = fs::canonicalize(t.path()).unwrap();
    for sub in ["bin", "out/build"] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    let tool = d.join("bin/tool");
    fs::copy("/usr/bin/true", &tool).unwrap();
    let (dp, p) = (d.display(), PROBE);
    let scope = format!(
        "version: 1\ntask: programs\nexec:\n  allow: [/bin/sh, /usr/bin/cp, /usr/bin/python3, {p}, {dp}/bin/tool, \
         {dp}/out/build]\nfiles:\n  write: [{dp}/out]\n"
    );
    let script = format!(
        "{p} write {dp}/bin/tool
         {dp}/bin/tool; echo tool-runs $?
         /usr/bin/cp /usr/bin/true {dp}/out/build/mine && {dp}/out/build/mine; echo built-runs $?
         /usr/bin/cp /usr/bin/true {dp}/out/copy; {dp}/out/copy 2>/dev/null; echo copy-runs $?
         /usr/bin/python3 -c 'print(\"python\", 6 * 7)'"
    );
    let out = run_warden(&scope, &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.result("write"), "err 13", "Landlock refuses it (EACCES), not a mount (EROFS)");
    assert_eq!(out.result("tool-runs"), "0");
    assert_eq!(fs::read(&tool).unwrap(), fs::read("/usr/bin/true").unwrap(), "unchanged");
    assert_eq!(out.result("built-runs"), "0", "what the task builds in its exec.allow directory runs");
    assert_eq!(out.result("copy-runs"), "126", "a copy in the noexec write root does not run");
    assert_eq!(out.result("python"), "42");
    let path = tool.display().to_string();
    let r = one(&out, "write to the allowed program", |r| r["path"] == path.as_str());
    assert_eq!((r["kind"].as_str(), r["rule"].as_str()), (Some("open"), Some("files.write")), "{r}");
    assert_eq!((r["source"].as_str(), r["action"].as_str()), (Some("landlock"), Some("refuse")), "{r}");
    assert!(r["blockers"].as_str().is_some_and(|b| b.contains("fs.write_file")), "{r}");
    // Nothing else was refused on the record: the build, python and the tool ran clean (the
    // noexec refusal of the copy is the kernel's mount, unrecorded: the start record says so).
    assert_eq!(denies(&out).len(), 1, "{:#?}", denies(&out));
    let start = &out.records[0];
    let unrecorded = start["unrecorded"].to_string();
    assert!(unrecorded.contains("exec-from-write-roots"), "{start}");
    assert!(!unrecorded.contains("write-allowed-programs"), "Landlock guards every allowed program: {start}");
    coverage("exec identity swap", "syscall", "enforced");
}

#[test]
fn quiet_runs_say_nothing_and_clean_runs_say_nothing() {
    if !require("quiet_runs_say_nothing_and_clean_runs_say_nothing", "landlock") {
        return;
    }
    let out = run_warden("version: 1\ntask: quiet\n", "cat /etc/shadow 2>/dev/null; true", &["-q"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("refused"), "-q: {}", out.stderr);
    let out = run_warden("version: 1\ntask: clean\n", "cat /etc/hostname >/dev/null", &[]);
    assert!(!out.stderr.contains("refused"), "{}", out.stderr);
    assert!(Path::new(&out.log_path).exists());
}

#[test]
fn ordinary_discovery_works_with_a_scope_that_restricts_no_files() {
    if !require("ordinary_discovery_works_with_a_scope_that_restricts_no_files", "landlock") {
        return;
    }
    // Protected defaults only (credentials, control files): the directories above them are
    // listed, walked and stat'ed; only the protected objects are refused.
    let script = "ls / >/dev/null; echo ls-root $?
         ls /etc >/dev/null; echo ls-etc $?
         ls /home >/dev/null; echo ls-home $?
         ls /root >/dev/null; echo ls-root-home $?
         find /etc -maxdepth 1 >/dev/null; echo find-etc $?
         stat /root >/dev/null; echo stat $?
         python3 -c 'import os; os.listdir(\"/\"); os.listdir(\"/sys/fs\")'; echo listdir $?
         cat /etc/shadow >/dev/null 2>&1; echo shadow $?";
    let out = run_warden("version: 1\ntask: discovery\n", script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for name in ["ls-root", "ls-etc", "ls-home", "ls-root-home", "find-etc", "stat", "listdir"] {
        assert_eq!(out.result(name), "0", "{name}\n{}", out.stderr);
    }
    assert_eq!(out.result("shadow"), "1", "the protected file itself stays refused");
    let d = denies(&out);
    assert_eq!(d.len(), 1, "only /etc/shadow was refused: {d:#?}");
    assert_eq!(d[0]["path"], "/etc/shadow");
}

/// What io_uring can reach is judged as the same call made directly, and recorded once: a
/// write outside `files.write`, a cgroup escape through `cgroup.procs`, egress to IPv6 and
/// IPv4-mapped destinations. (Another process's environ: the only other process a task sees
/// is its namespace's init, which the kernel itself refuses — not dumpable — before any
/// LSM, so there is no Warden refusal to record.) Signals, ptrace, `bpf()` and mmap
/// have no io_uring operation (n/a).
#[test]
fn io_uring_refusals_are_recorded_like_direct_calls() {
    let test = "io_uring_refusals_are_recorded_like_direct_calls";
    if !require(test, "io_uring") || !require(test, "cgroup_sock_addr") {
        return;
    }
    let fallback = engine() == "fallback";
    if fallback && (!require(test, "landlock") || !require(test, "kernel_audit")) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let d = fs::canonicalize(t.path()).unwrap();
    for sub in ["out", "ro"] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    let v6 = std::net::TcpListener::bind("[::1]:0").ok();
    let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cg = agent_user::sandbox::cgroup2_mount().unwrap();
    let (dp, p) = (d.display(), PROBE);
    let v4port = v4.local_addr().unwrap().port();
    let scope = format!(
        "version: 1\ntask: uring\nfiles:\n  write: [{dp}/out]\nnetwork:\n  egress:\n    - to: 10.255.255.0/24\ngrant: [io-uring]\n"
    );
    let mut script = format!(
        "{p} uring-write {dp}/out/ok.txt | sed s/^uring-write/allowed-write/
         {p} uring-write {dp}/ro/new.txt
         {p} uring-write {cg}/cgroup.procs | sed s/^uring-write/uring-cgroup/
         {p} uring-connect ::ffff:127.0.0.1 {v4port} | sed s/^uring-connect/uring-mapped/
",
        cg = cg.display()
    );
    if let Some(l) = &v6 {
        script.push_str(&format!(
            "{p} uring-connect ::1 {} | sed s/^uring-connect/uring-v6/\n",
            l.local_addr().unwrap().port()
        ));
    }
    script.push_str("true");
    let out = run_warden(&scope, &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.result("allowed-write"), "ok", "a write inside files.write goes through io_uring");
    let mut names = vec!["uring-write", "uring-cgroup", "uring-mapped"];
    if v6.is_some() {
        names.push("uring-v6");
    }
    for n in &names {
        refused(&out, n);
    }
    let ro = format!("{dp}/ro");
    let r = one(&out, "io_uring write outside files.write", |r| {
        r["path"].as_str().is_some_and(|p| p.starts_with(ro.as_str()))
    });
    assert_eq!(r["rule"], "files.write", "{r}");
    coverage("file write", "io_uring", "enforced");
    let procs = format!("{}/cgroup.procs", cg.display());
    let r = one(&out, "io_uring cgroup escape", |r| r["path"] == procs.as_str());
    assert_eq!(r["rule"], "protected.control", "{r}");
    coverage("cgroup escape", "io_uring", "enforced");
    let r = one(&out, "io_uring v4-mapped connect", |r| r["kind"] == "connect" && r["port"] == v4port);
    assert_eq!(r["rule"], "network.egress", "{r}");
    coverage("egress v4-mapped v6", "io_uring", "enforced");
    if v6.is_some() {
        one(&out, "io_uring v6 connect", |r| r["kind"] == "connect" && r["addr"] == "::1");
        coverage("egress v6", "io_uring", "enforced");
    }
    assert_eq!(denies(&out).len(), names.len(), "nothing else, nothing twice: {:#?}", denies(&out));
    for control in ["signals", "ptrace", "bpf"] {
        coverage(control, "io_uring", "n/a (no io_uring operation)");
    }
    coverage("exec mmap", "io_uring", "n/a (io_uring maps nothing)");
    drop((v4, v6));
}

/// io_uring itself, without the grant: the setup call is refused and recorded.
#[test]
fn io_uring_setup_is_refused_and_recorded_without_the_grant() {
    if !require("io_uring_setup_is_refused_and_recorded_without_the_grant", "kernel_audit") {
        return;
    }
    let out = run_warden("version: 1\ntask: nouring\n", &format!("{PROBE} uring-open /etc/hostname"), &[]);
    refused(&out, "uring-open");
    let r = one(&out, "io_uring_setup", |r| r["syscall"] == "io_uring_setup");
    assert_eq!(
        (r["rule"].as_str(), r["source"].as_str()),
        (Some("protected.io_uring"), Some("seccomp")),
        "{r}"
    );
    assert!(r["pid"].as_u64().is_some(), "{r}");
    coverage("io_uring setup", "syscall", "enforced");
}

/// A rule directory without rules is a mistake (a wrong path), never a green run of nothing.
#[test]
fn a_rule_directory_without_rules_is_a_usage_error() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let log = empty.path().join("log.jsonl");
    fs::write(&log, "").unwrap();
    for args in [vec!["rules", "test", dir], vec!["replay", log.to_str().unwrap(), "--rules", dir]] {
        let o = Command::new(warden_tests::warden_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("no rules here") && err.contains(dir), "{args:?}: {err}");
        assert!(!err.contains("give --rules DIR"), "--rules was given: {err}");
    }
}
