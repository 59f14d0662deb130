//! Ring-buffer records.
//!
//! Every record starts with [`EventHeader`]. Record kinds are explicit numbers;
//! a retired number is never reused (see `docs/events.md` for the bump rules).
//! Records have a constant size per kind so the kernel side makes
//! constant-size reservations, which the verifier requires.

/// Version of the kernel/user record ABI. Bump on any layout change.
pub const ABI_VERSION: u16 = 1;

/// Record kinds (`EventHeader::kind`).
pub mod kind {
    /// A process image was replaced (`sched_process_exec`).
    pub const EXEC: u16 = 1;
    /// A new process (not a thread) was created (`sched_process_fork`).
    pub const FORK: u16 = 2;
    /// A process (thread-group leader) exited (`sched_process_exit`).
    pub const EXIT: u16 = 3;
    // 4..=63 are reserved for scope-enforcement records (open, connect, ...).
}

/// Header flags (`EventHeader::flags`).
pub mod flags {
    /// The path in the record was cut to fit its buffer.
    pub const PATH_TRUNCATED: u16 = 1 << 0;
    /// The path could not be read at all (the field is empty).
    pub const PATH_UNREADABLE: u16 = 1 << 1;
}

/// Length of `task_struct::comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of path carried in a record (NUL-terminated inside the buffer).
pub const PATH_LEN: usize = 256;

/// The header every record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u16,
    /// Bit set of [`flags`].
    pub flags: u16,
    /// Size in bytes of the whole record, header included.
    pub size: u32,
    /// `bpf_ktime_get_boot_ns()` when the event happened.
    pub ktime_ns: u64,
    /// cgroup v2 id of the task that caused the event.
    pub cgroup_id: u64,
    /// Sandbox slot the cgroup (or an ancestor) is bound to.
    pub slot: u32,
    /// [`ABI_VERSION`] of the program that wrote the record.
    pub abi: u16,
    pub _pad0: u16,
}
crate::assert_layout!(EventHeader, size = 32, kind @ 0, flags @ 2, size @ 4, ktime_ns @ 8,
    cgroup_id @ 16, slot @ 24, abi @ 28);

/// Identity of the process an event is about.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcIds {
    /// Thread id (`task_struct::pid`).
    pub pid: u32,
    /// Process id (`task_struct::tgid`).
    pub tgid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad0: u32,
    pub comm: [u8; COMM_LEN],
}
crate::assert_layout!(ProcIds, size = 40, pid @ 0, tgid @ 4, ppid @ 8, uid @ 12, gid @ 16, comm @ 24);

/// `kind::EXEC`: the process now runs the file identified by (`dev`, `ino`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub hdr: EventHeader,
    pub proc: ProcIds,
    /// Kernel `dev_t` (`major << 20 | minor`) of the executed file's filesystem.
    pub dev: u32,
    /// Pid before exec (differs from `proc.pid` when a non-leader thread execs).
    pub old_pid: u32,
    /// Inode number of the executed file.
    pub ino: u64,
    /// `linux_binprm::filename`, NUL-terminated.
    pub path: [u8; PATH_LEN],
}
crate::assert_layout!(ExecRecord, size = 344, hdr @ 0, proc @ 32, dev @ 72, old_pid @ 76, ino @ 80,
    path @ 88);

/// `kind::FORK`: `parent` created the process `child_tgid`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    pub hdr: EventHeader,
    /// The parent (the task calling fork/clone).
    pub proc: ProcIds,
    pub child_pid: u32,
    pub child_tgid: u32,
}
crate::assert_layout!(ForkRecord, size = 80, hdr @ 0, proc @ 32, child_pid @ 72, child_tgid @ 76);

/// `kind::EXIT`: the process exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub hdr: EventHeader,
    pub proc: ProcIds,
    /// `task_struct::exit_code`: wait(2) status encoding.
    pub exit_code: u32,
    pub _pad0: u32,
}
crate::assert_layout!(ExitRecord, size = 80, hdr @ 0, proc @ 32, exit_code @ 72);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, explicitly padded; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::ProcIds {}
}
