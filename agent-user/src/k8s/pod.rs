//! Pod identity: which pod and container a cgroup belongs to, from the two places a node
//! can learn it without asking the API server — the container's cgroup path (kubelet's
//! layout, under either cgroup driver) and the OCI annotations the CRI runtime writes into
//! the container's spec.
//!
//! The cgroup path is the authority for the pod UID and the container id (the kubelet and
//! the runtime put the container there; a pod's author cannot choose it). Annotations add
//! the names. When both name a pod UID and they differ, the identity is refused.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A container of a pod, as it appears on every record of its task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PodIdentity {
    /// The pod's UID (`metadata.uid`), with dashes.
    pub uid: String,
    /// Namespace and name; empty when the runtime's annotations do not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The container's name in the pod spec; empty when the annotations do not say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// The runtime's container id (64 hex digits under containerd, CRI-O and docker).
    pub container_id: String,
    /// `containerd`, `cri-o` or `docker`, when the cgroup path or the annotations tell.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
}

/// kubelet's QoS classes, as they appear in the cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a kubelet-style cgroup path says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPod {
    pub pod_uid: String,
    pub qos: Qos,
    /// The container id, when the path goes down to a container's cgroup.
    pub container_id: Option<String>,
    /// The runtime, when its prefix tells (`cri-containerd-`, `crio-`, `docker-`).
    pub runtime: Option<&'static str>,
    /// `systemd` or `cgroupfs`.
    pub driver: &'static str,
}

/// Why an identity could not be established.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("cgroup {0} is not a pod's container cgroup (no kubepods/pod<uid>/<container> in its path)")]
    NotAPod(String),
    #[error(
        "the annotations name pod {annotated} but the container's cgroup {cgroup} belongs to pod {from_cgroup}; \
         refusing an identity that does not agree with the kubelet's"
    )]
    UidMismatch { annotated: String, from_cgroup: String, cgroup: String },
    #[error(
        "the annotations name container {annotated} but the runtime's container id is {runtime}; \
         refusing an identity that does not agree with the runtime's"
    )]
    IdMismatch { annotated: String, runtime: String },
}

/// A pod UID: 32 hex digits in the 8-4-4-4-12 shape, or the 32 digits without dashes.
/// (Static pods have an md5 hex UID without dashes.)
fn uid_from(s: &str) -> Option<String> {
    let s = s.replace('_', "-");
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    if s.contains('-') {
        let parts: Vec<usize> = s.split('-').map(str::len).collect();
        if parts != [8, 4, 4, 4, 12] {
            return None;
        }
    }
    Some(s.to_ascii_lowercase())
}

/// A container id: 64 lower-case hex digits (containerd, CRI-O, docker).
fn container_id_from(s: &str) -> Option<String> {
    (s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// The runtime prefixes of a container's leaf under the systemd driver (and CRI-O's under
/// cgroupfs), longest first.
const LEAF_PREFIXES: &[(&str, &str)] =
    &[("cri-containerd-", "containerd"), ("crio-", "cri-o"), ("docker-", "docker")];

/// Parses a container's cgroup path (as in `/proc/PID/cgroup` or relative to the cgroup2
/// mount). Accepts any prefix above `kubepods` (kind, nested kubelets, `kubelet.slice`).
///
/// - cgroupfs: `.../kubepods[/burstable|/besteffort]/pod<uid>/<id>` (CRI-O: `crio-<id>`)
/// - systemd: `.../kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/<runtime>-<id>.scope`
pub fn parse_cgroup_path(path: &str) -> Result<CgroupPod, PodError> {
    let not = || PodError::NotAPod(path.to_string());
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // The segment that names the pod, and what comes after it.
    for (i, seg) in parts.iter().enumerate() {
        let (uid, qos, driver) = if let Some(rest) = seg.strip_suffix(".slice") {
            // systemd: kubepods-pod<uid>.slice, kubepods-burstable-pod<uid>.slice
            let Some(at) = rest.rfind("-pod") else { continue };
            let head = &rest[..at];
            let qos = match head
                .strip_suffix("kubepods")
                .map(|_| "")
                .or_else(|| head.rsplit_once("kubepods-").map(|(_, q)| q))
            {
                Some("") => Qos::Guaranteed,
                Some("burstable") => Qos::Burstable,
                Some("besteffort") => Qos::BestEffort,
                _ => continue,
            };
            let Some(uid) = uid_from(&rest[at + 4..]) else { continue };
            (uid, qos, "systemd")
        } else if let Some(u) = seg.strip_prefix("pod") {
            // cgroupfs: .../kubepods/[qos/]pod<uid>
            let Some(uid) = uid_from(u) else { continue };
            let qos = match (i.checked_sub(1).map(|j| parts[j]), i.checked_sub(2).map(|j| parts[j])) {
                (Some("kubepods"), _) => Qos::Guaranteed,
                (Some("burstable"), Some("kubepods")) => Qos::Burstable,
                (Some("besteffort"), Some("kubepods")) => Qos::BestEffort,
                _ => continue,
            };
            (uid, qos, "cgroupfs")
        } else {
            continue;
        };
        let (container_id, runtime) = match parts.get(i + 1) {
            None => (None, None),
            Some(leaf) => {
                let leaf = leaf.strip_suffix(".scope").unwrap_or(leaf);
                let (id, rt) = LEAF_PREFIXES
                    .iter()
                    .find_map(|(p, rt)| leaf.strip_prefix(p).map(|id| (id, Some(*rt))))
                    .unwrap_or((leaf, None));
                // A leaf that is not a container id (e.g. crio-conmon-<id>) is not a container.
                let id = container_id_from(id).ok_or_else(not)?;
                (Some(id), rt)
            }
        };
        // Anything below the container's cgroup is the container's own nesting.
        return Ok(CgroupPod { pod_uid: uid, qos, container_id, runtime, driver });
    }
    Err(not())
}

/// Annotation keys the CRI runtimes write into each container's OCI spec.
pub mod keys {
    // containerd (CRI plugin)
    pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CRI_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    // CRI-O (and the kubelet's labels docker copies)
    pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
    pub const CRIO_CONTAINER_ID: &str = "io.kubernetes.cri-o.ContainerID";
    pub const POD_UID: &str = "io.kubernetes.pod.uid";
    pub const POD_NAME: &str = "io.kubernetes.pod.name";
    pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
    pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
}

/// Whether the spec is a pod's sandbox ("pause") container rather than one of its
/// containers: sandboxes run no workload and are not bound.
pub fn is_sandbox(annotations: &BTreeMap<String, String>) -> bool {
    [keys::CRI_CONTAINER_TYPE, keys::CRIO_CONTAINER_TYPE]
        .iter()
        .any(|k| annotations.get(*k).is_some_and(|v| v == "sandbox"))
}

/// The pod identity of a container: `cgroup` is its cgroup path, `id` the runtime's
/// container id (the OCI state's `id`), `annotations` its spec's annotations.
pub fn identify(
    cgroup: &str,
    id: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<PodIdentity, PodError> {
    let from_cgroup = parse_cgroup_path(cgroup)?;
    let get = |ks: &[&str]| ks.iter().find_map(|k| annotations.get(*k)).cloned().unwrap_or_default();
    let annotated_uid = get(&[keys::CRI_SANDBOX_UID, keys::POD_UID]);
    if !annotated_uid.is_empty() && uid_from(&annotated_uid).as_deref() != Some(&from_cgroup.pod_uid) {
        return Err(PodError::UidMismatch {
            annotated: annotated_uid,
            from_cgroup: from_cgroup.pod_uid,
            cgroup: cgroup.to_string(),
        });
    }
    // The runtime's id (the OCI state) is the container id; the cgroup leaf and CRI-O's
    // annotation must agree with it.
    let container_id = match &from_cgroup.container_id {
        Some(c) if c != id => {
            return Err(PodError::IdMismatch { annotated: c.clone(), runtime: id.to_string() });
        }
        Some(c) => c.clone(),
        None => return Err(PodError::NotAPod(cgroup.to_string())),
    };
    if let Some(a) = annotations.get(keys::CRIO_CONTAINER_ID)
        && a != id
    {
        return Err(PodError::IdMismatch { annotated: a.clone(), runtime: id.to_string() });
    }
    let runtime = from_cgroup
        .runtime
        .or_else(|| annotations.contains_key(keys::CRI_CONTAINER_TYPE).then_some("containerd"))
        .or_else(|| annotations.contains_key(keys::CRIO_CONTAINER_TYPE).then_some("cri-o"))
        .unwrap_or_default();
    Ok(PodIdentity {
        uid: from_cgroup.pod_uid,
        namespace: get(&[keys::CRI_SANDBOX_NAMESPACE, keys::POD_NAMESPACE]),
        name: get(&[keys::CRI_SANDBOX_NAME, keys::POD_NAME]),
        container: get(&[keys::CRI_CONTAINER_NAME, keys::CONTAINER_NAME]),
        container_id,
        runtime: runtime.to_string(),
    })
}

/// The binding annotations.
pub mod binding {
    /// The pod's scope (every container).
    pub const SCOPE: &str = "warden.dev/scope";
    /// One container's scope: `warden.dev/scope.<container name>`; wins over [`SCOPE`].
    pub const SCOPE_PREFIX: &str = "warden.dev/scope.";
    /// `closed` (default) or `open`: whether the container may start when it cannot be
    /// bound.
    pub const ON_FAILURE: &str = "warden.dev/on-failure";
}

/// What the annotations ask for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The scope's name: `<scopes dir>/<name>.yaml`.
    pub scope: String,
    /// The container may start unbound when binding fails (recorded).
    pub fail_open: bool,
}

/// Why the binding annotations are unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindingError {
    #[error("{key}: {value:?} is not a scope name (1-64 of [A-Za-z0-9._-], not starting with a dot)")]
    BadScope { key: String, value: String },
    #[error("{key}: {value:?} must be `closed` or `open`")]
    BadOnFailure { key: String, value: String },
}

/// A scope name as a file name: no path separators, no `..`, no hidden files.
pub fn valid_scope_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The binding for container `container` (its name in the pod spec; may be empty), or
/// `None` when the pod did not opt in.
pub fn binding_for(
    annotations: &BTreeMap<String, String>,
    container: &str,
) -> Result<Option<Binding>, BindingError> {
    let per = format!("{}{container}", binding::SCOPE_PREFIX);
    let (key, value) = match (
        (!container.is_empty()).then(|| annotations.get(&per)).flatten(),
        annotations.get(binding::SCOPE),
    ) {
        (Some(v), _) => (per, v),
        (None, Some(v)) => (binding::SCOPE.to_string(), v),
        (None, None) => return Ok(None),
    };
    if !valid_scope_name(value) {
        return Err(BindingError::BadScope { key, value: value.clone() });
    }
    let fail_open = match annotations.get(binding::ON_FAILURE).map(String::as_str) {
        None | Some("closed") => false,
        Some("open") => true,
        Some(v) => {
            return Err(BindingError::BadOnFailure {
                key: binding::ON_FAILURE.to_string(),
                value: v.to_string(),
            });
        }
    };
    Ok(Some(Binding { scope: value.clone(), fail_open }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3d1f0b8e-5c2a-4f6e-9a7b-0c1d2e3f4a5b";
    const UID_: &str = "3d1f0b8e_5c2a_4f6e_9a7b_0c1d2e3f4a5b";
    const ID: &str = "8e2f6c0a4b1d3e5f7a9c0b2d4e6f8a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d2f";

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Container cgroup paths as the runtimes lay them out, under each driver and QoS class
    /// (the shapes of `/proc/PID/cgroup` lines seen on real nodes).
    #[test]
    fn parses_each_runtime_and_driver() {
        let cases: &[(String, Qos, Option<&str>, &str)] = &[
            // containerd, systemd driver (kubeadm's default since 1.22)
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Qos::Burstable,
                Some("containerd"),
                "systemd",
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                Qos::Guaranteed,
                Some("containerd"),
                "systemd",
            ),
            // containerd, cgroupfs driver: the leaf is the bare id
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), Qos::BestEffort, None, "cgroupfs"),
            (format!("/kubepods/pod{UID}/{ID}"), Qos::Guaranteed, None, "cgroupfs"),
            // CRI-O, systemd and cgroupfs
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                Qos::BestEffort,
                Some("cri-o"),
                "systemd",
            ),
            (format!("/kubepods/burstable/pod{UID}/crio-{ID}"), Qos::Burstable, Some("cri-o"), "cgroupfs"),
            // docker (dockershim / cri-dockerd), systemd and cgroupfs
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"
                ),
                Qos::Burstable,
                Some("docker"),
                "systemd",
            ),
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Qos::Burstable, None, "cgroupfs"),
            // kind / nested kubelet: a prefix above kubepods
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                Qos::Burstable,
                Some("containerd"),
                "systemd",
            ),
            (format!("/kubelet/kubepods/burstable/pod{UID}/{ID}"), Qos::Burstable, None, "cgroupfs"),
            // an absolute path under a hybrid host's cgroup2 mount
            (
                format!("/sys/fs/cgroup/unified/kubepods/burstable/pod{UID}/{ID}"),
                Qos::Burstable,
                None,
                "cgroupfs",
            ),
        ];
        for (path, qos, rt, driver) in cases {
            let p = parse_cgroup_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(p.pod_uid, UID, "{path}");
            assert_eq!(p.qos, *qos, "{path}");
            assert_eq!(p.container_id.as_deref(), Some(ID), "{path}");
            assert_eq!(p.runtime, *rt, "{path}");
            assert_eq!(p.driver, *driver, "{path}");
        }
    }

    #[test]
    fn static_pod_uids_and_pod_level_cgroups() {
        // Static pods: the UID is a 32-digit hash without dashes.
        let p = parse_cgroup_path(&format!("/kubepods/burstable/pod0f1e2d3c4b5a69788796a5b4c3d2e1f0/{ID}"))
            .unwrap();
        assert_eq!(p.pod_uid, "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
        // The pod's own cgroup (no container below it) names the pod but no container.
        let p = parse_cgroup_path(&format!("/kubepods/burstable/pod{UID}")).unwrap();
        assert_eq!(p.container_id, None);
        assert!(identify(&format!("/kubepods/burstable/pod{UID}"), ID, &BTreeMap::new()).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_container_of_a_pod() {
        for p in [
            "/".to_string(),
            "/system.slice/containerd.service".to_string(),
            "/user.slice/user-1000.slice/session-3.scope".to_string(),
            format!("/docker/{ID}"),
            // CRI-O's monitor process sits next to the container, not in it
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
            ),
            // a directory called pod<uid> that is not under kubepods
            format!("/warden/pod{UID}/{ID}"),
            // a malformed uid
            format!("/kubepods/burstable/pod3d1f0b8e-5c2a/{ID}"),
            format!("/kubepods/burstable/pod{UID}/not-a-container"),
        ] {
            assert!(parse_cgroup_path(&p).is_err(), "{p}");
        }
    }

    #[test]
    fn names_come_from_each_runtimes_annotations() {
        let cg = format!("/kubepods/burstable/pod{UID}/{ID}");
        let containerd = ann(&[
            (keys::CRI_CONTAINER_TYPE, "container"),
            (keys::CRI_SANDBOX_UID, UID),
            (keys::CRI_SANDBOX_NAME, "agent-7f9c"),
            (keys::CRI_SANDBOX_NAMESPACE, "agents"),
            (keys::CRI_CONTAINER_NAME, "runner"),
        ]);
        let id = identify(&cg, ID, &containerd).unwrap();
        assert_eq!(
            id,
            PodIdentity {
                uid: UID.into(),
                namespace: "agents".into(),
                name: "agent-7f9c".into(),
                container: "runner".into(),
                container_id: ID.into(),
                runtime: "containerd".into(),
            }
        );
        let crio = ann(&[
            (keys::CRIO_CONTAINER_TYPE, "container"),
            (keys::CRIO_CONTAINER_ID, ID),
            (keys::POD_UID, UID),
            (keys::POD_NAME, "agent-7f9c"),
            (keys::POD_NAMESPACE, "agents"),
            (keys::CONTAINER_NAME, "runner"),
        ]);
        let cg_crio = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
        );
        let id = identify(&cg_crio, ID, &crio).unwrap();
        assert_eq!(
            (id.name.as_str(), id.container.as_str(), id.runtime.as_str()),
            ("agent-7f9c", "runner", "cri-o")
        );
        // Without annotations the cgroup still gives the pod UID and container id.
        let id = identify(&cg, ID, &BTreeMap::new()).unwrap();
        assert_eq!((id.uid.as_str(), id.name.as_str()), (UID, ""));
    }

    #[test]
    fn disagreeing_sources_are_refused() {
        let cg = format!("/kubepods/burstable/pod{UID}/{ID}");
        let other = "11111111-2222-3333-4444-555555555555";
        let e = identify(&cg, ID, &ann(&[(keys::CRI_SANDBOX_UID, other)])).unwrap_err();
        assert!(matches!(e, PodError::UidMismatch { .. }), "{e}");
        let e = identify(&cg, &ID.replace('8', "9"), &BTreeMap::new()).unwrap_err();
        assert!(matches!(e, PodError::IdMismatch { .. }), "{e}");
        let e = identify(&cg, ID, &ann(&[(keys::CRIO_CONTAINER_ID, "abc")])).unwrap_err();
        assert!(matches!(e, PodError::IdMismatch { .. }), "{e}");
    }

    #[test]
    fn sandboxes_are_recognised() {
        assert!(is_sandbox(&ann(&[(keys::CRI_CONTAINER_TYPE, "sandbox")])));
        assert!(is_sandbox(&ann(&[(keys::CRIO_CONTAINER_TYPE, "sandbox")])));
        assert!(!is_sandbox(&ann(&[(keys::CRI_CONTAINER_TYPE, "container")])));
    }

    #[test]
    fn binding_annotations() {
        assert_eq!(binding_for(&BTreeMap::new(), "runner"), Ok(None));
        let a = ann(&[(binding::SCOPE, "build-report"), ("warden.dev/scope.tools", "tools-only")]);
        assert_eq!(binding_for(&a, "runner").unwrap().unwrap().scope, "build-report");
        assert_eq!(binding_for(&a, "tools").unwrap().unwrap().scope, "tools-only");
        assert_eq!(binding_for(&a, "").unwrap().unwrap().scope, "build-report");
        let open = ann(&[(binding::SCOPE, "s"), (binding::ON_FAILURE, "open")]);
        assert!(binding_for(&open, "c").unwrap().unwrap().fail_open);
        assert!(!binding_for(&ann(&[(binding::SCOPE, "s")]), "c").unwrap().unwrap().fail_open);
        for bad in ["../etc/passwd", "a/b", ".hidden", "", &"x".repeat(65)] {
            let e = binding_for(&ann(&[(binding::SCOPE, bad)]), "c").unwrap_err();
            assert!(matches!(e, BindingError::BadScope { .. }), "{bad}: {e}");
        }
        let e = binding_for(&ann(&[(binding::SCOPE, "s"), (binding::ON_FAILURE, "maybe")]), "c").unwrap_err();
        assert!(matches!(e, BindingError::BadOnFailure { .. }));
    }
}
