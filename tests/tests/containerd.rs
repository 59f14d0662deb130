//! Host tier: the containerd path of docs/kubernetes.md, end to end. Debian's `containerd`
//! runs with a config, root, state directory and socket of the test's own (never the
//! system's), set up as the doc says: the CRI plugin's `base_runtime_spec` is `ctr oci spec`
//! with `warden oci-hook` added for `createRuntime` and `poststop`, and `pod_annotations`
//! passes `warden.dev/*` into each container's spec. The test drives containerd the way the
//! kubelet does — CRI over gRPC (`tests/fixtures/containerd/cri.py`, python3-grpcio) — with a
//! local image imported by `ctr -n k8s.io images import` from an OCI archive of a
//! `busybox-static` root (no registry: the image is also the sandbox image), and a
//! kubepods-style cgroup parent under the test's own cgroup top. Each test runs its own daemon.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use warden_tests::{
    containers::{BUSYBOX, busybox_rootfs, ended_by_exit, random_hex, remove_tree},
    coverage,
    daemon::TestDaemon,
    engine, require, wait_for, warden_bin,
};

const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
const RUNC: &str = "/usr/sbin/runc";
/// Debian's interpreter: the one python3-grpcio is installed for (a `python3` earlier on
/// PATH, e.g. pyenv's, may not have it).
const PYTHON: &str = "/usr/bin/python3";
const IMAGE: &str = "docker.io/warden/busybox:test";
/// containerd 1.6 puts its shims' sockets here whatever its own state directory is.
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// CRI's `NamespaceMode`: `NODE` for the network (no CNI here), `CONTAINER` for pids (what
/// the kubelet asks for v1 pods).
const NODE: u32 = 2;
const CONTAINER: u32 = 1;
/// CRI's `ContainerState`.
const CONTAINER_EXITED: i64 = 2;

fn cri_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/containerd/cri.py")
}

/// Whether this host can run the test. A missing prerequisite fails the test where it must
/// be installed (CI, or `WARDEN_REQUIRE=containerd|all`); elsewhere it is a loud skip.
fn ready(test: &str) -> bool {
    if !require(test, "root") {
        return false;
    }
    let mut missing = Vec::new();
    for b in [CONTAINERD, CTR, SHIM, RUNC, BUSYBOX, PYTHON] {
        if !Path::new(b).exists() {
            missing.push(b.to_string());
        }
    }
    let grpc = Command::new(PYTHON).args(["-c", "import grpc"]).output();
    if !grpc.map(|o| o.status.success()).unwrap_or(false) {
        missing.push(format!("the grpc module of {PYTHON}"));
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test}: missing {} (cargo xtask test installs containerd, runc, busybox-static and python3-grpcio)",
        missing.join(", ")
    );
    let required = std::env::var("WARDEN_REQUIRE").unwrap_or_default();
    if std::env::var_os("CI").is_some() || required.split(',').any(|f| f == "containerd" || f == "all") {
        panic!("{why}");
    }
    println!("SKIP {why}");
    eprintln!("SKIP {why}");
    false
}

/// One containerd of the test's own. Dropping it removes every pod it ran, stops it, kills
/// whatever it left (shims, containers), unmounts what it mounted under its directories and
/// removes its cgroups and directories — also when the test panicked.
struct Containerd {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Option<Child>,
    /// `warden-test-containerd-<pid>-<n>`: the top of the pods' cgroup parents, in every
    /// hierarchy.
    top: String,
    sandboxes: std::cell::RefCell<Vec<String>>,
    /// Entries of [`SHIM_SOCKETS`] before the start, and whether `/run/containerd` existed.
    shim_sockets_before: BTreeSet<String>,
    run_containerd_existed: bool,
}

impl Containerd {
    /// Starts containerd with the hook in its base runtime spec (pointing at `daemon`),
    /// imports the test image and waits until CRI knows it.
    fn start(daemon: &TestDaemon) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = tempfile::Builder::new().prefix("warden-ctrd").tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        let shim_sockets_before = list(Path::new(SHIM_SOCKETS));
        let run_containerd_existed = Path::new("/run/containerd").exists();
        let socket = d.join("containerd.sock");
        let mut me = Containerd {
            dir,
            socket: socket.clone(),
            child: None,
            top: format!("warden-test-containerd-{}-{n}", std::process::id()),
            sandboxes: Default::default(),
            shim_sockets_before,
            run_containerd_existed,
        };
        for sub in ["cni/bin", "cni/net.d", "out"] {
            std::fs::create_dir_all(d.join(sub)).expect("dirs");
        }

        // The base spec, as docs/kubernetes.md says: `ctr oci spec` plus the two hooks.
        let out = Command::new(CTR).args(["oci", "spec"]).output().expect("ctr oci spec");
        assert!(out.status.success(), "ctr oci spec: {}", String::from_utf8_lossy(&out.stderr));
        let mut spec: Value = serde_json::from_slice(&out.stdout).expect("ctr oci spec JSON");
        let hook = json!({
            "path": warden_bin(),
            "args": ["warden", "oci-hook", "--socket", daemon.socket, "--timeout", "20"],
            "timeout": 30,
        });
        spec["hooks"] = json!({"createRuntime": [hook.clone()], "poststop": [hook]});
        let base_spec = d.join("warden-base-spec.json");
        std::fs::write(&base_spec, serde_json::to_vec_pretty(&spec).expect("spec")).expect("base spec");

        let p = |s: &str| d.join(s).display().to_string();
        // Config version 2 (containerd 1.6/1.7). Test-only choices, each from the host the
        // test runs on, not from the documented setup: the `native` snapshotter (no overlay
        // mounts to leak), runc's state under our directory, no CNI (pods use the node's
        // network), and `restrict_oom_score_adj` (this host refuses a negative
        // oom_score_adj even to root, and the sandbox asks for -998).
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.overlayfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      pod_annotations = ["warden.dev/*"]
      base_runtime_spec = "{base_spec}"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{runc_root}"
"#,
            root = p("root"),
            state = p("state"),
            socket = socket.display(),
            cni_bin = p("cni/bin"),
            cni_conf = p("cni/net.d"),
            base_spec = base_spec.display(),
            runc_root = p("runc"),
        );
        std::fs::write(d.join("config.toml"), config).expect("config.toml");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(d.join("config.toml"))
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        me.child = Some(child);
        let version = wait_for(Duration::from_secs(30), || me.cri("version", json!({})).ok());
        let version = version.unwrap_or_else(|| panic!("containerd's CRI did not answer:\n{}", me.log()));
        assert_eq!(version["runtime_name"], "containerd", "{version}");

        // The image: an OCI archive of a busybox-static root.
        let rootfs = d.join("image-rootfs");
        busybox_rootfs(&rootfs);
        let archive = d.join("image.tar");
        let out = Command::new(PYTHON)
            .arg(cri_py())
            .arg("oci-image")
            .args([&rootfs, &archive])
            .arg(IMAGE)
            .output()
            .expect("cri.py oci-image");
        assert!(out.status.success(), "oci-image: {}", String::from_utf8_lossy(&out.stderr));
        let out = Command::new(CTR)
            .arg("--address")
            .arg(&me.socket)
            .args(["-n", "k8s.io", "images", "import", "--snapshotter", "native"])
            .arg(&archive)
            .output()
            .expect("ctr images import");
        assert!(
            out.status.success(),
            "ctr images import: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            me.log()
        );
        // CRI learns of imported images from containerd's events.
        let known = wait_for(Duration::from_secs(10), || {
            me.cri("image_status", json!({"image": {"image": IMAGE}}))
                .ok()
                .filter(|r| r["image"]["repo_tags"].as_array().is_some_and(|t| t.iter().any(|t| t == IMAGE)))
        });
        assert!(known.is_some(), "CRI does not know the imported image:\n{}", me.log());
        me
    }

    /// One CRI call; the response, or the runtime's error.
    fn cri(&self, method: &str, request: Value) -> Result<Value, String> {
        let out = Command::new(PYTHON)
            .arg(cri_py())
            .arg(&self.socket)
            .arg(method)
            .arg(request.to_string())
            .output()
            .expect("run cri.py");
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "{method}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if out.status.success() {
            Ok(v)
        } else {
            Err(v["error"]["details"].as_str().unwrap_or(&v.to_string()).to_string())
        }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<_> = text.lines().filter(|l| !l.contains("level=info msg=\"loading plugin")).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The host directory mounted at `/out` in every container.
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    /// Runs a pod sandbox whose annotations are `annotations`; its cgroup parent is
    /// `/<top>/kubepods/besteffort/pod<uid>` (the kubelet's cgroupfs layout).
    fn run_pod(&self, name: &str, annotations: Value) -> Pod {
        let u = random_hex(16);
        let uid = format!("{}-{}-{}-{}-{}", &u[..8], &u[8..12], &u[12..16], &u[16..20], &u[20..]);
        let cgroup_parent = format!("/{}/kubepods/besteffort/pod{uid}", self.top);
        let config = json!({
            "metadata": {"name": name, "uid": uid, "namespace": "agents"},
            "annotations": annotations,
            "linux": {
                "cgroup_parent": cgroup_parent,
                "security_context": {"namespace_options": {"network": NODE, "pid": CONTAINER}},
            },
        });
        let r = self
            .cri("run_pod_sandbox", json!({"config": config}))
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log()));
        let id = r["pod_sandbox_id"].as_str().expect("sandbox id").to_string();
        self.sandboxes.borrow_mut().push(id.clone());
        Pod { id, uid, name: name.to_string(), cgroup_parent, config }
    }

    /// CreateContainer in `pod`: `command` from the image, `/out` mounted.
    fn create(&self, pod: &Pod, name: &str, command: &[&str]) -> String {
        let config = json!({
            "metadata": {"name": name},
            "image": {"image": IMAGE},
            "command": command,
            "mounts": [{"container_path": "/out", "host_path": self.out().display().to_string()}],
            "linux": {"security_context": {"namespace_options": {"network": NODE, "pid": CONTAINER}}},
        });
        let r = self
            .cri(
                "create_container",
                json!({"pod_sandbox_id": pod.id, "config": config, "sandbox_config": pod.config}),
            )
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log()));
        r["container_id"].as_str().expect("container id").to_string()
    }

    fn start_container(&self, id: &str) -> Result<Value, String> {
        self.cri("start_container", json!({"container_id": id}))
    }

    /// Waits for the container to exit; its CRI status.
    fn wait_exited(&self, id: &str) -> Value {
        let status = wait_for(Duration::from_secs(30), || {
            self.cri("container_status", json!({"container_id": id}))
                .ok()
                .map(|r| r["status"].clone())
                .filter(|s| s["state"].as_i64() == Some(CONTAINER_EXITED))
        });
        status.unwrap_or_else(|| panic!("container {id} did not exit:\n{}", self.log()))
    }
}

struct Pod {
    id: String,
    uid: String,
    name: String,
    cgroup_parent: String,
    config: Value,
}

fn list(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let d = self.dir.path().to_path_buf();
        // The orderly way first: CRI stops and removes each pod and its containers.
        for id in self.sandboxes.borrow().iter() {
            let _ = self.cri("stop_pod_sandbox", json!({"pod_sandbox_id": id}));
            let _ = self.cri("remove_pod_sandbox", json!({"pod_sandbox_id": id}));
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while c.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever is left: containers in our runc root, then the shims this containerd
        // started (their command line names its socket).
        let runc_root = d.join("runc/k8s.io");
        for id in list(&runc_root) {
            let _ =
                Command::new(RUNC).arg("--root").arg(&runc_root).args(["delete", "--force", &id]).output();
        }
        let sock = self.socket.display().to_string();
        for pid in list(Path::new("/proc")).iter().filter_map(|p| p.parse::<i32>().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
                && args.contains(&sock.as_bytes())
            {
                // SAFETY: a shim of the containerd this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // Mounts under our directories (sandbox /dev/shm, container roots), innermost first.
        let prefix = format!("{}/", d.display());
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: valid C string; detaching a mount this test's containerd made.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        // The pods' cgroups, in every hierarchy (runc removes the containers' own).
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
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
        // The shims' sockets containerd 1.6 keeps outside its state directory.
        for name in list(Path::new(SHIM_SOCKETS)).difference(&self.shim_sockets_before) {
            let _ = std::fs::remove_file(Path::new(SHIM_SOCKETS).join(name));
        }
        if !self.run_containerd_existed {
            let _ = std::fs::remove_dir(SHIM_SOCKETS);
            let _ = std::fs::remove_dir("/run/containerd");
        }
        // The snapshots are plain directories (native snapshotter); the TempDir removes them.
    }
}

/// One containerd test at a time: each runs a containerd, its shims and containers; side by
/// side on two cores they starve each other's timing.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A daemon whose scopes directory holds `agent.yaml`: only the image's shell may run, and no
/// egress.
/// The directory is returned to be dropped after the daemon.
fn daemon_with_scopes() -> (TestDaemon, tempfile::TempDir) {
    let scopes = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        scopes.path().join("agent.yaml"),
        "version: 1\ntask: pod-agent\nexec:\n  allow: [/bin/sh]\nnetwork:\n  egress: []\n",
    )
    .expect("scope");
    (TestDaemon::start(&format!("scopes: {}\n", scopes.path().display())), scopes)
}

fn task_of(d: &TestDaemon, container_id: &str) -> String {
    let start = wait_for(Duration::from_secs(10), || {
        d.records()
            .into_iter()
            .find(|r| r["kind"] == "task_start" && r["pod"]["container_id"] == container_id)
    })
    .unwrap_or_else(|| panic!("no task_start for container {container_id}; daemon:\n{}", d.stderr()));
    start["task"].as_str().expect("task id").to_string()
}

/// The pod fields CRI gave the container, on a record.
fn assert_pod(r: &Value, pod: &Pod, container: &str, container_id: &str) {
    let p = &r["pod"];
    assert_eq!(p["uid"], pod.uid.as_str(), "{r}");
    assert_eq!(p["namespace"], "agents", "{r}");
    assert_eq!(p["name"], pod.name.as_str(), "{r}");
    assert_eq!(p["container"], container, "{r}");
    assert_eq!(p["container_id"], container_id, "{r}");
    assert_eq!(p["runtime"], "containerd", "{r}");
}

/// An annotated pod run through containerd's CRI: a container whose first command is
/// outside the scope is refused before it runs and recorded with the pod as CRI named it; an
/// allowed container of the same pod runs with zero denials; a third one's connection the
/// scope does not list is refused and recorded with the pod; each container's exit ends its
/// task; the pod's sandbox is never bound.
#[test]
fn containerd_cri_pod_containers_are_bound_before_their_first_instruction() {
    let test = "containerd_cri_pod_containers_are_bound_before_their_first_instruction";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let (d, _scopes) = daemon_with_scopes();
    let c = Containerd::start(&d);
    let pod = c.run_pod("agent-ctrd", json!({"warden.dev/scope": "agent"}));

    // 1. The first command is /opt/sh: not in the scope.
    let refused = c.create(&pod, "refused", &["/opt/sh", "-c", "echo escaped > /out/escaped"]);
    c.start_container(&refused).unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
    let status = c.wait_exited(&refused);
    assert!(!c.out().join("escaped").exists(), "the forbidden first command ran: {status}");
    assert_ne!(status["exit_code"], 0, "{status}");
    let task = task_of(&d, &refused);
    let deny =
        d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "exec" && r["decision"] == "deny");
    assert!(deny["path"].as_str().unwrap_or("").ends_with("/opt/sh"), "{deny}");
    assert_pod(&deny, &pod, "refused", &refused);
    if engine() == "fallback" {
        assert_eq!(deny["action"], "kill", "the fallback engine kills before the first instruction: {deny}");
    }
    let exec = if deny["action"] == "kill" { "killed" } else { "enforced" };
    coverage("pod exec identity (containerd)", "syscall", exec);
    let start = d.records_of(&task).into_iter().find(|r| r["kind"] == "task_start").expect("task_start");
    assert_pod(&start, &pod, "refused", &refused);
    assert!(
        start["cgroup"].as_str().unwrap_or("").ends_with(&format!("{}/{refused}", pod.cgroup_parent)),
        "not the cgroup containerd made: {start}"
    );
    let end = d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "task_end");
    assert!(ended_by_exit(&end), "{end}");
    for r in d.records_of(&task) {
        assert_eq!(r["pod"]["container_id"], refused.as_str(), "a record of the task without the pod: {r}");
    }

    // 2. An allowed workload in the same pod.
    let runner = c.create(
        &pod,
        "runner",
        &["/bin/sh", "-c", "echo hello > /out/hello && cat /out/hello > /out/copy && ls / > /dev/null"],
    );
    c.start_container(&runner).unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
    let status = c.wait_exited(&runner);
    assert_eq!(
        status["exit_code"].as_i64().unwrap_or(0),
        0,
        "the allowed workload failed: {status}\n{}",
        d.stderr()
    );
    assert_eq!(std::fs::read_to_string(c.out().join("copy")).expect("workload output"), "hello\n");
    let task = task_of(&d, &runner);
    let end = d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "task_end");
    assert!(ended_by_exit(&end), "{end}");
    assert_pod(&end, &pod, "runner", &runner);
    let records = d.records_of(&task);
    let denials: Vec<_> =
        records.iter().filter(|r| r["decision"] == "deny" || r["decision"] == "audit").collect();
    assert!(denials.is_empty(), "an allowed workload was refused: {denials:?}");
    assert!(
        records.iter().any(|r| r["kind"] == "exec" && r["decision"] == "allow"),
        "the workload did not run under the task: {records:?}"
    );

    // 3. Egress the scope does not grant (it grants none), from a container on the node's
    // network to a listener of the test's: refused in the kernel and recorded with the pod.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("port").port();
    let script = format!("nc -w 2 127.0.0.1 {port} < /dev/null; echo $? > /out/nc");
    let net = c.create(&pod, "net", &["/bin/sh", "-c", &script]);
    c.start_container(&net).unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
    let task = task_of(&d, &net);
    let deny =
        d.wait_record(&task, Duration::from_secs(10), |r| r["kind"] == "connect" && r["decision"] == "deny");
    assert_pod(&deny, &pod, "net", &net);
    assert_eq!(deny["port"], port, "{deny}");
    c.wait_exited(&net);
    let nc = std::fs::read_to_string(c.out().join("nc")).expect("the net container ran");
    assert_ne!(nc.trim(), "0", "the connection was made");
    assert!(listener.accept().is_err(), "the listener was reached from the container");
    coverage("pod egress (containerd)", "syscall", "enforced");

    // The sandbox ("pause") container is never bound, and no task outlives its container.
    assert!(
        !d.records().iter().any(|r| r["pod"]["container_id"] == pod.id.as_str()),
        "the pod's sandbox was bound"
    );
    let out = d.warden(&["task", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("task list JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(0), "a container's task outlived it: {list}");
    let out = d.warden(&["verify", d.log.to_str().expect("utf-8")]);
    assert!(out.status.success(), "verify: {}", String::from_utf8_lossy(&out.stdout));
    println!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}

/// With the daemon down, containerd cannot start an annotated pod's container: the hook
/// fails `runc create`, StartContainer returns the hook's reason, and the command never ran.
#[test]
fn containerd_cri_container_does_not_start_without_the_daemon() {
    let test = "containerd_cri_container_does_not_start_without_the_daemon";
    if !ready(test) {
        return;
    }
    let _serial = serial();
    let t0 = Instant::now();
    let (mut d, _scopes) = daemon_with_scopes();
    let c = Containerd::start(&d);
    let pod = c.run_pod("agent-closed", json!({"warden.dev/scope": "agent"}));
    d.stop();
    let id = c.create(&pod, "runner", &["/bin/sh", "-c", "echo ran > /out/ran"]);
    let err = c.start_container(&id).expect_err("the container started without the daemon");
    assert!(err.contains("cannot be bound"), "containerd's error does not carry the hook's reason: {err}");
    assert!(!c.out().join("ran").exists(), "the container's command ran unbound");
    coverage("pod without the daemon (containerd)", "syscall", "enforced (no record)");
    println!("{test}: {:.1} s", t0.elapsed().as_secs_f64());
}
