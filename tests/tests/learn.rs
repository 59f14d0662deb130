//! Host tier: learning a scope (`warden scope suggest`) and running what the task builds
//! (`exec.allow` directory entries). Each test runs a real workload in audit mode, suggests a
//! scope from its log, and runs the same workload in enforce mode under it: nothing refused.
//! A deliberately extra action in the enforce run is refused and recorded.
use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use warden_tests::{RunOutcome, engine, require, run_warden, warden_bin};

fn warden(args: &[&str]) -> std::process::Output {
    Command::new(warden_bin()).args(args).output().expect("run warden")
}

fn denies(out: &RunOutcome) -> Vec<&Value> {
    out.records.iter().filter(|r| r["decision"] == "deny").collect()
}

/// `warden scope suggest LOG --scope BASE -o OUT`; the suggested text.
fn suggest(log: &Path, base: &Path, out: &Path) -> String {
    let o = warden(&[
        "scope",
        "suggest",
        log.to_str().unwrap(),
        "--scope",
        base.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "suggest: {}", String::from_utf8_lossy(&o.stderr));
    let text = fs::read_to_string(out).unwrap();
    let check = warden(&["scope", "check", out.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "the suggestion is a valid scope: {}\n{text}",
        String::from_utf8_lossy(&check.stderr)
    );
    text
}

/// A workspace the tests own, canonical (records name canonical paths).
fn workspace() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = fs::canonicalize(t.path()).unwrap();
    (t, p)
}

#[test]
fn a_suggested_scope_lets_the_same_run_pass_and_refuses_anything_else() {
    let test = "a_suggested_scope_lets_the_same_run_pass_and_refuses_anything_else";
    if !require(test, "tp_btf") || !require(test, "cgroup_sock_addr") {
        return;
    }
    let (_t, ws) = workspace();
    let w = ws.display();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let (port, other_port) = (listener.local_addr().unwrap().port(), other.local_addr().unwrap().port());
    // Shell tools, python (with a connection out), git.
    let workload = format!(
        "set -e
         export HOME={w}; cd {w}
         ls / >/dev/null; find /etc -maxdepth 1 >/dev/null; cat /etc/hostname >/dev/null
         python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port})).close()'
         rm -rf repo; git init -q repo; cd repo; echo x > f; git add f
         git -c user.name=t -c user.email=t@example.com commit -qm first
         echo workload-done"
    );
    let base = ws.join("audit.yaml");
    fs::write(&base, format!("version: 1\ntask: learn\nmode: audit\nfiles:\n  write: [{w}]\n")).unwrap();
    let audit = run_warden(&fs::read_to_string(&base).unwrap(), &workload, &[]);
    assert_eq!(audit.code, Some(0), "{}\n{}", audit.stdout, audit.stderr);
    let suggested_path = ws.join("suggested.yaml");
    let text = suggest(&audit.log_path, &base, &suggested_path);
    assert!(text.contains("mode: enforce"), "{text}");
    for exe in ["git", "python3", "ls", "find", "cat"] {
        assert!(text.lines().any(|l| l.contains("/") && l.contains(exe)), "{exe} allowed:\n{text}");
    }
    assert!(text.contains(&format!("- {port}")), "the connection's port:\n{text}");
    assert!(!text.contains(&format!("- {other_port}")), "{text}");

    // The same run under the suggestion: nothing refused.
    let clean = run_warden(&text, &workload, &[]);
    assert_eq!(clean.code, Some(0), "{}\n{}\n{text}", clean.stdout, clean.stderr);
    assert!(clean.stdout.contains("workload-done"));
    assert!(denies(&clean).is_empty(), "zero denials: {:#?}\n{text}", denies(&clean));
    assert_eq!(clean.records[0]["mode"], "enforce");

    // Anything else is refused: a program that did not run before, a connection elsewhere.
    let extra = format!(
        "{workload}
         set +e
         /usr/bin/id >/dev/null; echo extra-exec $?
         python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {other_port}))' 2>/dev/null; echo extra-connect $?"
    );
    let out = run_warden(&text, &extra, &[]);
    assert!(out.stdout.contains("workload-done"), "{}\n{}", out.stdout, out.stderr);
    assert_ne!(out.result("extra-exec"), "0");
    assert_ne!(out.result("extra-connect"), "0");
    let d = denies(&out);
    assert!(
        d.iter().any(|r| r["kind"] == "exec" && r["rule"] == "exec.allow" && r["path"] == "/usr/bin/id"),
        "{d:#?}"
    );
    assert!(d.iter().any(|r| r["kind"] == "connect" && r["port"] == other_port), "{d:#?}");
    assert_eq!(d.len(), 2, "only the extra actions: {d:#?}");
    drop((listener, other));
}

#[test]
fn refusals_in_a_log_become_file_grants_by_directory() {
    if !require("refusals_in_a_log_become_file_grants_by_directory", "landlock") {
        return;
    }
    let (_t, ws) = workspace();
    let w = ws.display();
    for d in ["out", "cache/deep"] {
        fs::create_dir_all(ws.join(d)).unwrap();
    }
    let workload = format!("echo a > {w}/out/a; echo b > {w}/cache/deep/b; echo c > {w}/cache/c; echo done");
    let base = ws.join("base.yaml");
    fs::write(&base, format!("version: 1\ntask: files\nfiles:\n  write: [{w}/out]\n")).unwrap();
    let first = run_warden(&fs::read_to_string(&base).unwrap(), &workload, &[]);
    let refused = denies(&first);
    assert!(!refused.is_empty(), "writes outside files.write are refused: {}", first.stderr);
    let text = suggest(&first.log_path, &base, &ws.join("s.yaml"));
    // By directory, the outermost one only.
    assert!(text.contains(&format!("- {w}/cache\n")), "{text}");
    assert!(!text.contains(&format!("{w}/cache/deep")), "{text}");
    let second = run_warden(&text, &workload, &[]);
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    assert!(denies(&second).is_empty(), "{:#?}\n{text}", denies(&second));
    assert_eq!(fs::read_to_string(ws.join("cache/c")).unwrap(), "c\n");
}

#[test]
fn a_task_runs_what_it_builds_in_an_exec_allow_directory() {
    let test = "a_task_runs_what_it_builds_in_an_exec_allow_directory";
    if !require(test, "tp_btf") || !require(test, "landlock") {
        return;
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        println!("SKIP {test}: no gcc");
        return;
    }
    let (_t, ws) = workspace();
    let w = ws.display();
    fs::create_dir_all(ws.join("build")).unwrap();
    fs::create_dir_all(ws.join("tmp")).unwrap();
    fs::write(
        ws.join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello-built\"); return 0; }\n",
    )
    .unwrap();
    // A program outside the build directory that did not run in the audit run.
    let (_o, outside) = workspace();
    fs::copy("/usr/bin/true", outside.join("true-copy")).unwrap();
    let workload = format!(
        "set -e; export HOME={w} TMPDIR={w}/tmp; cd {w}
         gcc -o build/hello hello.c
         ./build/hello"
    );
    let base = ws.join("audit.yaml");
    fs::write(&base, format!("version: 1\ntask: build\nmode: audit\nfiles:\n  write: [{w}]\n")).unwrap();
    let audit = run_warden(&fs::read_to_string(&base).unwrap(), &workload, &[]);
    assert_eq!(audit.code, Some(0), "{}\n{}", audit.stdout, audit.stderr);
    let sp = ws.join("suggested.yaml");
    let text = suggest(&audit.log_path, &base, &sp);
    assert!(text.contains(&format!("- {w}/build/\n")), "the program built there, by directory:\n{text}");
    // The directory is writable by the task: scope check says so.
    let check = warden(&["scope", "check", sp.to_str().unwrap()]);
    let warn = String::from_utf8_lossy(&check.stderr);
    assert!(warn.contains("is writable by the task") && warn.contains("/build/"), "{warn}");

    // Build again (a new file, a new identity) and run it: allowed by the directory.
    let run = run_warden(
        &text,
        &format!("{workload}\nset +e; {}/true-copy; echo outside $?", outside.display()),
        &[],
    );
    assert!(run.stdout.contains("hello-built"), "{}\n{}\n{text}", run.stdout, run.stderr);
    assert_eq!(run.result("outside"), if engine() == "bpf-lsm" { "126" } else { "137" });
    let d = denies(&run);
    assert_eq!(d.len(), 1, "only the program outside: {d:#?}");
    assert_eq!(d[0]["rule"], "exec.allow");
    // Every exec of what the task built is recorded.
    let built = format!("{w}/build/hello");
    assert!(
        run.records
            .iter()
            .any(|r| r["kind"] == "exec" && r["decision"] == "allow" && r["exe"] == built.as_str()),
        "the built program's exec is on the record"
    );
}

/// Without a compiler (the VM tier's guests): a program the task writes into an `exec.allow`
/// directory during the task runs; the same program outside it is refused and recorded.
#[test]
fn an_exec_allow_directory_allows_files_written_during_the_task() {
    if !require("an_exec_allow_directory_allows_files_written_during_the_task", "tp_btf") {
        return;
    }
    let (_t, ws) = workspace();
    let w = ws.display();
    fs::create_dir_all(ws.join("bin")).unwrap();
    let (_o, outside) = workspace();
    fs::copy("/bin/true", outside.join("true-copy")).unwrap();
    let sh = fs::canonicalize("/bin/sh").unwrap();
    let cp = fs::canonicalize("/bin/cp").unwrap();
    let scope = format!(
        "version: 1\ntask: dirs\nexec:\n  allow: [{}, {}, {w}/bin/]\nfiles:\n  write: [{w}]\n",
        sh.display(),
        cp.display()
    );
    let script = format!(
        "cp /bin/true {w}/bin/mine; {w}/bin/mine; echo mine $?
         {o}/true-copy; echo outside $?",
        o = outside.display()
    );
    let out = run_warden(&scope, &script, &[]);
    assert_eq!(out.result("mine"), "0", "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.result("outside"), if engine() == "bpf-lsm" { "126" } else { "137" });
    let d = denies(&out);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!((d[0]["kind"].as_str(), d[0]["rule"].as_str()), (Some("exec"), Some("exec.allow")));
    let mine = format!("{w}/bin/mine");
    assert!(
        out.records
            .iter()
            .any(|r| r["kind"] == "exec" && r["decision"] == "allow" && r["path"] == mine.as_str()),
        "{:#?}",
        out.records
    );
    // Without the directory entry the same program is killed by the exec identity check: the
    // entry is what allows it. (`files.write` is left out here: with it, the write root is
    // `noexec` and the kernel refuses the exec before any hook, unrecorded.)
    let without = format!("version: 1\ntask: dirs\nexec:\n  allow: [{}, {}]\n", sh.display(), cp.display());
    let out = run_warden(&without, &script, &[]);
    assert_ne!(out.result("mine"), "0");
    assert!(denies(&out).iter().any(|r| r["path"] == mine.as_str()), "{:#?}", denies(&out));
}
