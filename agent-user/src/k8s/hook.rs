//! The OCI runtime hook's side: what the runtime hands a hook (the container's state on
//! stdin; the bundle's `config.json`) and what the hook asks the daemon.
//!
//! One command serves every phase; the state's `status` says which: `creating`/`created`
//! (the `createRuntime`/`prestart` hooks: the container's process exists in its cgroup but
//! has not run the image's first instruction) binds, `stopped` (`poststop`) ends.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::pod::{self, Binding, BindingError};

/// The OCI state a runtime writes to a hook's stdin (runtime-spec `state.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    #[serde(default)]
    pub oci_version: String,
    pub id: String,
    pub status: String,
    /// The container's process (host pid namespace: the hook runs in the runtime's).
    #[serde(default)]
    pub pid: Option<u32>,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The parts of the bundle's `config.json` the hook reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Spec {
    #[serde(default)]
    pub root: Option<SpecRoot>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SpecRoot {
    pub path: PathBuf,
}

/// Which phase the hook runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the container's first instruction: bind.
    Create,
    /// After the container stopped: end the task.
    Stop,
}

/// Errors of the hook that are the installation's fault (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("reading the container state from stdin: {0} (is `warden oci-hook` installed as an OCI hook?)")]
    State(serde_json::Error),
    #[error(
        "the hook ran with container status {0:?}; install `warden oci-hook` for createRuntime (or prestart) \
         and poststop, where the status is creating/created and stopped"
    )]
    Phase(String),
    #[error("{path}: {source}")]
    Spec { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    SpecJson { path: PathBuf, source: serde_json::Error },
    #[error("the container state has no pid in the {0:?} phase")]
    NoPid(String),
    #[error(transparent)]
    Binding(#[from] BindingError),
}

impl State {
    pub fn parse(bytes: &[u8]) -> Result<Self, HookError> {
        serde_json::from_slice(bytes).map_err(HookError::State)
    }

    pub fn phase(&self) -> Result<Phase, HookError> {
        match self.status.as_str() {
            "creating" | "created" => Ok(Phase::Create),
            "stopped" => Ok(Phase::Stop),
            other => Err(HookError::Phase(other.to_string())),
        }
    }
}

impl Spec {
    pub fn load(bundle: &Path) -> Result<Self, HookError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| HookError::Spec { path: path.clone(), source })?;
        serde_json::from_slice(&text).map_err(|source| HookError::SpecJson { path, source })
    }

    /// The root filesystem as an absolute path (a relative `root.path` is the bundle's).
    pub fn rootfs(&self, bundle: &Path) -> PathBuf {
        let p = self.root.as_ref().map(|r| r.path.clone()).unwrap_or_else(|| PathBuf::from("rootfs"));
        if p.is_absolute() { p } else { bundle.join(p) }
    }
}

/// The annotations that matter: the spec's, with the state's for keys the spec lacks.
/// Only Warden's and the Kubernetes runtimes' keys are kept (they are all the daemon reads).
pub fn annotations(state: &State, spec: &Spec) -> BTreeMap<String, String> {
    let mut a = state.annotations.clone();
    a.extend(spec.annotations.clone());
    a.retain(|k, _| k.starts_with("warden.dev/") || k.starts_with("io.kubernetes."));
    a
}

/// The container's name in the pod spec, as the runtimes annotate it.
pub fn container_name(a: &BTreeMap<String, String>) -> &str {
    [pod::keys::CRI_CONTAINER_NAME, pod::keys::CONTAINER_NAME]
        .iter()
        .find_map(|k| a.get(*k))
        .map(String::as_str)
        .unwrap_or("")
}

/// What the hook should do with a container: nothing (not opted in, or a pod sandbox), or
/// bind it as the annotations ask.
pub fn wanted(a: &BTreeMap<String, String>) -> Result<Option<Binding>, HookError> {
    if pod::is_sandbox(a) {
        return Ok(None);
    }
    Ok(pod::binding_for(a, container_name(a))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_of_each_phase() {
        let s = State::parse(
            br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b","annotations":{"x":"y"}}"#,
        )
        .unwrap();
        assert_eq!((s.phase().unwrap(), s.pid), (Phase::Create, Some(42)));
        let s =
            State::parse(br#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/b"}"#).unwrap();
        assert_eq!(s.phase().unwrap(), Phase::Stop);
        let s = State::parse(br#"{"id":"c1","status":"running","pid":4,"bundle":"/b"}"#).unwrap();
        assert!(matches!(s.phase(), Err(HookError::Phase(_))));
        assert!(matches!(State::parse(b"not json"), Err(HookError::State(_))));
    }

    #[test]
    fn spec_annotations_win_and_only_relevant_keys_pass() {
        let state = State::parse(
            br#"{"id":"c","status":"creating","pid":1,"bundle":"/b","annotations":{"warden.dev/scope":"old","other":"x"}}"#,
        )
        .unwrap();
        let spec: Spec = serde_json::from_str(
            r#"{"root":{"path":"rootfs"},"annotations":{"warden.dev/scope":"s","io.kubernetes.cri.container-name":"runner","com.example":"z"}}"#,
        )
        .unwrap();
        let a = annotations(&state, &spec);
        assert_eq!(a.len(), 2);
        assert_eq!(a["warden.dev/scope"], "s");
        assert_eq!(spec.rootfs(Path::new("/b")), PathBuf::from("/b/rootfs"));
        assert_eq!(wanted(&a).unwrap().unwrap().scope, "s");
        let mut sandbox = a.clone();
        sandbox.insert(pod::keys::CRI_CONTAINER_TYPE.into(), "sandbox".into());
        assert_eq!(wanted(&sandbox).unwrap(), None);
    }
}
