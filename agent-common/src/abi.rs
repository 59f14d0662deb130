//! Ring-buffer records.
//!
//! Every record starts with [`EventHeader`]. Record kinds are explicit numbers;
//! a retired number is never reused (see `docs/events.md` for the bump rules).
//! Records have a constant size per kind so the kernel side makes
//! constant-size reservations, which the verifier requires.

/// Version of the kernel/user record ABI. Bump on any layout change.
/// 1: first slice (never released). 2: decision/action/rule in the header, connect records.
/// 3: `ExecRecord::exe` (the executed file's path, as the kernel resolved it).
/// Map layouts (`maps.rs`) are versioned separately: pinned maps live under a directory named
/// by a hash of the eBPF object (see `agent-user/src/loader/pin.rs`), so a map layout change
/// pins beside the old state and migrates.
pub const ABI_VERSION: u16 = 3;

/// Record kinds (`EventHeader::kind`).
pub mod kind {
    /// A process image was replaced (`sched_process_exec`).
    pub const EXEC: u16 = 1;
    /// A new process (not a thread) was created (`sched_process_fork`).
    pub const FORK: u16 = 2;
    /// A process (thread-group leader) exited (`sched_process_exit`).
    pub const EXIT: u16 = 3;
    /// An outbound connection or datagram was judged (cgroup sock_addr / LSM socket hooks).
    pub const CONNECT: u16 = 4;
    /// A file open was refused or audited (LSM `file_open`). Allowed opens are not recorded.
    pub const OPEN: u16 = 5;
    /// A signal to a process outside the sandbox (LSM `task_kill`).
    pub const SIGNAL: u16 = 6;
    /// ptrace-mode access to a process outside the sandbox (LSM `ptrace_access_check`; also
    /// reading its `/proc/<pid>/environ`, `mem`, `maps`).
    pub const PTRACE: u16 = 7;
    /// The `bpf()` syscall (LSM `bpf`).
    pub const BPF: u16 = 8;
    /// Mounting (LSM `sb_mount`, `move_mount`).
    pub const MOUNT: u16 = 9;
    /// An executable mapping of a file the task may write, or of an anonymous file
    /// (LSM `mmap_file`, `file_mprotect`).
    pub const MMAP: u16 = 10;
    /// Loading a kernel module (LSM `kernel_read_file`, `kernel_load_data`).
    pub const MODULE: u16 = 11;
    /// A change to the file tree was refused or audited (LSM `path_*` hooks): creating,
    /// linking, renaming, removing or truncating a file. `arg` is one of [`super::file_op`].
    pub const FILE: u16 = 12;
    /// A connection to a path-named unix socket was refused or audited (LSM
    /// `unix_stream_connect`, `unix_may_send`; on the fallback engine the cgroup
    /// `connect_unix`/`sendmsg_unix` programs, by the name the task gave): judged like opening
    /// the socket file for reading. `arg` is one of [`super::unix_op`]; the path is the
    /// socket's (fallback: the name as given; `dev`/`ino` 0).
    pub const UNIX: u16 = 13;
    // 14..=63 are reserved for further scope-enforcement records.
}

/// File-tree operations (`LsmRecord::arg` of `kind::FILE`).
pub mod file_op {
    /// A new file (`open(O_CREAT)`, `mknod`).
    pub const CREATE: u32 = 1;
    pub const MKDIR: u32 = 2;
    pub const SYMLINK: u32 = 3;
    /// A new name for an existing file (`link`); the record's path is the existing one.
    pub const LINK: u32 = 4;
    /// `rename`; the record's path is the file being moved.
    pub const RENAME: u32 = 5;
    pub const UNLINK: u32 = 6;
    pub const RMDIR: u32 = 7;
    /// `truncate` by path.
    pub const TRUNCATE: u32 = 8;
    /// `rename(RENAME_EXCHANGE)`.
    pub const EXCHANGE: u32 = 9;
    /// `chmod` (any of its calls): a file's permissions.
    pub const CHMOD: u32 = 10;
}

/// Unix-socket operations (`LsmRecord::arg` of `kind::UNIX`).
pub mod unix_op {
    /// `connect` of a stream or seqpacket socket.
    pub const STREAM_CONNECT: u32 = 1;
    /// A datagram sent (or a datagram socket connected) to it.
    pub const DGRAM_SEND: u32 = 2;
}

/// What was decided (`EventHeader::decision`).
pub mod decision {
    /// Allowed by the scope, or not restricted.
    pub const ALLOW: u8 = 0;
    /// Refused (or killed, see `action`).
    pub const DENY: u8 = 1;
    /// Would have been refused; the sandbox is in audit mode.
    pub const AUDIT: u8 = 2;
}

/// What the kernel did about a denial (`EventHeader::action`).
pub mod action {
    /// Nothing (allowed or audited).
    pub const NONE: u8 = 0;
    /// The request failed with an error (EPERM) before it took effect.
    pub const REFUSE: u8 = 1;
    /// The process was killed (SIGKILL) before it could act on the request.
    pub const KILL: u8 = 2;
}

/// Which part of the scope decided (`EventHeader::rule`).
pub mod rule {
    /// No rule: not restricted.
    pub const NONE: u16 = 0;
    /// `exec.allow` (the executed file, or a script's interpreter, is not listed).
    pub const EXEC_ALLOW: u16 = 1;
    /// `network.egress`.
    pub const NETWORK_EGRESS: u16 = 2;
    /// `files.deny` (or a protected credential path).
    pub const FILES_DENY: u16 = 3;
    /// `files.read` (not in the allowlist).
    pub const FILES_READ: u16 = 4;
    /// `files.write` (not in the allowlist).
    pub const FILES_WRITE: u16 = 5;
    /// `secrets` (opened by a binary that is not one of the secret's tools).
    pub const SECRETS: u16 = 6;
    /// Protected default: signals / ptrace outside the sandbox.
    pub const PROTECTED_PROCESS: u16 = 7;
    /// Protected default: `bpf()`.
    pub const PROTECTED_BPF: u16 = 8;
    /// Protected default: mounting.
    pub const PROTECTED_MOUNT: u16 = 9;
    /// Protected default: kernel modules.
    pub const PROTECTED_MODULE: u16 = 10;
    /// Protected default: system control files (cgroups, bpffs, sysctls).
    pub const PROTECTED_CONTROL: u16 = 11;
    /// `exec.allow` applied to executable mappings.
    pub const EXEC_MMAP: u16 = 12;
    /// A path-named unix socket named so that its name cannot be judged (relative, with `.`,
    /// `..` or empty components, or through `/proc`): fallback engine, which judges names.
    pub const UNIX_NAME: u16 = 13;
    /// Protected default: the node's programs, libraries, configuration and state (writing).
    pub const PROTECTED_SYSTEM: u16 = 14;
}

/// Connection operations (`ConnectRecord::op`).
pub mod op {
    pub const CONNECT4: u8 = 1;
    pub const CONNECT6: u8 = 2;
    pub const SENDMSG4: u8 = 3;
    pub const SENDMSG6: u8 = 4;
}

/// Header flags (`EventHeader::flags`).
pub mod flags {
    /// The path in the record was cut to fit its buffer.
    pub const PATH_TRUNCATED: u16 = 1 << 0;
    /// The path could not be read at all (the field is empty).
    pub const PATH_UNREADABLE: u16 = 1 << 1;
    /// `ExecRecord::exe` was cut to its last components to fit its buffer.
    pub const EXE_TRUNCATED: u16 = 1 << 2;
    /// `ExecRecord::exe` could not be built (the field is empty).
    pub const EXE_UNREADABLE: u16 = 1 << 3;
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
    /// One of [`decision`].
    pub decision: u8,
    /// One of [`action`].
    pub action: u8,
    /// One of [`rule`].
    pub rule: u16,
    pub _pad0: u16,
    pub _pad1: u32,
}
crate::assert_layout!(EventHeader, size = 40, kind @ 0, flags @ 2, size @ 4, ktime_ns @ 8,
    cgroup_id @ 16, slot @ 24, abi @ 28, decision @ 30, action @ 31, rule @ 32);

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
    /// Inode number of the executed file (for a script: its interpreter, the image that runs).
    pub ino: u64,
    /// `linux_binprm::filename`: the path exec was called with, as the caller wrote it (for a
    /// script: the script's path), NUL-terminated.
    pub path: [u8; PATH_LEN],
    /// The executed file's own path, built from its dentry and mounts (symlinks resolved: what
    /// the kernel runs; for a script: its interpreter), NUL-terminated.
    pub exe: [u8; PATH_LEN],
}
crate::assert_layout!(ExecRecord, size = 608, hdr @ 0, proc @ 40, dev @ 80, old_pid @ 84, ino @ 88,
    path @ 96, exe @ 352);

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
crate::assert_layout!(ForkRecord, size = 88, hdr @ 0, proc @ 40, child_pid @ 80, child_tgid @ 84);

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
crate::assert_layout!(ExitRecord, size = 88, hdr @ 0, proc @ 40, exit_code @ 80);

/// `kind::CONNECT`: an outbound TCP connect or UDP send, and what was decided.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectRecord {
    pub hdr: EventHeader,
    pub proc: ProcIds,
    /// Destination address; IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// Destination port, host byte order.
    pub port: u16,
    /// `IPPROTO_TCP` (6) or `IPPROTO_UDP` (17), as the socket says.
    pub protocol: u8,
    /// One of [`op`].
    pub op: u8,
    pub _pad0: u32,
}
crate::assert_layout!(ConnectRecord, size = 104, hdr @ 0, proc @ 40, addr @ 80, port @ 96, protocol @ 98,
    op @ 99);

/// `kind::OPEN`, `SIGNAL`, `PTRACE`, `BPF`, `MOUNT`, `MMAP`, `MODULE`, `FILE`, `UNIX`: a BPF LSM verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LsmRecord {
    pub hdr: EventHeader,
    pub proc: ProcIds,
    /// SIGNAL/PTRACE: the target process.
    pub target_pid: u32,
    /// OPEN: `f_mode`; SIGNAL: the signal; PTRACE: the mode; BPF: the command; MMAP: `prot`;
    /// FILE: one of [`file_op`].
    pub arg: u32,
    /// OPEN/MMAP/MODULE/FILE: the file's kernel `dev_t` and inode (FILE: 0 for a new name).
    pub dev: u32,
    pub _pad0: u32,
    pub ino: u64,
    /// OPEN/MMAP: the file's path (`bpf_d_path`); FILE: the path built from the names on the
    /// way to the root (cut to its last components when too long). NUL-terminated.
    pub path: [u8; PATH_LEN],
}
crate::assert_layout!(LsmRecord, size = 360, hdr @ 0, proc @ 40, target_pid @ 80, arg @ 84, dev @ 88,
    ino @ 96, path @ 104);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, explicitly padded; every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above: `#[repr(C)]` integers, explicitly padded.
    unsafe impl aya::Pod for super::ProcIds {}
}
