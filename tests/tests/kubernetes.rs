//! Host tier: real containers. Debian's `runc` runs OCI bundles the test builds (a
//! `busybox-static` root filesystem), with `warden oci-hook` in their `config.json` for
//! `createRuntime` and `poststop`, pod annotations in the spec and a kubepods-style cgroup
//! path (cgroupfs driver layout) below the cgroup2 mount. Each test runs its own daemon.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use agent_user::sandbox::cgroup2_mount;
use warden_tests::{
    containers::{BUSYBOX, busybox_rootfs, ended_by_exit, random_hex, remove_tree},
    daemon::TestDaemon,
    engine, require, warden_bin,
};

const RUNC: &str = "/usr/sbin/runc";

/// One pod's container: its bundle, runc state dir and kubepods-style cgroup. Dropping it
/// kills and deletes the container and removes its cgroups in every hierarchy.
struct Pod {
    dir: tempfile::TempDir,
    id: String,
    uid: String,
    /// `warden-test-k8s-<pid>-<n>`: the top of its cgroup path, in every hierarchy.
    top: String,
    cgroup_rel: String,
}

impl Pod {
    /// A bundle whose process runs `args`; `annotations` go into the spec.
    fn new(daemon: &TestDaemon, args: &[&str], annotations: &[(&str, &str)]) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("tempdir");
        let id = random_hex(32);
        let u = random_hex(16);
        let uid = format!("{}-{}-{}-{}-{}", &u[..8], &u[8..12], &u[12..16], &u[16..20], &u[20..]);
        let top = format!("warden-test-k8s-{}-{n}", std::process::id());
        let cgroup_rel = format!("/{top}/kubepods/burstable/pod{uid}/{id}");
        let rootfs = dir.path().join("bundle/rootfs");
        busybox_rootfs(&rootfs);
        let bundle = dir.path().join("bundle");
        let out = Command::new(RUNC).args(["spec", "--bundle"]).arg(&bundle).output().expect("runc spec");
        assert!(out.status.success(), "runc spec: {}", String::from_utf8_lossy(&out.stderr));
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("spec JSON");
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!(args);
        spec["root"]["readonly"] = false.into();
        spec["linux"]["cgroupsPath"] = cgroup_rel.clone().into();
        let mut ann: BTreeMap<String, String> = BTreeMap::from([
            ("io.kubernetes.cri.container-type".into(), "container".into()),
            ("io.kubernetes.cri.sandbox-uid".into(), uid.clone()),
            ("io.kubernetes.cri.sandbox-name".into(), format!("agent-{n}")),
            ("io.kubernetes.cri.sandbox-namespace".into(), "agents".into()),
            ("io.kubernetes.cri.container-name".into(), "runner".into()),
        ]);
        for (k, v) in annotations {
            ann.insert(k.to_string(), v.to_string());
        }
        spec["annotations"] = serde_json::to_value(&ann).expect("annotations");
        let note = dir.path().join("oci-hook.jsonl");
        let hook = serde_json::json!({
            "path": warden_bin(),
            "args": ["warden", "oci-hook", "--socket", daemon.socket, "--note", note, "--timeout", "20"],
            "timeout": 60,
        });
        spec["hooks"] = serde_json::json!({"createRuntime": [hook.clone()], "poststop": [hook]});
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("spec")).expect("write config.json");
        Pod { dir, id, uid, top, cgroup_rel }
    }

    fn runc(&self) -> Command {
        let mut c = Command::new(RUNC);
        c.arg("--root").arg(self.dir.path().join("runc-state"));
        c
    }

    /// `runc run`: create (hooks: createRuntime), start, wait, delete (hooks: poststop).
    fn run(&self) -> Output {
        self.runc()
            .args(["run", "--bundle"])
            .arg(self.dir.path().join("bundle"))
            .arg(&self.id)
            .stdin(Stdio::null())
            .output()
            .expect("runc run")
    }

    /// `runc run` in the background.
    fn spawn(&self) -> std::process::Child {
        self.runc()
            .args(["run", "--bundle"])
            .arg(self.dir.path().join("bundle"))
            .arg(&self.id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runc run")
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }

    fn note(&self) -> PathBuf {
        self.dir.path().join("oci-hook.jsonl")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self.runc().args(["kill", &self.id, "KILL"]).output();
        let _ = self.runc().args(["delete", "--force", &self.id]).output();
        // runc removes the container's own cgroup; the kubepods-style parents are ours.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            let Some((pre, post)) = line.split_once(" - ") else { continue };
            if !(post.starts_with("cgroup ") || post.starts_with("cgroup2 ")) {
                continue;
            }
            let Some(mp) = pre.split_whitespace().nth(4) else { continue };
            let top = Path::new(mp).join(&self.top);
            if top.exists() {
                remove_tree(&top);
            }
        }
    }
}

/// One container test at a time: each restarts or stops its own daemon and runs real
/// containers; run side by side on two cores they starve each other's timing.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this host can run the test: root, runc, a static busybox, cgroup v2.
fn ready(test: &str) -> bool {
    if !require(test, "root") {
        return false;
    }
    for b in [RUNC, BUSYBOX] {
        if !Path::new(b).exists() {
            panic!("{test}: {b} is missing (cargo xtask test installs runc and busybox-static)");
        }
    }
    assert!(
        agent_user::scope::compile::elf_interpreter(Path::new(BUSYBOX)).is_none(),
        "{BUSYBOX} is not static (install busybox-static)"
    );
    cgroup2_mount().expect("cgroup2 mount");
    true
}

/// A daemon whose scopes directory holds `agent.yaml`: only the image's shell may run. The
/// directory is removed when the caller drops it, at the end of the test.
fn daemon_with_scopes() -> (TestDaemon, tempfile::TempDir) {
    let scopes = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        scopes.path().join("agent.yaml"),
        "version: 1\ntask: pod-agent\nexec:\n  allow: [/bin/sh]\n",
    )
    .expect("scope");
    (TestDaemon::start(&format!("scopes: {}\n", scopes.path().display())), scopes)
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn pod_of(r: &serde_json::Value) -> &serde_json::Value {
    &r["pod"]
}

fn task_of(d: &TestDaemon, pod: &Pod) -> String {
    let start = d
        .records()
        .into_iter()
        .find(|r| r["kind"] == "task_start" && r["pod"]["container_id"] == pod.id.as_str())
        .unwrap_or_else(|| panic!("no task_start for container {}; daemon:\n{}", pod.id, d.stderr()));
    start["task"].as_str().expect("task id").to_string()
}

/// The container's very first command is outside the scope: it is killed before its first
/// instruction and the refusal is recorded with the pod; the container's exit ends the task.
#[test]
fn container_first_command_outside_scope_is_refused_with_pod_fields() {
    if !ready("container_first_command_outside_scope_is_refused_with_pod_fields") {
        return;
    }
    let _serial = serial();
    let (d, _scopes) = daemon_with_scopes();
    let pod =
        Pod::new(&d, &["/opt/sh", "-c", "echo escaped > /tmp/escaped"], &[("warden.dev/scope", "agent")]);
    let out = pod.run();
    assert!(
        !out.status.success(),
        "the forbidden first command ran: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.stderr()
    );
    assert!(!pod.rootfs().join("tmp/escaped").exists(), "the forbidden command ran");
    let task = task_of(&d, &pod);
    let deny =
        d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "exec" && r["decision"] == "deny");
    assert!(deny["path"].as_str().unwrap_or("").ends_with("/opt/sh"), "{deny}");
    let p = pod_of(&deny);
    assert_eq!(p["uid"], pod.uid.as_str(), "{deny}");
    assert_eq!(p["container_id"], pod.id.as_str(), "{deny}");
    assert_eq!(p["namespace"], "agents", "{deny}");
    assert_eq!(p["container"], "runner", "{deny}");
    assert!(p["name"].as_str().unwrap_or("").starts_with("agent-"), "{deny}");
    if engine() == "fallback" {
        assert_eq!(deny["action"], "kill", "the fallback engine kills before the first instruction: {deny}");
    }
    // The start names the pod and the cgroup runc made.
    let start = d.records_of(&task).into_iter().find(|r| r["kind"] == "task_start").expect("task_start");
    assert_eq!(pod_of(&start)["uid"], pod.uid.as_str());
    assert!(start["cgroup"].as_str().unwrap_or("").ends_with(&pod.cgroup_rel), "{start}");
    if engine() == "fallback" {
        let u = start["unenforced"].as_array().expect("unenforced listed for a pod on the fallback engine");
        assert!(u.iter().any(|v| v == "files-in-container"), "{start}");
    }
    // runc's poststop ended the task.
    let end = d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "task_end");
    assert!(ended_by_exit(&end), "{end}");
    assert_eq!(pod_of(&end)["container_id"], pod.id.as_str());
    // Every record of the task names the pod.
    for r in d.records_of(&task) {
        assert_eq!(r["pod"]["uid"], pod.uid.as_str(), "{r}");
    }
    let out = d.warden(&["verify", d.log.to_str().expect("utf-8")]);
    assert!(out.status.success(), "verify: {}", String::from_utf8_lossy(&out.stdout));
}

/// An allowed workload runs to completion with zero denials, and its exit ends the task.
#[test]
fn container_allowed_workload_runs_without_denials() {
    if !ready("container_allowed_workload_runs_without_denials") {
        return;
    }
    let _serial = serial();
    let (d, _scopes) = daemon_with_scopes();
    let pod = Pod::new(
        &d,
        &[
            "/bin/sh",
            "-c",
            "echo hello > /tmp/out && cat /tmp/out > /tmp/copy && ls / > /dev/null && sleep 2",
        ],
        &[("warden.dev/scope", "agent")],
    );
    let run = pod.spawn();
    // While it runs: the task's signed identity document names the pod, and verifies.
    let task = warden_tests::wait_for(Duration::from_secs(20), || {
        d.records()
            .into_iter()
            .find(|r| r["kind"] == "task_start" && r["pod"]["container_id"] == pod.id.as_str())
            .and_then(|r| r["task"].as_str().map(str::to_string))
    })
    .unwrap_or_else(|| panic!("the container was not bound; daemon:\n{}", d.stderr()));
    let out = d.warden(&["task", "identity", &task]);
    assert!(out.status.success(), "identity: {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("identity JSON");
    assert_eq!(doc["pod"]["uid"], pod.uid.as_str(), "{doc}");
    assert_eq!(doc["pod"]["container_id"], pod.id.as_str(), "{doc}");
    let doc_path = pod.dir.path().join("identity.json");
    std::fs::write(&doc_path, &out.stdout).expect("write identity");
    let ok = d.warden(&["identity", "verify", doc_path.to_str().expect("utf-8")]);
    assert!(ok.status.success(), "identity verify: {}", String::from_utf8_lossy(&ok.stderr));
    // The probes' endpoint on the metrics listener answers through the core.
    let health = http_get(d.metrics_port, "/health");
    assert!(health.starts_with("HTTP/1.1 200") && health.contains("\"tasks\":1"), "{health}");
    let out = run.wait_with_output().expect("runc run");
    assert!(
        out.status.success(),
        "the allowed workload failed: {}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.stderr()
    );
    assert_eq!(std::fs::read_to_string(pod.rootfs().join("tmp/copy")).expect("workload output"), "hello\n");
    let end = d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "task_end");
    assert!(ended_by_exit(&end), "{end}");
    let records = d.records_of(&task);
    let denials: Vec<_> =
        records.iter().filter(|r| r["decision"] == "deny" || r["decision"] == "audit").collect();
    assert!(denials.is_empty(), "an allowed workload was refused: {denials:?}");
    // It really ran under the task: its execs are on the record.
    assert!(records.iter().any(|r| r["kind"] == "exec" && r["decision"] == "allow"), "{records:?}");
    let out = d.warden(&["task", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("task list JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(0), "the container's task outlived it: {list}");
}

/// With the daemon stopped the container does not start (fail closed); with
/// `warden.dev/on-failure: open` it starts unbound and that is noted.
#[test]
fn container_does_not_start_without_the_daemon() {
    if !ready("container_does_not_start_without_the_daemon") {
        return;
    }
    let _serial = serial();
    let (mut d, _scopes) = daemon_with_scopes();
    d.stop();
    let pod = Pod::new(&d, &["/bin/sh", "-c", "echo ran > /tmp/ran"], &[("warden.dev/scope", "agent")]);
    let out = pod.run();
    assert!(!out.status.success(), "the container started without the daemon");
    assert!(!pod.rootfs().join("tmp/ran").exists(), "the container's command ran unbound");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be bound"), "runc's error does not carry the hook's reason: {err}");

    let open = Pod::new(
        &d,
        &["/bin/sh", "-c", "echo ran > /tmp/ran"],
        &[("warden.dev/scope", "agent"), ("warden.dev/on-failure", "open")],
    );
    let out = open.run();
    assert!(
        out.status.success(),
        "fail-open container did not start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(open.rootfs().join("tmp/ran").exists());
    let note = std::fs::read_to_string(open.note()).expect("the unbound start is noted");
    assert!(note.contains(&open.id) && note.contains("\"on_failure\":\"open\""), "{note}");
}

/// A pod that names a scope the daemon does not have is refused, and the refusal is on the
/// record with the pod.
#[test]
fn container_with_unknown_scope_is_refused_on_the_record() {
    if !ready("container_with_unknown_scope_is_refused_on_the_record") {
        return;
    }
    let _serial = serial();
    let (d, _scopes) = daemon_with_scopes();
    let pod =
        Pod::new(&d, &["/bin/sh", "-c", "echo ran > /tmp/ran"], &[("warden.dev/scope", "no-such-scope")]);
    let out = pod.run();
    assert!(!out.status.success(), "a container with an unknown scope started");
    assert!(!pod.rootfs().join("tmp/ran").exists());
    let rec = d
        .records()
        .into_iter()
        .find(|r| r["kind"] == "bind_failed" && r["pod"]["container_id"] == pod.id.as_str())
        .unwrap_or_else(|| panic!("no bind_failed record; daemon:\n{}", d.stderr()));
    assert_eq!(rec["decision"], "deny", "{rec}");
    assert!(rec["reason"].as_str().unwrap_or("").contains("no-such-scope"), "{rec}");
}

/// A pod's task survives a daemon crash: the restarted daemon re-adopts it with its pod and
/// its root (the scope still means the image's files), keeps judging the container, and the
/// container's exit still ends the task.
#[test]
fn container_task_is_readopted_with_its_pod_after_a_daemon_crash() {
    if !ready("container_task_is_readopted_with_its_pod_after_a_daemon_crash") {
        return;
    }
    let _serial = serial();
    let (mut d, _scopes) = daemon_with_scopes();
    let pod = Pod::new(
        &d,
        &[
            "/bin/sh",
            "-c",
            // Waits (at most a minute) until the test says the daemon is back.
            "echo up > /tmp/up; i=0; while [ ! -e /tmp/go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
             /opt/sh -c 'echo escaped > /tmp/escaped'; /bin/busybox echo after > /tmp/after",
        ],
        &[("warden.dev/scope", "agent")],
    );
    let run = pod.spawn();
    let task = warden_tests::wait_for(Duration::from_secs(20), || {
        d.records()
            .into_iter()
            .find(|r| r["kind"] == "task_start" && r["pod"]["container_id"] == pod.id.as_str())
            .and_then(|r| r["task"].as_str().map(str::to_string))
    })
    .unwrap_or_else(|| panic!("the container was not bound; daemon:\n{}", d.stderr()));
    // The container runs (the hook had its answer: a daemon killed before answering fails
    // the hook, and the container does not start — fail closed).
    let up = warden_tests::wait_for(Duration::from_secs(20), || {
        pod.rootfs().join("tmp/up").exists().then_some(())
    });
    assert!(up.is_some(), "the container did not start; daemon:\n{}", d.stderr());
    d.kill9();
    d.launch(&[]);
    let adopted = d.ready["startup"]["adopted_tasks"].as_array().cloned().unwrap_or_default();
    if !adopted.iter().any(|t| t == task.as_str()) {
        let out = run.wait_with_output();
        panic!("not re-adopted: runc: {out:?}\n{}\nrecords: {:?}", d.ready, d.records_of(&task));
    }
    std::fs::write(pod.rootfs().join("tmp/go"), b"").expect("signal the container");
    let out = run.wait_with_output().expect("runc run");
    assert!(pod.rootfs().join("tmp/after").exists(), "the workload did not go on: {out:?}");
    assert!(!pod.rootfs().join("tmp/escaped").exists(), "the forbidden program ran after the restart");
    let deny =
        d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "exec" && r["decision"] == "deny");
    assert_eq!(deny["pod"]["container_id"], pod.id.as_str(), "{deny}");
    let end = d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "task_end");
    assert!(ended_by_exit(&end), "{end}");
    assert_eq!(end["pod"]["uid"], pod.uid.as_str(), "{end}");
    // The re-adopted scope is still the image's: the image's busybox runs, only /opt/sh is
    // refused.
    let records = d.records_of(&task);
    let denied: Vec<_> = records.iter().filter(|r| r["decision"] == "deny").collect();
    assert!(
        denied.iter().all(|r| r["path"].as_str().unwrap_or("").ends_with("/opt/sh")),
        "something allowed was refused after the restart: {denied:?}"
    );
    assert!(
        records.iter().any(|r| r["kind"] == "exec"
            && r["decision"] == "allow"
            && r["path"].as_str().unwrap_or("").ends_with("/bin/busybox")),
        "the image's busybox did not run after the restart: {records:?}"
    );
}
