//! Brokered credentials on the real kernel, against a real issuer stand-in on loopback
//! (`tests/fixtures/creds/issuer.py`: a token service with a table that mints, checks and
//! revokes): minted per task, handed only to the scope's tool by the task's broker (caller
//! identified from the kernel), revoked at task end, at TTL and when `warden run`'s command is
//! done; a revoke that fails while the issuer is down lands once it is back, also across a
//! daemon `kill -9`; Warden's own JWTs verify with PyJWT against the JWKS and are listed as
//! revoked after the task. Every output the tests produce is searched for the values.
use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use warden_tests::{coverage, daemon::TestDaemon, require, warden_bin};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/creds").join(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port")
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port`; (status, body).
fn http(port: u16, method: &str, path: &str, auth: Option<&str>) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let auth = auth.map(|v| format!("Authorization: Bearer {v}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The issuer stand-in: `issuer.py serve` on its own loopback port, its table in a file.
struct Issuer {
    port: u16,
    table: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Issuer {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut me =
            Issuer { port: free_port(), table: dir.path().join("table.json"), child: None, _dir: dir };
        me.up();
        me
    }

    fn up(&mut self) {
        let child = Command::new("/usr/bin/python3")
            .arg(fixture("issuer.py"))
            .args(["serve", &self.port.to_string()])
            .arg(&self.table)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the issuer");
        self.child = Some(child);
        let t0 = Instant::now();
        while http(self.port, "GET", "/table", None).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20), "the issuer did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The token table: id → {value, task, name, revoked}.
    fn table(&self) -> serde_json::Map<String, serde_json::Value> {
        let (_, body) = http(self.port, "GET", "/table", None).expect("issuer table");
        serde_json::from_str(&body).expect("table JSON")
    }

    /// Entries minted for `task`.
    fn of(&self, task: &str) -> Vec<serde_json::Value> {
        self.table().into_values().filter(|e| e["task"] == task).collect()
    }

    /// Whether the issuer accepts `value`.
    fn accepts(&self, value: &str) -> bool {
        http(self.port, "GET", "/check", Some(value)).expect("issuer check").0 == 200
    }

    /// Every value it ever minted.
    fn values(&self) -> Vec<String> {
        self.table().into_values().map(|e| e["value"].as_str().unwrap().to_string()).collect()
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.down();
    }
}

fn exec_scope(task: &str, iss: &Issuer, extra: &str) -> String {
    let py = fixture("issuer.py");
    format!(
        "version: 1\ntask: {task}\n{extra}secrets:\n  - name: api\n    from: exec:/usr/bin/python3 {py} mint {url}\n    \
         revoke: /usr/bin/python3 {py} revoke {url} {{id}}\n    tools: [/usr/bin/python3]\n",
        py = py.display(),
        url = iss.url()
    )
}

fn text(o: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `issuer.py use` inside the task: the tool fetches the secret and checks it at the issuer.
fn use_in_task(d: &TestDaemon, id: &str, iss: &Issuer) -> std::process::Output {
    let py = fixture("issuer.py");
    let w = warden_bin();
    d.warden(&[
        "task",
        "exec",
        id,
        "--",
        "/usr/bin/python3",
        py.to_str().unwrap(),
        "use",
        w.to_str().unwrap(),
        "api",
        &iss.url(),
    ])
}

/// Waits until `f` holds.
fn wait_until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every value must be absent from every file under `dir` and from `extra` outputs.
fn assert_no_values(values: &[String], dir: &Path, extra: &[String]) {
    assert!(!values.is_empty());
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => files.push(p),
                _ => {}
            }
        }
    }
    assert!(files.iter().any(|f| f.ends_with("events.jsonl")), "the node log is searched");
    assert!(files.iter().any(|f| f.ends_with("daemon.err")), "the daemon's stderr is searched");
    for v in values {
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            assert!(
                !bytes.windows(v.len()).any(|w| w == v.as_bytes()),
                "a secret value appears in {}",
                f.display()
            );
        }
        for (i, out) in extra.iter().enumerate() {
            assert!(!out.contains(v.as_str()), "a secret value appears in output #{i}");
        }
    }
}

#[test]
fn exec_credentials_go_only_to_their_tool_and_are_revoked_at_end_ttl_and_after_run() {
    if !require("exec_credentials_go_only_to_their_tool_and_are_revoked_at_end_ttl_and_after_run", "root") {
        return;
    }
    let _s = serial();
    let iss = Issuer::start();
    let mut d = TestDaemon::start("");
    let mut outputs = Vec::new();

    // 1. `task end`.
    let t = d.start_task("ex", &exec_scope("ex", &iss, ""));
    let id = t["id"].as_str().unwrap().to_string();
    let broker = PathBuf::from(t["broker"].as_str().expect("the task has a broker"));
    assert!(broker.starts_with(&d.secrets_dir), "{}", broker.display());
    let digest = t["credentials"][0]["sha256"].as_str().unwrap().to_string();
    let minted = iss.of(&id);
    assert_eq!(minted.len(), 1, "one credential minted for the task");
    let value = minted[0]["value"].as_str().unwrap().to_string();
    assert!(iss.accepts(&value));

    // The tool gets it, and it works at the issuer.
    let o = use_in_task(&d, &id, &iss);
    outputs.push(text(&o));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), format!("check 200 sha256:{digest}"));
    // A process of the task that is not the tool is refused.
    let o = d.exec(&id, &format!("{} secret get api", warden_bin().display()));
    outputs.push(text(&o));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused"), "{}", text(&o));
    // The tool is not enough when it runs outside the task: the broker answers its own task only.
    let o = Command::new("/usr/bin/python3")
        .arg(fixture("issuer.py"))
        .args(["use", warden_bin().to_str().unwrap(), "api", &iss.url()])
        .env("WARDEN_BROKER", &broker)
        .output()
        .unwrap();
    outputs.push(text(&o));
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stdout).contains("not a process of this task"),
        "{}",
        text(&o)
    );

    // Both outcomes are on the record, with the digest, never the value.
    let granted =
        d.wait_record(&id, Duration::from_secs(10), |r| r["kind"] == "secret" && r["decision"] == "allow");
    assert_eq!(granted["op"], "get");
    assert_eq!(granted["secret"], "api");
    assert_eq!(granted["sha256"], digest.as_str());
    assert!(granted["exe"].as_str().unwrap().contains("warden"), "{granted}");
    let refused =
        d.wait_record(&id, Duration::from_secs(10), |r| r["kind"] == "secret" && r["decision"] == "deny");
    assert_eq!(refused["rule"], "secrets");
    assert!(refused["reason"].as_str().unwrap().contains("is not /usr/bin/python3"), "{refused}");
    let start = d.records_of(&id).into_iter().find(|r| r["kind"] == "task_start").unwrap();
    assert_eq!(start["credentials"][0]["sha256"], digest.as_str());
    // Brokered: this engine enforces secrets-by-tool for them.
    assert!(start.get("unenforced").is_none(), "{start}");
    coverage("secrets-by-tool (brokered)", "syscall", "enforced");

    let o = d.end(&id);
    outputs.push(text(&o));
    assert!(o.status.success(), "{}", text(&o));
    assert!(!iss.accepts(&value), "the issuer still accepts the credential after task end");
    assert_eq!(iss.of(&id)[0]["revoked"], true);
    assert!(!broker.exists(), "the broker socket outlived the task");
    let rev = d
        .records_of(&id)
        .into_iter()
        .find(|r| r["kind"] == "secret" && r["op"] == "revoke")
        .expect("revoke record");
    assert_eq!(rev["decision"], "allow", "{rev}");

    // 2. TTL.
    let t = d.start_task("exttl", &exec_scope("exttl", &iss, "ttl: 2s\n"));
    let id = t["id"].as_str().unwrap().to_string();
    let value = iss.of(&id)[0]["value"].as_str().unwrap().to_string();
    assert!(iss.accepts(&value));
    d.wait_record(&id, Duration::from_secs(20), |r| r["kind"] == "task_end");
    wait_until("the TTL revocation lands", Duration::from_secs(10), || !iss.accepts(&value));

    // 3. `warden run`'s command is done.
    let scope = d.dir.path().join("run.yaml");
    std::fs::write(&scope, exec_scope("exrun", &iss, "")).unwrap();
    let log = d.dir.path().join("run.jsonl");
    let py = fixture("issuer.py");
    let o = d.warden(&[
        "run",
        "--scope",
        scope.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "--",
        "/usr/bin/python3",
        py.to_str().unwrap(),
        "use",
        warden_bin().to_str().unwrap(),
        "api",
        &iss.url(),
    ]);
    outputs.push(text(&o));
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("check 200 "), "{}", text(&o));
    let run_task =
        std::fs::read_to_string(&log).unwrap().lines().next().map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["task"].as_str().unwrap().to_string()
        });
    let minted = iss.of(&run_task.unwrap());
    assert_eq!(minted.len(), 1);
    assert!(!iss.accepts(minted[0]["value"].as_str().unwrap()), "still valid after warden run returned");

    outputs.push(d.metrics());
    d.stop();
    assert_no_values(&iss.values(), d.dir.path(), &outputs);
}

#[test]
fn a_failed_mint_starts_nothing() {
    if !require("a_failed_mint_starts_nothing", "root") {
        return;
    }
    let _s = serial();
    let iss = Issuer::start();
    let d = TestDaemon::start("");
    let py = fixture("issuer.py");
    // The first secret mints, the second cannot: the first is revoked, nothing is left.
    let scope = format!(
        "{}  - name: broken\n    from: exec:/usr/bin/python3 {} mint http://127.0.0.1:1\n    tools: [/usr/bin/python3]\n",
        exec_scope("exfail", &iss, ""),
        py.display()
    );
    let p = d.dir.path().join("fail.yaml");
    std::fs::write(&p, scope).unwrap();
    let o = d.warden(&["task", "start", "--json", "--scope", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("secret `broken`"), "{}", text(&o));
    assert!(d.warden(&["task", "list", "--json"]).stdout.starts_with(b"[]"));
    let minted: Vec<_> = iss.table().into_values().collect();
    assert_eq!(minted.len(), 1, "the first secret was minted");
    wait_until("the half-started task's credential is revoked", Duration::from_secs(10), || {
        iss.table().into_values().all(|e| e["revoked"] == true)
    });
    let left = std::fs::read_dir(&d.secrets_dir).map(|r| r.flatten().count()).unwrap_or(0);
    assert_eq!(left, 0, "a secrets directory was left behind");
    let cgroups = std::fs::read_dir(&d.cgroup_parent)
        .map(|r| r.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    assert_eq!(cgroups, 0, "a sandbox was left behind");
}

#[test]
fn a_revoke_that_fails_while_the_issuer_is_down_lands_later_across_kill_9() {
    if !require("a_revoke_that_fails_while_the_issuer_is_down_lands_later_across_kill_9", "root") {
        return;
    }
    let _s = serial();
    let mut iss = Issuer::start();
    let mut d = TestDaemon::start("");
    let t = d.start_task("exdown", &exec_scope("exdown", &iss, ""));
    let id = t["id"].as_str().unwrap().to_string();
    let value = iss.of(&id)[0]["value"].as_str().unwrap().to_string();
    iss.down();
    let o = d.end(&id);
    // The task ended; the revocation step has not landed yet, and says so.
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("retried with backoff"), "{}", text(&o));
    assert!(d.warden(&["task", "list", "--json"]).stdout.starts_with(b"[]"));
    let failed = d
        .records_of(&id)
        .into_iter()
        .find(|r| r["kind"] == "secret" && r["op"] == "revoke")
        .expect("the failed revoke is recorded");
    assert_eq!(failed["decision"], "deny", "{failed}");
    let end = d.records_of(&id).into_iter().find(|r| r["kind"] == "task_end").unwrap();
    assert!(end["reason"].as_str().unwrap().contains("revoking api failed so far"), "{end}");
    // Pending state is on disk, and the daemon dies with it.
    let pending_dir = d.dir.path().join("state/revocations");
    let n = std::fs::read_dir(&pending_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert!(n >= 1, "no pending revocation on disk");
    assert!(d.metrics().contains("warden_revocations_pending 1"));
    d.kill9();
    iss.up();
    // The issuer still accepts it: nothing revoked it while the daemon was dead.
    assert!(iss.accepts(&value));
    d.launch(&[]);
    wait_until("the restarted daemon's retry lands", Duration::from_secs(30), || !iss.accepts(&value));
    wait_until("the pending file is gone", Duration::from_secs(5), || {
        std::fs::read_dir(&pending_dir)
            .unwrap()
            .flatten()
            .all(|e| e.path().file_name().is_some_and(|n| n == "revoked-jti.json"))
    });
    let values = iss.values();
    d.stop();
    assert_no_values(&values, d.dir.path(), &[]);
}

#[test]
fn a_task_the_restarted_daemon_finds_gone_has_its_credentials_revoked() {
    if !require("a_task_the_restarted_daemon_finds_gone_has_its_credentials_revoked", "root") {
        return;
    }
    let _s = serial();
    let iss = Issuer::start();
    let mut d = TestDaemon::start("");
    let t = d.start_task("exgone", &exec_scope("exgone", &iss, ""));
    let id = t["id"].as_str().unwrap().to_string();
    let cgroup = PathBuf::from(t["cgroup"].as_str().unwrap());
    let value = iss.of(&id)[0]["value"].as_str().unwrap().to_string();
    d.kill9();
    // The sandbox disappears while no daemon runs.
    std::fs::remove_dir(&cgroup).expect("remove the empty sandbox");
    d.launch(&[]);
    assert!(d.ready["startup"]["vanished_tasks"].as_array().unwrap().iter().any(|v| v == id.as_str()));
    wait_until("the gone task's credential is revoked", Duration::from_secs(20), || !iss.accepts(&value));
    // A task that is re-adopted keeps working: its values died with the old daemon, so they
    // are revoked and new ones minted.
    let t = d.start_task("exkept", &exec_scope("exkept", &iss, ""));
    let id = t["id"].as_str().unwrap().to_string();
    let old = iss.of(&id)[0]["value"].as_str().unwrap().to_string();
    d.kill9();
    d.launch(&[]);
    wait_until("the re-adopted task's old credential is revoked", Duration::from_secs(20), || {
        !iss.accepts(&old)
    });
    let o = use_in_task(&d, &id, &iss);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).starts_with("check 200"),
        "{}\nstartup: {}\ndaemon stderr:\n{}",
        text(&o),
        d.ready["startup"],
        d.stderr()
    );
    assert_eq!(iss.of(&id).len(), 2, "a new credential was minted at re-adoption");
    d.end(&id);
    wait_until("everything is revoked", Duration::from_secs(10), || {
        iss.table().values().all(|e| e["revoked"] == true)
    });
}

#[test]
fn rotation_issues_a_new_value_and_revokes_the_old_one() {
    if !require("rotation_issues_a_new_value_and_revokes_the_old_one", "root") {
        return;
    }
    let _s = serial();
    let iss = Issuer::start();
    let d = TestDaemon::start("");
    let scope = exec_scope("exrot", &iss, "").replace("    tools:", "    rotate: 2s\n    tools:");
    let t = d.start_task("exrot", &scope);
    let id = t["id"].as_str().unwrap().to_string();
    let first = iss.of(&id)[0]["value"].as_str().unwrap().to_string();
    let rotated =
        d.wait_record(&id, Duration::from_secs(20), |r| r["kind"] == "secret" && r["op"] == "rotate");
    assert_eq!(rotated["decision"], "allow", "{rotated}");
    assert_ne!(rotated["sha256"], t["credentials"][0]["sha256"]);
    // The tool now gets the new value, which works.
    let o = use_in_task(&d, &id, &iss);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.starts_with("check 200"), "{out}");
    assert!(
        !out.contains(t["credentials"][0]["sha256"].as_str().unwrap()),
        "the tool got the old value: {out}"
    );
    // The old one is revoked after the grace period.
    wait_until("the rotated-out credential is revoked", Duration::from_secs(20), || !iss.accepts(&first));
    d.end(&id);
    wait_until("all revoked", Duration::from_secs(10), || iss.table().values().all(|e| e["revoked"] == true));
}

#[test]
fn warden_tokens_verify_with_pyjwt_and_are_listed_revoked_after_the_task() {
    if !require("warden_tokens_verify_with_pyjwt_and_are_listed_revoked_after_the_task", "root") {
        return;
    }
    let _s = serial();
    let port = free_port();
    let d = TestDaemon::start(&format!("tokens:\n  listen: 127.0.0.1:{port}\n"));
    let aud = "https://ci.example.com";
    let scope = format!(
        "version: 1\ntask: tok\nttl: 10m\nsecrets:\n  - name: id-token\n    from: token\n    audience: {aud}\n    tools: [/usr/bin/python3]\n"
    );
    let t = d.start_task("tok", &scope);
    let id = t["id"].as_str().unwrap().to_string();
    let jwks = format!("http://127.0.0.1:{port}/.well-known/jwks.json");
    let o = d.warden(&[
        "task",
        "exec",
        &id,
        "--",
        "/usr/bin/python3",
        fixture("jwtcheck.py").to_str().unwrap(),
        warden_bin().to_str().unwrap(),
        "id-token",
        &jwks,
        aud,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let claims: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).expect("claims");
    assert_eq!(claims["aud"], aud);
    assert!(claims["sub"].as_str().unwrap().starts_with("spiffe://warden/node/"), "{claims}");
    assert!(claims["sub"].as_str().unwrap().ends_with(&format!("/task/{id}")), "{claims}");
    assert_eq!(claims["scope_hash"], t["scope_hash"]);
    assert!(out.contains("other audience refused"), "{out}");
    // exp no later than the task's ttl.
    let exp = claims["exp"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(exp <= now + 600, "exp {exp} is past the task's ttl");
    let jti = claims["jti"].as_str().unwrap().to_string();
    let (_, body) = http(port, "GET", "/v1/revoked", None).unwrap();
    assert!(!body.contains(&jti), "listed as revoked while the task runs: {body}");
    // Another process of the task does not get it.
    let o = d.exec(&id, &format!("{} secret get id-token", warden_bin().display()));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    d.end(&id);
    let (status, body) = http(port, "GET", "/v1/revoked", None).unwrap();
    assert_eq!(status, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(list["revoked"].as_array().unwrap().iter().any(|j| j == jti.as_str()), "{body}");
}

#[test]
fn standalone_run_refuses_brokered_secrets_with_a_fix() {
    if !require("standalone_run_refuses_brokered_secrets_with_a_fix", "root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scope = dir.path().join("s.yaml");
    std::fs::write(
        &scope,
        "version: 1\ntask: tok\nsecrets:\n  - name: t\n    from: token\n    audience: a\n    tools: [/usr/bin/python3]\n",
    )
    .unwrap();
    let o = Command::new(warden_bin())
        .args([
            "run",
            "--no-daemon",
            "--scope",
            scope.to_str().unwrap(),
            "--log",
            "/dev/null",
            "--",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("start `warden daemon`"), "{}", text(&o));
}

#[test]
fn git_gets_its_credential_through_the_helper_and_a_shell_does_not() {
    if !require("git_gets_its_credential_through_the_helper_and_a_shell_does_not", "root") {
        return;
    }
    let _s = serial();
    let iss = Issuer::start();
    let d = TestDaemon::start("");
    let scope = exec_scope("exgit", &iss, "").replace("tools: [/usr/bin/python3]", "tools: [/usr/bin/git]");
    let t = d.start_task("exgit", &scope);
    let id = t["id"].as_str().unwrap().to_string();
    let digest = t["credentials"][0]["sha256"].as_str().unwrap().to_string();
    let w = warden_bin();
    // git runs the helper (through sh): the broker answers because git started it. Only the
    // password's digest leaves the task's shell.
    // Kept in a variable, not a file: the task may not create names directly in /tmp when a
    // protected path (the checkout's `warden`, in a clone there) lies below it.
    let script = format!(
        "fill=$(printf 'protocol=https\\nhost=example.com\\n\\n' | GIT_TERMINAL_PROMPT=0 /usr/bin/git -c \
         credential.helper='!{w} secret get api --format git' credential fill) && \
         printf '%s\\n' \"$fill\" | grep -c '^username=x-access-token$' && \
         printf '%s\\n' \"$fill\" | sed -n 's/^password=//p' | tr -d '\\n' | sha256sum",
        w = w.display()
    );
    let o = d.exec(&id, &script);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.starts_with("1\n"), "{}", text(&o));
    assert!(out.contains(&digest), "git did not get the credential: {out}");
    // The same helper run by a shell of the task, not by git: refused.
    let o = d.exec(
        &id,
        &format!("printf 'protocol=https\\n\\n' | {} secret get api --format git get", w.display()),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not /usr/bin/git"), "{}", text(&o));
    let granted =
        d.wait_record(&id, Duration::from_secs(10), |r| r["kind"] == "secret" && r["decision"] == "allow");
    assert!(granted["ancestry"].as_array().is_some_and(|a| a.len() >= 2), "helper ← sh ← git: {granted}");
    d.end(&id);
    wait_until("revoked", Duration::from_secs(10), || iss.table().values().all(|e| e["revoked"] == true));
}
