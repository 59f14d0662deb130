//! Kernel struct field offsets and checked reads through them.
use agent_common::config::KernelOffsets;
use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};

/// Offsets resolved by the loader from the running kernel's BTF.
#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_exit_code: 0,
    bprm_file: 0,
    bprm_filename: 0,
    file_inode: 0,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    cgroup_kn: 0,
    kn_id: 0,
    kn_parent: 0,
    bprm_buf: 0,
    file_path: 0,
    path_mnt: 0,
    path_dentry: 0,
    file_mode: 0,
    dentry_parent: 0,
    dentry_inode: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    task_mm: 0,
    mm_exe_file: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    sb_flags: 0,
    vma_file: 0,
    dentry_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    sb_magic: 0,
    proc_inode_pid: 0,
    proc_inode_vfs_inode: 0,
    pid_tasks: 0,
    task_pid_links: 0,
    lsm_bpf_ret: 3,
    unix_sock_path: 0,
    socket_sk: 0,
    sock_addr_uaddr: 0,
    sock_addr_uaddrlen: 0,
    unix_sock_addr: 0,
    unix_address_name: 0,
    sock_cgroup: 0,
    valid: 0,
});

/// The offsets, to read field by field: each load is from the frozen, read-only map behind
/// the global, so the verifier knows its value, and nothing is copied to the stack (unlike
/// `OFFSETS.load()`, a volatile copy of the whole struct).
#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    let p = &OFFSETS as *const Global<KernelOffsets> as *const KernelOffsets;
    // SAFETY: `Global` is `repr(transparent)` over the struct, which the loader fills before
    // any program loads. Reading the pointer back volatile keeps the compiler from folding
    // field loads to the initial zeros of the static.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub fn read<T>(base: *const u8, off: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel never faults; it returns an error for bad addresses.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }.map_err(|e| e as i64)
}
