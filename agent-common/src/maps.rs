//! Map keys, values and default sizes shared by the kernel programs and the loader.

/// Name of the ring buffer all records go through.
pub const EVENTS: &str = "EVENTS";
/// Name of the cgroup id → [`Sandbox`] map.
pub const WATCHED: &str = "WATCHED";
/// Name of the per-CPU per-slot drop counters ([`DropCounters`]).
pub const DROPS: &str = "DROPS";
/// Name of the per-CPU global counters ([`stat`]).
pub const STATS: &str = "STATS";

/// Default ring buffer size (bytes). 4 MiB: 256 KiB dropped ~46% at 250k events/s.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
/// Default number of sandbox slots (concurrent tasks per node).
pub const DEFAULT_MAX_TASKS: u32 = 1024;
/// Default number of cgroups that may map to sandboxes (sandboxes and their children).
pub const DEFAULT_MAX_CGROUPS: u32 = 8192;

/// Value of the `WATCHED` map: which sandbox a cgroup belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Index into per-slot maps (`DROPS`, later the scope maps); `< max_tasks`.
    pub slot: u32,
    /// Reserved bit set (mode bits land here); zero today.
    pub flags: u32,
}
crate::assert_layout!(Sandbox, size = 8, slot @ 0, flags @ 4);

/// Value of the per-CPU `DROPS` array, indexed by sandbox slot: records the kernel could not
/// reserve in the ring buffer, by kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Failed reservations, all kinds.
    pub total: u64,
    pub exec: u64,
    pub fork: u64,
    pub exit: u64,
}
crate::assert_layout!(DropCounters, size = 32, total @ 0, exec @ 8, fork @ 16, exit @ 24);

/// Indices into the per-CPU `STATS` array of `u64` counters.
pub mod stat {
    /// Child cgroups the kernel added to `WATCHED` because their parent was watched.
    pub const CGROUP_INHERITED: u32 = 0;
    /// Child cgroups that could not be added (map full).
    pub const CGROUP_INHERIT_FAILED: u32 = 1;
    /// Kernel reads (probe_read) that failed while building a record.
    pub const READ_FAILED: u32 = 2;
    /// Number of entries.
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` integers only, explicitly padded; every bit pattern is valid.
    unsafe impl aya::Pod for super::Sandbox {}
    unsafe impl aya::Pod for super::DropCounters {}
}

/// Key of the `EXEC_DENY` map: an executable (kernel dev_t, inode) for one sandbox slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub slot: u32,
    /// Kernel `dev_t` (`major << 20 | minor`).
    pub dev: u32,
    pub ino: u64,
}
crate::assert_layout!(ExecKey, size = 16, slot @ 0, dev @ 4, ino @ 8);
#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` integers, no padding holes.
unsafe impl aya::Pod for ExecKey {}
