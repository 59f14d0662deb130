//! Sandboxes: a cgroup v2 per task, started into from the first instruction,
//! killed and removed as one step at task end.
pub mod boundary;
pub mod cgroup;
pub mod confine;
pub mod launch;
pub mod limits;
pub mod seccomp;
pub mod secrets;
pub mod tty;

pub use cgroup::{Cgroup, CgroupError, cgroup2_mount};
