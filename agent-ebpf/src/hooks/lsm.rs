//! BPF LSM engine: decisions at the LSM hook, from map lookups, denying with -EPERM.
use agent_common::maps::{ExecKey, sandbox_flags};
use aya_ebpf::{macros::lsm, programs::LsmContext};

use crate::{
    maps::{EXEC_ALLOW, EXEC_DENY, current_sandbox},
    offsets::{OFFSETS, read},
};

const EPERM: i32 = 1;

/// `bprm_check_security(struct linux_binprm *bprm, int ret)`: refuse executables listed
/// for the current task's sandbox, identified by (dev, inode) of the file being executed.
#[lsm(hook = "bprm_check_security")]
pub fn lsm_bprm_check(ctx: LsmContext) -> i32 {
    // Honour an earlier program's decision.
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        return prev;
    }
    let Some((_, sandbox)) = current_sandbox() else {
        return 0;
    };
    let off = OFFSETS.load();
    let bprm: *const u8 = ctx.arg(0);
    let Ok(file) = read::<*const u8>(bprm, off.bprm_file) else {
        return 0;
    };
    let (Ok(inode), true) = (read::<*const u8>(file, off.file_inode), off.valid != 0) else {
        return 0;
    };
    let (Ok(ino), Ok(sb)) = (read::<u64>(inode, off.inode_ino), read::<*const u8>(inode, off.inode_sb))
    else {
        return 0;
    };
    let Ok(dev) = read::<u32>(sb, off.sb_dev) else {
        return 0;
    };
    let key = ExecKey { slot: sandbox.slot, dev, ino };
    if EXEC_DENY.get_ptr(&key).is_some() {
        return -EPERM;
    }
    // A script is judged through its interpreter, which the kernel checks on the next round
    // (as the fallback engine does at sched_process_exec).
    if let Ok(magic) = read::<[u8; 2]>(bprm, off.bprm_buf)
        && magic == *b"#!"
    {
        return 0;
    }
    if sandbox.flags & sandbox_flags::EXEC_RESTRICTED != 0
        && sandbox.flags & sandbox_flags::AUDIT == 0
        && EXEC_ALLOW.get_ptr(&key).is_none()
    {
        return -EPERM;
    }
    0
}
