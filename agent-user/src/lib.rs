//! Warden userspace.
//!
//! Data flow, one module per stage:
//! kernel hook (`agent-ebpf`) → ring buffer ([`source`]) → [`decode`] →
//! [`correlate`] (process tree, task) → enforce/rules → [`audit`] sinks.
//! [`loader`] loads the kernel side, [`sandbox`] makes the cgroups tasks run in,
//! [`scope`] reads task scopes, [`pipeline`] wires the stages together and
//! [`cli`] is the `warden` command line.
pub mod audit;
pub mod cli;
pub mod correlate;
pub mod creds;
pub mod daemon;
pub mod decode;
pub mod dns;
pub mod k8s;
pub mod kaudit;
pub mod lifecycle;
pub mod loader;
pub mod pipeline;
pub mod report;
pub mod rules;
pub mod sandbox;
pub mod scope;
pub mod source;
pub mod task;
pub mod util;
