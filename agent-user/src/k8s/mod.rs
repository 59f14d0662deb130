//! Kubernetes: binding a pod's containers to scopes from the OCI runtime hook, and the pod
//! identity carried on every record of their tasks. See `docs/kubernetes.md`.
//!
//! ```text
//! runtime ──createRuntime──▶ warden oci-hook ──POST /v1/containers──▶ daemon: identity (pod.rs),
//!                                                                      scope (<scopes>/<name>.yaml)
//!                                                                      placed in the rootfs (root.rs),
//!                                                                      bound to the cgroup
//! runtime ──poststop───────▶ warden oci-hook ──POST /v1/containers/{id}/end──▶ task_end
//! ```
pub mod hook;
pub mod pod;
pub mod root;
pub mod step;

pub use step::{Container, ContainerStep, container_unenforced};
