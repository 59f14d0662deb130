//! The lifecycle step `container`: for a task bound to a pod's container, resolves the
//! scope's paths inside the container's root (before `scope` compiles them) and names the
//! pod on every record of the task from here on. Saved for re-adoption under `container`.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{pod::PodIdentity, root::Root};
use crate::lifecycle::{Host, HostError, Step, StepError, Task};

/// A task's container: its pod, and its root where the scope's paths are resolved.
#[derive(Debug)]
pub struct Container {
    pub pod: PodIdentity,
    /// The container's root filesystem, as the daemon sees it.
    pub rootfs: PathBuf,
    /// Opened by the `container` step.
    pub root: Option<Root>,
}

impl Container {
    pub fn new(pod: PodIdentity, rootfs: PathBuf) -> Self {
        Self { pod, rootfs, root: None }
    }

    /// From what the step saved (re-adoption).
    pub fn from_saved(v: &serde_json::Value) -> Option<Self> {
        let s: Saved = serde_json::from_value(v.clone()).ok()?;
        Some(Self::new(s.pod, s.rootfs))
    }
}

/// What re-adoption needs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    pod: PodIdentity,
    rootfs: PathBuf,
}

/// The key in [`Task::saved`].
pub const SAVED_KEY: &str = "container";

/// The `container` step (first: the scope's paths must be the container's before anything
/// reads them).
pub struct ContainerStep;

impl Step for ContainerStep {
    fn name(&self) -> &'static str {
        "container"
    }

    fn start(&mut self, task: &mut Task, host: &mut dyn Host) -> Result<(), StepError> {
        let Some(c) = task.container.as_mut() else { return Ok(()) };
        let refused = |e: &dyn std::fmt::Display| HostError::Refused(e.to_string());
        let root = Root::open(&c.rootfs).map_err(|e| StepError::usage("container", refused(&e)))?;
        task.scope = root.place(&task.scope).map_err(|e| StepError::usage("container", refused(&e)))?;
        c.root = Some(root);
        let saved = Saved { pod: c.pod.clone(), rootfs: c.rootfs.clone() };
        let pod = c.pod.clone();
        task.saved.insert(
            SAVED_KEY.into(),
            serde_json::to_value(saved).map_err(|e| StepError::runtime("container", refused(&e)))?,
        );
        host.pipeline().set_pod(&task.id, pod);
        Ok(())
    }

    /// The pod leaves the pipeline with the task's chain (the lifecycle's close).
    fn end(&mut self, _task: &mut Task, _host: &mut dyn Host) -> Result<(), StepError> {
        Ok(())
    }
}

/// What stays unenforced for a pod's container, by control (`task_start.unenforced`).
///
/// On the fallback engine Landlock and seccomp are applied by the task's first process to
/// itself before exec; a container's first process is the runtime's, so only the kernel's
/// per-cgroup checks hold: exec identity (killed at `sched_process_exec`) and egress (cgroup
/// socket programs). On both engines the protected defaults are the node's files, not the
/// image's, and the pod's own limits stand in for `limits.processes`.
pub fn container_unenforced(lsm: bool, process_limit: bool) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if !lsm {
        v.extend(
            [
                "files",
                "secrets",
                "environ",
                "signals",
                "ptrace",
                "bpf",
                "mount",
                "modules",
                "cgroup-escape",
                "io-uring",
            ]
            .iter()
            .map(|s| format!("{s}-in-container")),
        );
    }
    v.push("protected-defaults-in-container".into());
    if process_limit {
        v.push("limits.processes-in-container".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_round_trips() {
        let pod = PodIdentity { uid: "u".into(), container_id: "c".into(), ..Default::default() };
        let v = serde_json::to_value(Saved { pod: pod.clone(), rootfs: "/r".into() }).unwrap();
        let c = Container::from_saved(&v).unwrap();
        assert_eq!((c.pod, c.rootfs), (pod, PathBuf::from("/r")));
        assert!(Container::from_saved(&serde_json::json!({"pod": 1})).is_none());
    }

    #[test]
    fn fallback_lists_every_confinement_control_for_pods() {
        let f = container_unenforced(false, true);
        assert!(
            f.contains(&"files-in-container".to_string()) && f.contains(&"ptrace-in-container".to_string())
        );
        assert!(f.contains(&"limits.processes-in-container".to_string()));
        assert_eq!(container_unenforced(true, false), vec!["protected-defaults-in-container".to_string()]);
    }
}
