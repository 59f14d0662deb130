//! The lifecycle against the fake host: no root, no kernel.
use std::path::Path;

use super::{
    EndFacts, Launched, Lifecycle, Origin, SandboxSpec, Step, StepError, Task, fake::FakeHost, standard_steps,
};
use crate::{lifecycle::HostError, scope::Scope};

const SLOT: u32 = 3;

/// A scope that uses every standard step: an issued secret, egress (by address and by name),
/// a process limit.
fn scope(host: &FakeHost) -> Scope {
    let src = host.dir().join("token");
    std::fs::write(&src, "s3cr3t").unwrap();
    let text = format!(
        "version: 1\ntask: t\nexec:\n  allow: [/bin/sh]\nsecrets:\n  - name: tok\n    from: file:{}\n    \
         tools: [/bin/sh]\nnetwork:\n  egress:\n    - to: 127.0.0.1\n    - host: api.example.org\n  dns:\n    \
         upstream: [127.0.0.53]\nlimits:\n  processes: 8\n",
        src.display()
    );
    Scope::parse(&text, Path::new("s.yaml")).unwrap()
}

fn task(host: &FakeHost) -> Task {
    Task::new("t-1".into(), SLOT, scope(host), SandboxSpec::Create)
}

fn no_launch(_: &Task) -> Launched {
    Launched::default()
}

/// Nothing of the task is left: not on the machine, not in the pipeline.
fn assert_nothing_left(host: &mut FakeHost, what: &str) {
    assert!(host.held.is_empty(), "{what}: left behind {:?}", host.held);
    assert!(!host.node.secrets_dir.join("t-1").exists(), "{what}: the secrets directory is still there");
    assert_eq!(host.pipeline.chains(), 0, "{what}: the task's chain is still open");
    assert!(host.pipeline.unregister(SLOT).is_none(), "{what}: the slot is still registered");
}

#[test]
fn a_task_starts_and_ends_through_every_step() {
    let lc = Lifecycle::default();
    let mut host = FakeHost::new();
    let run = lc.start(task(&host), &mut host, &mut no_launch).unwrap();
    let held: Vec<_> = host.held.iter().map(|h| h.split(':').next().unwrap()).collect();
    assert_eq!(held, ["bound", "cgroup", "dns", "egress", "memory", "pids", "secrets"]);
    let t = &run.task;
    // The launch gets the sandbox, the v1 memory and pids twins and the secret's variable.
    assert_eq!(t.launch.procs_files.len(), 3);
    // No `limits.memory` in the scope: the node's default.
    assert_eq!(t.memory_limit, Some(1 << 30));
    assert_eq!(t.launch.env.len(), 1);
    assert_eq!(t.launch.env[0].0, "WARDEN_SECRET_TOK");
    assert!(t.identity.is_some());
    assert_eq!(t.unenforced, ["secrets-by-tool"]);
    let start = host.records.last("task_start").unwrap();
    assert_eq!(start.engine, Some("fallback"));
    assert_eq!(start.secrets.as_ref().map(Vec::len), Some(1));

    host.procs = 2;
    let ended = lc.end(run, &mut host, "done".into());
    assert_eq!(ended.killed, 2);
    assert!(ended.errors.is_empty(), "{:?}", ended.errors);
    assert_eq!(host.records.kinds(), ["task_start", "task_end", "checkpoint"]);
    assert_eq!(host.records.last("task_end").unwrap().reason.as_deref(), Some("done"));
    assert_nothing_left(&mut host, "after the end");
}

#[test]
fn the_end_revokes_in_reverse_order() {
    let lc = Lifecycle::default();
    let mut host = FakeHost::new();
    let run = lc.start(task(&host), &mut host, &mut no_launch).unwrap();
    let from = host.log.len();
    lc.end(run, &mut host, "done".into());
    let ops: Vec<_> = host.log[from..].iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        ops,
        // The resolver stops before the tables go: no grant is in flight when they are removed.
        [
            "cgroup_kill",
            "dns_unregister",
            "unbind",
            "egress_detach",
            "memory_remove",
            "pids_remove",
            "cgroup_remove",
            "secrets_destroy"
        ]
    );
}

/// Fails the N-th host operation of a start, for every N: the steps before the failing one
/// are undone, last first, and nothing is left behind.
#[test]
fn every_failing_host_operation_leaves_nothing_behind() {
    let lc = Lifecycle::default();
    let names = lc.step_names();
    let mut failed_steps = Vec::new();
    for n in 1.. {
        let mut host = FakeHost::new();
        host.fail_at = Some(n);
        let t = task(&host);
        match lc.start(t, &mut host, &mut no_launch) {
            Ok(run) => {
                assert!(n > 1, "the start makes host operations");
                // The end gives back everything the complete start took.
                lc.end(run, &mut host, "done".into());
                assert_nothing_left(&mut host, "after a complete start and end");
                break;
            }
            Err(f) => {
                let at = names.iter().position(|s| *s == f.error.step).unwrap();
                let mut expect: Vec<_> = names[..at].to_vec();
                expect.reverse();
                assert_eq!(f.undone, expect, "operation {n} ({}) failed", host.log[n - 1]);
                assert!(host.records.kinds().is_empty(), "no task_start for a task that did not start");
                let what = format!("operation {n} ({}) failed", host.log[n - 1]);
                assert_nothing_left(&mut host, &what);
                failed_steps.push(f.error.step);
            }
        }
    }
    failed_steps.dedup();
    assert_eq!(failed_steps, ["secrets", "sandbox", "limits", "records", "egress", "tables", "dns"]);
}

/// A step that fails without touching the host.
struct Fails(&'static str);

impl Step for Fails {
    fn name(&self) -> &'static str {
        self.0
    }
    fn start(&mut self, _: &mut Task, _: &mut dyn super::Host) -> Result<(), StepError> {
        Err(StepError::runtime(self.0, HostError::Refused("fails".into())))
    }
    fn end(&mut self, _: &mut Task, _: &mut dyn super::Host) -> Result<(), StepError> {
        Ok(())
    }
}

/// Step N fails (each of them, the ones that make no host operation too): steps 1..N-1 are
/// undone and nothing is left behind.
#[test]
fn every_failing_step_leaves_nothing_behind() {
    let count = standard_steps().len();
    for n in 0..count {
        let lc = Lifecycle::with_steps(move || {
            let mut steps = standard_steps();
            let name = steps[n].name();
            steps[n] = Box::new(Fails(name));
            steps
        });
        let names = lc.step_names();
        let mut host = FakeHost::new();
        let f = lc.start(task(&host), &mut host, &mut no_launch).unwrap_err();
        assert_eq!(f.error.step, names[n]);
        let mut expect = names[..n].to_vec();
        expect.reverse();
        assert_eq!(f.undone, expect);
        assert_nothing_left(&mut host, &format!("step {} failed", names[n]));
    }
}

#[test]
fn launch_facts_reach_task_start() {
    let lc = Lifecycle::default();
    let mut host = FakeHost::new();
    let run = lc
        .start(task(&host), &mut host, &mut |t| Launched {
            pid: Some(42),
            ppid: Some(1),
            exe: Some("/bin/sh".into()),
            cmd: Some(vec![t.id.clone()]),
        })
        .unwrap();
    let start = host.records.last("task_start").unwrap();
    assert_eq!((start.pid, start.ppid), (Some(42), Some(1)));
    assert_eq!(start.cmd, Some(vec!["t-1".to_string()]));
    let mut run = run;
    lc.stop(&mut run, &mut host);
    let facts =
        EndFacts { reason: "exited".into(), pid: Some(42), exit_status: Some(3), ..Default::default() };
    lc.finish(run, &mut host, facts);
    let end = host.records.last("task_end").unwrap();
    assert_eq!((end.pid, end.exit_status, end.reason.as_deref()), (Some(42), Some(3), Some("exited")));
}

#[test]
fn a_failing_end_step_does_not_stop_the_others() {
    let lc = Lifecycle::default();
    let mut host = FakeHost::new();
    let mut run = lc.start(task(&host), &mut host, &mut no_launch).unwrap();
    lc.stop(&mut run, &mut host);
    // After the kill come the resolver's unregistration, then the unbind: fail the unbind.
    host.fail_at = Some(host.ops + 2);
    let ended = lc.finish(
        run,
        &mut host,
        EndFacts { reason: "exited".into(), exit_status: Some(0), ..Default::default() },
    );
    assert_eq!(ended.errors.len(), 1, "{:?}", ended.errors);
    assert!(ended.errors[0].starts_with("tables: "), "{:?}", ended.errors);
    assert_eq!(host.held.iter().collect::<Vec<_>>(), ["bound:3"], "only the failed step's part is left");
    let end = host.records.last("task_end").unwrap();
    assert!(end.reason.unwrap().starts_with("exited; revocation errors: tables: "));
    assert_eq!(end.exit_status, Some(0));
}

/// What a restarted daemon knows of a task: its record.
fn adopted(run: &super::Running) -> Task {
    let t = &run.task;
    let mut a = Task::new(t.id.clone(), t.slot, scope_of(t), t.sandbox.clone());
    a.origin = Origin::Adopted;
    a.cgroup_id = t.cgroup_id;
    a.secrets_dir = t.secrets_dir.clone();
    a.secrets = t.secrets.clone();
    a.pids_v1 = t.pids_v1.clone();
    a.saved = t.saved.clone();
    a
}

fn scope_of(t: &Task) -> Scope {
    Scope::parse(&t.scope.text, &t.scope.source).unwrap()
}

#[test]
fn a_restarted_daemon_adopts_and_ends_the_task() {
    let lc = Lifecycle::default();
    let mut host = FakeHost::new();
    let run = lc.start(task(&host), &mut host, &mut no_launch).unwrap();
    let held = host.held.clone();
    let a = adopted(&run);
    std::mem::forget(run);
    let run = lc.adopt(a, &mut host).unwrap();
    assert_eq!(host.held, held, "adoption re-binds what is there, nothing more");
    assert_eq!(run.task.launch.procs_files.len(), 3);
    assert_eq!(run.task.launch.env.len(), 1);
    lc.end(run, &mut host, "done".into());
    assert_nothing_left(&mut host, "after ending an adopted task");
}

#[test]
fn a_task_whose_sandbox_is_gone_is_revoked_entirely() {
    let lc = Lifecycle::default();
    let mut host = FakeHost::new();
    let run = lc.start(task(&host), &mut host, &mut no_launch).unwrap();
    let a = adopted(&run);
    std::mem::forget(run);
    let cg = host.node.sandbox_parent().join("t-1");
    host.cgroups.remove(&cg);
    host.held.remove(&format!("cgroup:{}", cg.display()));
    let (why, ended) = lc.adopt(a, &mut host).unwrap_err();
    assert!(why.contains("its sandbox is gone"), "{why}");
    assert!(ended.errors.is_empty(), "{:?}", ended.errors);
    let end = host.records.last("task_end").unwrap();
    assert!(end.reason.unwrap().starts_with("could not be re-adopted after a daemon restart"));
    assert_nothing_left(&mut host, "after ending an unadoptable task");
}

#[test]
fn binding_an_existing_cgroup_leaves_it_in_place() {
    let lc = Lifecycle::default();
    let mut host = FakeHost::new();
    let path = std::path::PathBuf::from("/fake/cgroup2/pod/ctr");
    host.cgroups.insert(path.clone(), 7);
    let t = Task::new("t-1".into(), SLOT, scope(&host), SandboxSpec::Bind(path.clone()));
    let run = lc.start(t, &mut host, &mut no_launch).unwrap();
    assert_eq!(run.task.cgroup.as_ref().map(|c| c.id()), Some(7));
    assert!(run.task.unenforced.contains(&"files-for-processes-started-outside-warden".to_string()));
    lc.end(run, &mut host, "done".into());
    assert!(host.cgroups.contains_key(&path), "a bound cgroup is not removed");
    assert_nothing_left(&mut host, "after ending a bound task");
}

/// A pod's container: the scope's paths are the image's, the pod is on every record and in
/// the identity document, limits are the pod's, what the engine leaves unenforced is listed
/// per control, and ending it leaves nothing behind (the container's cgroup stays).
#[test]
fn a_containers_task_is_placed_in_its_root_and_names_its_pod() {
    use std::os::unix::fs::PermissionsExt;
    let lc = Lifecycle::default();
    let mut host = FakeHost::new();
    let root = host.dir().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/busybox"), b"\x7fELF-not-really").unwrap();
    std::fs::set_permissions(root.join("bin/busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // An absolute link inside the image: the image's busybox, not the node's.
    std::os::unix::fs::symlink("/bin/busybox", root.join("bin/sh")).unwrap();
    let scope = Scope::parse(
        "version: 1\ntask: t\nexec:\n  allow: [/bin/sh]\nlimits:\n  processes: 8\n",
        Path::new("pod.yaml"),
    )
    .unwrap();
    let path = std::path::PathBuf::from("/fake/cgroup2/kubepods/pod/ctr");
    host.cgroups.insert(path.clone(), 9);
    let pod = crate::k8s::pod::PodIdentity {
        uid: "3d1f0b8e-5c2a-4f6e-9a7b-0c1d2e3f4a5b".into(),
        namespace: "agents".into(),
        name: "agent-1".into(),
        container: "runner".into(),
        container_id: "ab".repeat(32),
        runtime: "containerd".into(),
    };
    let mut t = Task::new("t-1".into(), SLOT, scope, SandboxSpec::Bind(path.clone()));
    t.container = Some(crate::k8s::Container::new(pod.clone(), root.clone()));
    let run = lc.start(t, &mut host, &mut no_launch).unwrap();
    let exec = run.task.compiled.as_ref().unwrap().exec.clone().unwrap();
    assert_eq!(exec[0].path, std::fs::canonicalize(root.join("bin/busybox")).unwrap());
    assert!(!host.held.iter().any(|h| h.starts_with("pids")), "a pod's limits are its own: {:?}", host.held);
    let u = &run.task.unenforced;
    for c in ["files-in-container", "ptrace-in-container", "limits.processes-in-container"] {
        assert!(u.contains(&c.to_string()), "{c} missing from {u:?}");
    }
    assert_eq!(run.task.identity.as_ref().unwrap().pod.as_ref(), Some(&pod));
    assert!(run.task.saved.contains_key(crate::k8s::step::SAVED_KEY));
    assert_eq!(host.records.last("task_start").unwrap().pod.as_deref(), Some(&pod));
    lc.end(run, &mut host, "container stopped".into());
    assert_eq!(host.records.last("task_end").unwrap().pod.as_deref(), Some(&pod));
    assert!(host.cgroups.contains_key(&path), "the container's cgroup is the runtime's");
    assert_nothing_left(&mut host, "after ending a container's task");
}
