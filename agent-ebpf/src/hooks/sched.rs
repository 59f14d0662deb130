//! Process lifecycle from BTF tracepoints (`tp_btf`): fork, exec, exit.
//!
//! BTF tracepoints, not syscall tracepoints: an enabled `syscalls:*` tracepoint
//! puts every task's syscalls on the slow path. These fire once per lifecycle
//! event, and an unwatched task pays one `WATCHED` lookup.
use agent_common::{
    abi::{ExecRecord, ExitRecord, ForkRecord, action, flags, kind, rule},
    maps::{ExecKey, Sandbox, sandbox_flags},
};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::{
    emit::{Verdict, count_lost_denial, current_proc, header, reserve, set_verdict},
    maps::{EXEC_ALLOW, count, current_sandbox},
    offsets::{OFFSETS, read},
    path::{exe_path, under_exec_dir},
};
use agent_common::maps::stat;

/// SIGKILL.
const SIGKILL: u32 = 9;

/// (kernel dev_t, inode) of a `struct file *`.
#[inline(always)]
pub fn file_id(
    file: *const u8,
    file_inode: u32,
    inode_ino: u32,
    inode_sb: u32,
    sb_dev: u32,
) -> Option<(u32, u64)> {
    let inode = read::<*const u8>(file, file_inode).ok()?;
    let ino = read::<u64>(inode, inode_ino).ok()?;
    let sb = read::<*const u8>(inode, inode_sb).ok()?;
    let dev = read::<u32>(sb, sb_dev).ok()?;
    Some((dev, ino))
}

#[inline(always)]
pub fn exec_allowed(sandbox: &Sandbox, id: Option<(u32, u64)>) -> bool {
    match id {
        Some((dev, ino)) => EXEC_ALLOW.get_ptr(ExecKey { slot: sandbox.slot, dev, ino }).is_some(),
        // An unreadable identity is not an allowed one.
        None => false,
    }
}

/// Whether `file` lies below an `exec.allow` directory of the sandbox (only sandboxes that
/// have such entries walk).
#[inline(always)]
pub fn in_exec_dir(sandbox: &Sandbox, file: *const u8, off: &agent_common::config::KernelOffsets) -> bool {
    sandbox.flags & sandbox_flags::EXEC_DIRS != 0
        && !file.is_null()
        && under_exec_dir(sandbox.slot, file, off)
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`
///
/// Fallback engine for exec identity: the new image is in place but has not run a single
/// instruction; if it is not in `EXEC_ALLOW`, the task gets SIGKILL, delivered before the
/// return to user space. For a script the image is its interpreter (the script is data the
/// interpreter reads, as with `sh script`), so a script whose interpreter is not allowed dies.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    let off = OFFSETS.load();
    if off.valid == 0 {
        return 0;
    }
    let Some((cgroup_id, sandbox)) = current_sandbox() else {
        return 0;
    };
    let bprm: *const u8 = ctx.arg(2);
    let file = read::<*const u8>(bprm, off.bprm_file).unwrap_or_default();
    let id = file_id(file, off.file_inode, off.inode_ino, off.inode_sb, off.sb_dev);
    let mut verdict = Verdict::ALLOW;
    // Under the BPF LSM engine, bprm_check_security already refused what is not allowed;
    // audit mode is judged here by both engines, so each exec gets one record.
    let lsm_judged = sandbox.flags & sandbox_flags::LSM != 0 && sandbox.flags & sandbox_flags::AUDIT == 0;
    if sandbox.flags & sandbox_flags::EXEC_RESTRICTED != 0
        && !lsm_judged
        && !exec_allowed(&sandbox, id)
        && !in_exec_dir(&sandbox, file, &off)
    {
        verdict = Verdict::deny(&sandbox, rule::EXEC_ALLOW, action::KILL);
        if verdict.enforced() {
            // SAFETY: signals the current task, which is in process context here.
            unsafe { aya_ebpf::helpers::bpf_send_signal(SIGKILL) };
        }
    }
    let Some(mut entry) = reserve::<ExecRecord>(&sandbox, kind::EXEC) else {
        if verdict.decision != 0 {
            count_lost_denial(&sandbox);
        }
        return 0;
    };
    // SAFETY: `entry` is a reserved, exclusively owned ExecRecord.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    header(&mut rec.hdr, kind::EXEC, size_of::<ExecRecord>(), cgroup_id, &sandbox);
    set_verdict(&mut rec.hdr, verdict);
    current_proc(&mut rec.proc, off.task_tgid, off.task_real_parent);
    let old_pid: i32 = ctx.arg(1);
    rec.old_pid = old_pid as u32;
    match id {
        Some((dev, ino)) => {
            rec.dev = dev;
            rec.ino = ino;
        }
        None => {
            rec.dev = 0;
            rec.ino = 0;
            count(stat::READ_FAILED);
        }
    }
    rec.path[0] = 0;
    match read::<*const u8>(bprm, off.bprm_filename) {
        // SAFETY: the helper bounds the copy to the destination slice.
        Ok(name) => match unsafe { bpf_probe_read_kernel_str_bytes(name, &mut rec.path) } {
            Ok(s) => {
                if s.len() + 1 >= rec.path.len() {
                    rec.hdr.flags |= flags::PATH_TRUNCATED;
                }
            }
            Err(_) => rec.hdr.flags |= flags::PATH_UNREADABLE,
        },
        Err(_) => rec.hdr.flags |= flags::PATH_UNREADABLE,
    }
    rec.hdr.flags |= exe_path(file, &mut rec.exe, &off);
    entry.submit(0);
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
/// Threads (child pid != child tgid) are not reported.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let off = OFFSETS.load();
    if off.valid == 0 {
        return 0;
    }
    let Some((cgroup_id, sandbox)) = current_sandbox() else {
        return 0;
    };
    let child: *const u8 = ctx.arg(1);
    let (Ok(child_pid), Ok(child_tgid)) =
        (read::<u32>(child, off.task_pid), read::<u32>(child, off.task_tgid))
    else {
        count(stat::READ_FAILED);
        return 0;
    };
    if child_pid != child_tgid {
        return 0;
    }
    let Some(mut entry) = reserve::<ForkRecord>(&sandbox, kind::FORK) else {
        return 0;
    };
    // SAFETY: reserved, exclusively owned record.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    header(&mut rec.hdr, kind::FORK, size_of::<ForkRecord>(), cgroup_id, &sandbox);
    current_proc(&mut rec.proc, off.task_tgid, off.task_real_parent);
    rec.child_pid = child_pid;
    rec.child_tgid = child_tgid;
    entry.submit(0);
    0
}

/// `sched_process_exit(struct task_struct *p, ...)`: reported for thread-group leaders.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    let off = OFFSETS.load();
    if off.valid == 0 {
        return 0;
    }
    let Some((cgroup_id, sandbox)) = current_sandbox() else {
        return 0;
    };
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    if pid_tgid as u32 != (pid_tgid >> 32) as u32 {
        return 0;
    }
    let Some(mut entry) = reserve::<ExitRecord>(&sandbox, kind::EXIT) else {
        return 0;
    };
    // SAFETY: reserved, exclusively owned record.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    header(&mut rec.hdr, kind::EXIT, size_of::<ExitRecord>(), cgroup_id, &sandbox);
    current_proc(&mut rec.proc, off.task_tgid, off.task_real_parent);
    // SAFETY: helper without arguments.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
    rec.exit_code = read::<u32>(task, off.task_exit_code).unwrap_or(0);
    rec._pad0 = 0;
    entry.submit(0);
    0
}
