//! Sandboxes: a cgroup v2 per task, started into from the first instruction,
//! killed and removed as one step at task end.
pub mod cgroup;
pub mod launch;

pub use cgroup::{Cgroup, CgroupError, cgroup2_mount};
