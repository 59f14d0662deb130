//! BPF LSM engine: decisions at LSM hooks from map lookups, refusing with -EPERM and recording
//! every refusal. Programs act only on sandboxes bound with the `LSM` flag, and honour an
//! earlier program's verdict. In audit mode they record "audit" and refuse nothing.
use agent_common::{
    abi::{ExecRecord, LsmRecord, action, flags, kind, rule},
    maps::{ExecKey, FileKey, Sandbox, SecretToolKey, file_rule, sandbox_flags},
};
use aya_ebpf::{
    helpers::{bpf_d_path, bpf_get_current_task, bpf_probe_read_kernel_str_bytes},
    macros::lsm,
    programs::LsmContext,
};

use super::sched::{exec_allowed, file_id};
use crate::{
    emit::{Verdict, count_lost_denial, current_proc, header, reserve, set_verdict},
    maps::{EXEC_DENY, FILE_RULES, SECRET_TOOLS, WATCHED, current_sandbox},
    offsets::{OFFSETS, read},
};
use agent_common::config::KernelOffsets;

const EPERM: i32 = 1;
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const PROT_EXEC: u64 = 0x4;
/// `SB_KERNMOUNT`: an internal mount (memfd, pipes): no path a scope could name.
const SB_KERNMOUNT: u64 = 1 << 22;
/// Ancestors looked at per file; deeper files are judged as not granted.
const MAX_DEPTH: u32 = 48;

/// The sandbox of the current task, if the LSM engine judges it.
#[inline(always)]
fn lsm_sandbox() -> Option<(u64, Sandbox, KernelOffsets)> {
    let off = OFFSETS.load();
    if off.valid == 0 {
        return None;
    }
    let (cg, sb) = current_sandbox()?;
    if sb.flags & sandbox_flags::LSM == 0 {
        return None;
    }
    Some((cg, sb, off))
}

/// Result of a judgement: the verdict, and how to return from the hook.
#[inline(always)]
fn ret(v: Verdict) -> i32 {
    if v.enforced() { -EPERM } else { 0 }
}

/// Emits an `LsmRecord`. `path` is a `struct path *` inside a trusted kernel object (for
/// `bpf_d_path`), or null.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    record_kind: u16,
    cgroup_id: u64,
    sandbox: &Sandbox,
    off: &KernelOffsets,
    v: Verdict,
    target_pid: u32,
    arg: u32,
    id: Option<(u32, u64)>,
    path: *mut aya_ebpf::bindings::path,
) {
    let Some(mut entry) = reserve::<LsmRecord>(sandbox, record_kind) else {
        count_lost_denial(sandbox);
        return;
    };
    // SAFETY: reserved, exclusively owned record.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    header(&mut rec.hdr, record_kind, size_of::<LsmRecord>(), cgroup_id, sandbox);
    set_verdict(&mut rec.hdr, v);
    current_proc(&mut rec.proc, off.task_tgid, off.task_real_parent);
    rec.target_pid = target_pid;
    rec.arg = arg;
    let (dev, ino) = id.unwrap_or((0, 0));
    rec.dev = dev;
    rec._pad0 = 0;
    rec.ino = ino;
    rec.path[0] = 0;
    if !path.is_null() {
        // SAFETY: `path` points into a kernel object the hook received; the helper bounds
        // the write to the buffer.
        let n = unsafe { bpf_d_path(path, rec.path.as_mut_ptr().cast(), rec.path.len() as u32) };
        if n < 0 {
            rec.hdr.flags |= flags::PATH_UNREADABLE;
        }
    }
    entry.submit(0);
}

/// The sandbox slot of another task, if it is in a watched cgroup.
#[inline(always)]
fn task_slot(task: *const u8, off: &KernelOffsets) -> Option<u32> {
    let css = read::<*const u8>(task, off.task_cgroups).ok()?;
    let cgrp = read::<*const u8>(css, off.css_set_dfl_cgrp).ok()?;
    let kn = read::<*const u8>(cgrp, off.cgroup_kn).ok()?;
    let id = read::<u64>(kn, off.kn_id).ok()?;
    // SAFETY: value is Copy and read immediately.
    unsafe { WATCHED.get(&id) }.map(|s| s.slot)
}

#[inline(always)]
fn inode_id(inode: *const u8, off: &KernelOffsets) -> Option<(u32, u64)> {
    let ino = read::<u64>(inode, off.inode_ino).ok()?;
    let sb = read::<*const u8>(inode, off.inode_sb).ok()?;
    let dev = read::<u32>(sb, off.sb_dev).ok()?;
    Some((dev, ino))
}

#[inline(always)]
fn rules_of(slot: u32, id: (u32, u64)) -> u32 {
    // SAFETY: value is Copy and read immediately.
    unsafe { FILE_RULES.get(&FileKey { slot, dev: id.0, ino: id.1 }) }.copied().unwrap_or(0)
}

/// What the walk from an object up to the root found.
struct Walk {
    /// A DENY rule on the way (wins).
    deny: bool,
    deny_write: bool,
    read: bool,
    write: bool,
    /// Reached the root within MAX_DEPTH.
    complete: bool,
}

/// Walks `dentry` and its ancestors (crossing mount points up to the namespace root),
/// collecting the sandbox's rules on each object.
#[inline(always)]
fn walk(slot: u32, dentry0: *const u8, vfsmnt: *const u8, off: &KernelOffsets) -> Walk {
    let mut w = Walk { deny: false, deny_write: false, read: false, write: false, complete: false };
    let mut dentry = dentry0;
    // `struct vfsmount` is embedded in `struct mount`.
    let mut mnt = vfsmnt.wrapping_sub(off.mount_mnt as usize);
    let mut i = 0;
    while i < MAX_DEPTH {
        i += 1;
        let Ok(inode) = read::<*const u8>(dentry, off.dentry_inode) else { break };
        if let Some(id) = inode_id(inode, off) {
            let bits = rules_of(slot, id);
            w.deny |= bits & file_rule::DENY != 0;
            w.deny_write |= bits & file_rule::DENY_WRITE != 0;
            w.read |= bits & file_rule::READ != 0;
            w.write |= bits & file_rule::WRITE != 0;
        }
        let Ok(parent) = read::<*const u8>(dentry, off.dentry_parent) else { break };
        // The root of the mount: continue at its mount point in the parent mount.
        let mnt_root =
            read::<*const u8>(mnt.wrapping_add(off.mount_mnt as usize), 0).unwrap_or(core::ptr::null());
        if parent == dentry || dentry == mnt_root {
            let Ok(mnt_parent) = read::<*const u8>(mnt, off.mount_parent) else { break };
            if mnt_parent == mnt {
                w.complete = true;
                break;
            }
            let Ok(mp) = read::<*const u8>(mnt, off.mount_mountpoint) else { break };
            dentry = mp;
            mnt = mnt_parent;
            continue;
        }
        dentry = parent;
    }
    w
}

/// Identity of the current executable (`current->mm->exe_file`).
#[inline(always)]
fn current_exe(off: &KernelOffsets) -> Option<(u32, u64)> {
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mm = read::<*const u8>(task, off.task_mm).ok()?;
    let exe = read::<*const u8>(mm, off.mm_exe_file).ok()?;
    file_id(exe, off.file_inode, off.inode_ino, off.inode_sb, off.sb_dev)
}

/// `bprm_check_security(struct linux_binprm *bprm, int ret)`: exec identity.
#[lsm(hook = "bprm_check_security")]
pub fn lsm_bprm_check(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return prev;
    }
    let Some((cgroup_id, sandbox)) = current_sandbox() else {
        return 0;
    };
    let off = OFFSETS.load();
    if off.valid == 0 {
        return 0;
    }
    let bprm: *const u8 = ctx.arg(0);
    let Ok(file) = read::<*const u8>(bprm, off.bprm_file) else {
        return 0;
    };
    let id = file_id(file, off.file_inode, off.inode_ino, off.inode_sb, off.sb_dev);
    // Test hook: an explicit deny list (used by the VM tier's basic LSM test).
    if let Some((dev, ino)) = id
        && EXEC_DENY.get_ptr(&ExecKey { slot: sandbox.slot, dev, ino }).is_some()
    {
        return -EPERM;
    }
    // Only the LSM engine in enforce mode judges here; audit mode is judged (once) at
    // sched_process_exec by both engines.
    if sandbox.flags & sandbox_flags::LSM == 0
        || sandbox.flags & sandbox_flags::AUDIT != 0
        || sandbox.flags & sandbox_flags::EXEC_RESTRICTED == 0
    {
        return 0;
    }
    // A script is judged through its interpreter, which the kernel checks on the next round.
    if let Ok(magic) = read::<[u8; 2]>(bprm, off.bprm_buf)
        && magic == *b"#!"
    {
        return 0;
    }
    if exec_allowed(&sandbox, id) {
        return 0;
    }
    let v = Verdict::deny(&sandbox, rule::EXEC_ALLOW, action::REFUSE);
    match reserve::<ExecRecord>(&sandbox, kind::EXEC) {
        Some(mut entry) => {
            // SAFETY: reserved, exclusively owned record.
            let rec = unsafe { &mut *entry.as_mut_ptr() };
            header(&mut rec.hdr, kind::EXEC, size_of::<ExecRecord>(), cgroup_id, &sandbox);
            set_verdict(&mut rec.hdr, v);
            current_proc(&mut rec.proc, off.task_tgid, off.task_real_parent);
            let (dev, ino) = id.unwrap_or((0, 0));
            rec.dev = dev;
            rec.ino = ino;
            rec.old_pid = rec.proc.pid;
            rec.path[0] = 0;
            if let Ok(name) = read::<*const u8>(bprm, off.bprm_filename) {
                // SAFETY: bounded by the destination slice.
                if unsafe { bpf_probe_read_kernel_str_bytes(name, &mut rec.path) }.is_err() {
                    rec.hdr.flags |= flags::PATH_UNREADABLE;
                }
            }
            entry.submit(0);
        }
        None => count_lost_denial(&sandbox),
    }
    ret(v)
}

/// `file_open(struct file *file, int ret)`: files by object.
#[lsm(hook = "file_open")]
pub fn lsm_file_open(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return prev;
    }
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let file: *const u8 = ctx.arg(0);
    let mode = read::<u32>(file, off.file_mode).unwrap_or(0);
    let want_read = mode & FMODE_READ != 0;
    let want_write = mode & FMODE_WRITE != 0;
    let Ok(dentry) = read::<*const u8>(file, off.file_path + off.path_dentry) else {
        return 0;
    };
    let Ok(vfsmnt) = read::<*const u8>(file, off.file_path + off.path_mnt) else {
        return 0;
    };
    let id = read::<*const u8>(dentry, off.dentry_inode).ok().and_then(|i| inode_id(i, &off));
    let own = id.map(|i| rules_of(sandbox.slot, i)).unwrap_or(0);
    let mut rule_id = rule::NONE;
    if own & file_rule::SECRET != 0 {
        // A secret: its tools may open it (reading), nobody else.
        let tool = current_exe(&off);
        let allowed = match (id, tool) {
            (Some((sdev, sino)), Some((tdev, tino))) => SECRET_TOOLS
                .get_ptr(&SecretToolKey {
                    slot: sandbox.slot,
                    secret_dev: sdev,
                    secret_ino: sino,
                    tool_dev: tdev,
                    _pad0: 0,
                    tool_ino: tino,
                })
                .is_some(),
            _ => false,
        };
        if !allowed || want_write {
            rule_id = rule::SECRETS;
        }
    } else {
        let w = walk(sandbox.slot, dentry, vfsmnt, &off);
        let read_ok = sandbox.flags & sandbox_flags::READ_RESTRICTED == 0 || (w.read && w.complete);
        let write_ok = sandbox.flags & sandbox_flags::WRITE_RESTRICTED == 0 || (w.write && w.complete);
        if w.deny {
            rule_id = rule::FILES_DENY;
        } else if want_write && w.deny_write {
            rule_id = rule::PROTECTED_CONTROL;
        } else if want_write && !write_ok {
            rule_id = rule::FILES_WRITE;
        } else if want_read && !read_ok {
            rule_id = rule::FILES_READ;
        }
    }
    if rule_id == rule::NONE {
        return 0;
    }
    let v = Verdict::deny(&sandbox, rule_id, action::REFUSE);
    let path = (file as *mut u8).wrapping_add(off.file_path as usize) as *mut aya_ebpf::bindings::path;
    emit(kind::OPEN, cgroup_id, &sandbox, &off, v, 0, mode, id, path);
    ret(v)
}

/// Whether an executable mapping of `file` is refused: files the task may write (a
/// `WRITE` rule above them) or anonymous files on internal mounts, unless the file is an
/// allowed executable.
#[inline(always)]
fn exec_map_refused(sandbox: &Sandbox, file: *const u8, off: &KernelOffsets) -> Option<(u32, u64)> {
    if sandbox.flags & sandbox_flags::EXEC_RESTRICTED == 0 || file.is_null() {
        return None;
    }
    let id = file_id(file, off.file_inode, off.inode_ino, off.inode_sb, off.sb_dev);
    if exec_allowed(sandbox, id) {
        return None;
    }
    let inode = read::<*const u8>(file, off.file_inode).ok()?;
    let sb = read::<*const u8>(inode, off.inode_sb).ok()?;
    let sflags = read::<u64>(sb, off.sb_flags).unwrap_or(0);
    if sflags & SB_KERNMOUNT != 0 {
        return Some(id.unwrap_or((0, 0)));
    }
    let dentry = read::<*const u8>(file, off.file_path + off.path_dentry).ok()?;
    let vfsmnt = read::<*const u8>(file, off.file_path + off.path_mnt).ok()?;
    let w = walk(sandbox.slot, dentry, vfsmnt, off);
    if w.write && sandbox.flags & sandbox_flags::WRITE_RESTRICTED != 0 {
        return Some(id.unwrap_or((0, 0)));
    }
    None
}

/// `mmap_file(struct file *file, unsigned long reqprot, unsigned long prot, unsigned long flags, int ret)`
#[lsm(hook = "mmap_file")]
pub fn lsm_mmap_file(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return prev;
    }
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let prot: u64 = ctx.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let file: *const u8 = ctx.arg(0);
    let Some(id) = exec_map_refused(&sandbox, file, &off) else {
        return 0;
    };
    let v = Verdict::deny(&sandbox, rule::EXEC_MMAP, action::REFUSE);
    let path = (file as *mut u8).wrapping_add(off.file_path as usize) as *mut aya_ebpf::bindings::path;
    emit(kind::MMAP, cgroup_id, &sandbox, &off, v, 0, prot as u32, Some(id), path);
    ret(v)
}

/// `file_mprotect(struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot, int ret)`
#[lsm(hook = "file_mprotect")]
pub fn lsm_file_mprotect(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let prot: u64 = ctx.arg(2);
    if prot & PROT_EXEC == 0 {
        return 0;
    }
    let vma: *const u8 = ctx.arg(0);
    let file = read::<*const u8>(vma, off.vma_file).unwrap_or(core::ptr::null());
    let Some(id) = exec_map_refused(&sandbox, file, &off) else {
        return 0;
    };
    let v = Verdict::deny(&sandbox, rule::EXEC_MMAP, action::REFUSE);
    emit(kind::MMAP, cgroup_id, &sandbox, &off, v, 0, prot as u32, Some(id), core::ptr::null_mut());
    ret(v)
}

/// Judges an action on `target` (a task): allowed only inside the caller's own sandbox.
#[inline(always)]
fn judge_task(record_kind: u16, target: *const u8, arg: u32) -> i32 {
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    if task_slot(target, &off) == Some(sandbox.slot) {
        return 0;
    }
    let v = Verdict::deny(&sandbox, rule::PROTECTED_PROCESS, action::REFUSE);
    let tgid = read::<u32>(target, off.task_tgid).unwrap_or(0);
    emit(record_kind, cgroup_id, &sandbox, &off, v, tgid, arg, None, core::ptr::null_mut());
    ret(v)
}

/// `task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred, int ret)`
#[lsm(hook = "task_kill")]
pub fn lsm_task_kill(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return prev;
    }
    let sig: i32 = ctx.arg(2);
    judge_task(kind::SIGNAL, ctx.arg(0), sig as u32)
}

/// `ptrace_access_check(struct task_struct *child, unsigned int mode, int ret)`: also guards
/// `/proc/<pid>/environ`, `mem` and `maps` of processes outside the sandbox.
#[lsm(hook = "ptrace_access_check")]
pub fn lsm_ptrace(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    let mode: u32 = ctx.arg(1);
    judge_task(kind::PTRACE, ctx.arg(0), mode)
}

/// Refuses an action to every sandboxed task (protected defaults without a grant).
#[inline(always)]
fn refuse_all(record_kind: u16, rule_id: u16, arg: u32) -> i32 {
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let v = Verdict::deny(&sandbox, rule_id, action::REFUSE);
    emit(record_kind, cgroup_id, &sandbox, &off, v, 0, arg, None, core::ptr::null_mut());
    ret(v)
}

/// `bpf(int cmd, union bpf_attr *attr, unsigned int size, int ret)` (kernels before 6.14).
/// One program per prototype: a context read at a computed offset is refused by the
/// verifier, so the loader picks the program whose `ret` position matches the kernel.
#[lsm(hook = "bpf")]
pub fn lsm_bpf(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    let cmd: i32 = ctx.arg(0);
    refuse_all(kind::BPF, rule::PROTECTED_BPF, cmd as u32)
}

/// `bpf(int cmd, union bpf_attr *attr, unsigned int size, bool kernel, int ret)` (6.14+).
#[lsm(hook = "bpf")]
pub fn lsm_bpf_k(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(4);
    if prev != 0 {
        return prev;
    }
    let cmd: i32 = ctx.arg(0);
    refuse_all(kind::BPF, rule::PROTECTED_BPF, cmd as u32)
}

/// `sb_mount(const char *dev, const struct path *path, const char *type, unsigned long flags, void *data, int ret)`
#[lsm(hook = "sb_mount")]
pub fn lsm_sb_mount(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(5);
    if prev != 0 {
        return prev;
    }
    refuse_all(kind::MOUNT, rule::PROTECTED_MOUNT, 0)
}

/// `move_mount(const struct path *from, const struct path *to, int ret)` (new mount API).
#[lsm(hook = "move_mount")]
pub fn lsm_move_mount(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    refuse_all(kind::MOUNT, rule::PROTECTED_MOUNT, 1)
}

/// `kernel_read_file(struct file *file, enum kernel_read_file_id id, bool contents, int ret)`
#[lsm(hook = "kernel_read_file")]
pub fn lsm_kernel_read_file(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    let id: u32 = ctx.arg(1);
    refuse_all(kind::MODULE, rule::PROTECTED_MODULE, id)
}

/// `kernel_load_data(enum kernel_load_data_id id, bool contents, int ret)`
#[lsm(hook = "kernel_load_data")]
pub fn lsm_kernel_load_data(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(2);
    if prev != 0 {
        return prev;
    }
    let id: u32 = ctx.arg(0);
    refuse_all(kind::MODULE, rule::PROTECTED_MODULE, id)
}
