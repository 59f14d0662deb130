//! Load-time configuration written by the loader into read-only globals.
//!
//! Rust eBPF has no CO-RE relocations, so the offsets of the kernel struct fields
//! the programs read are resolved in userspace from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`) and passed in here. The verifier sees them as
//! constants. Nothing is frozen to the build machine's kernel.

/// Name of the global holding [`KernelOffsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Byte offsets of kernel struct fields, resolved from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.pid`
    pub task_pid: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.exit_code`
    pub task_exit_code: u32,
    /// `linux_binprm.file`
    pub bprm_file: u32,
    /// `linux_binprm.filename`
    pub bprm_filename: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `cgroup.kn`
    pub cgroup_kn: u32,
    /// `kernfs_node.id`
    pub kn_id: u32,
    /// `kernfs_node.parent` (renamed `__parent` in 6.15)
    pub kn_parent: u32,
    /// `linux_binprm.buf` (the first bytes of the file being checked; `#!` for scripts).
    pub bprm_buf: u32,
    /// `file.f_path` (a `struct path`)
    pub file_path: u32,
    /// `path.mnt`
    pub path_mnt: u32,
    /// `path.dentry`
    pub path_dentry: u32,
    /// `file.f_mode`
    pub file_mode: u32,
    /// `dentry.d_parent`
    pub dentry_parent: u32,
    /// `dentry.d_inode`
    pub dentry_inode: u32,
    /// `mount.mnt` (the embedded `struct vfsmount`)
    pub mount_mnt: u32,
    /// `mount.mnt_parent`
    pub mount_parent: u32,
    /// `mount.mnt_mountpoint`
    pub mount_mountpoint: u32,
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `mm_struct.exe_file`
    pub mm_exe_file: u32,
    /// `task_struct.cgroups` (a `struct css_set *`)
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp`
    pub css_set_dfl_cgrp: u32,
    /// `super_block.s_flags`
    pub sb_flags: u32,
    /// `vm_area_struct.vm_file`
    pub vma_file: u32,
    /// `dentry.d_name` (a `struct qstr`)
    pub dentry_name: u32,
    /// `qstr.len`
    pub qstr_len: u32,
    /// `qstr.name`
    pub qstr_name: u32,
    /// `super_block.s_magic`
    pub sb_magic: u32,
    /// `proc_inode.pid` (a `struct pid *`)
    pub proc_inode_pid: u32,
    /// `proc_inode.vfs_inode` (the embedded `struct inode`)
    pub proc_inode_vfs_inode: u32,
    /// `pid.tasks` (`struct hlist_head[PIDTYPE_MAX]`; `PIDTYPE_PID` first)
    pub pid_tasks: u32,
    /// `task_struct.pid_links` (`struct hlist_node[PIDTYPE_MAX]`; `PIDTYPE_PID` first)
    pub task_pid_links: u32,
    /// Argument index of `ret` in the `bpf` LSM hook (3, or 4 where the hook has `kernel`).
    pub lsm_bpf_ret: u32,
    /// `unix_sock.path` (the `struct path` a path-named unix socket is bound to)
    pub unix_sock_path: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `bpf_sock_addr_kern.uaddr` (the address a cgroup sock_addr program judges)
    pub sock_addr_uaddr: u32,
    /// `bpf_sock_addr_kern.uaddrlen` (6.7+, with the unix hooks; 0 where absent)
    pub sock_addr_uaddrlen: u32,
    /// `unix_sock.addr` (a `struct unix_address *`; NULL while the socket has no name)
    pub unix_sock_addr: u32,
    /// `unix_address.name` (a `struct sockaddr_un`: an abstract name's `sun_path` starts
    /// with a NUL)
    pub unix_address_name: u32,
    /// `sock.sk_cgrp_data` + `sock_cgroup_data.cgroup`: the (v2) cgroup the socket was
    /// created in
    pub sock_cgroup: u32,
    /// Non-zero once the loader filled the struct; programs emit nothing while zero.
    pub valid: u32,
}
crate::assert_layout!(KernelOffsets, size = 184, task_pid @ 0, kn_parent @ 48, bprm_buf @ 52,
    file_path @ 56, vma_file @ 112, dentry_name @ 116, qstr_len @ 120, qstr_name @ 124, sb_magic @ 128,
    task_pid_links @ 144, lsm_bpf_ret @ 148, unix_sock_path @ 152, socket_sk @ 156, sock_addr_uaddr @ 160, sock_addr_uaddrlen @ 164,
    unix_sock_addr @ 168, unix_address_name @ 172, sock_cgroup @ 176, valid @ 180);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` u32s only; every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
}
