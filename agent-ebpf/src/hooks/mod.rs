//! Kernel hooks, by attachment type.
pub mod cgroup;
pub mod lsm;
pub mod probe;
pub mod sched;
pub mod sockaddr;
pub mod unix;
