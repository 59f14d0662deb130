//! BPF LSM engine: decisions at LSM hooks from map lookups, refusing and recording every
//! refusal: files with `-EACCES` (as Landlock, the fallback engine, does), everything else with
//! `-EPERM`. Programs act only on sandboxes bound with the `LSM` flag, and honour an earlier
//! program's verdict. In audit mode they record "audit" and refuse nothing.
use core::ffi::c_void;

use agent_common::{
    abi::{ExecRecord, LsmRecord, action, file_op, flags, kind, rule, unix_op},
    maps::{FileKey, Sandbox, SecretToolKey, file_rule, sandbox_flags},
};
use aya_ebpf::{
    helpers::{bpf_d_path, bpf_get_current_task, bpf_probe_read_kernel_str_bytes, generated},
    macros::lsm,
    programs::LsmContext,
};

use super::sched::{exec_allowed, file_id, in_exec_dir};
use crate::path::{MAX_DEPTH, Up, build_path, copy_built_path, exe_path, unknown_zero, up};
use crate::{
    emit::{Verdict, count_lost_denial, current_proc, header, reserve, set_verdict},
    maps::{FILE_RULES, PATH_SCRATCH, SECRET_TOOLS, WATCHED, current_sandbox},
    offsets::{offsets, read},
};
use agent_common::config::KernelOffsets;

const EPERM: i32 = 1;
const EACCES: i32 = 13;
const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const PROT_EXEC: u64 = 0x4;
/// `RENAME_EXCHANGE`: both names swap objects.
const RENAME_EXCHANGE: u32 = 1 << 1;
/// `PROC_SUPER_MAGIC`: procfs.
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// Per-process files of procfs that expose another process's memory or environment: the
/// kernel opens them through `mm_access`, whose ptrace check (the `ptrace_access_check`
/// hook) 7.x kernels skip for readers with `CAP_PERFMON`. Names NUL-padded to 16 bytes.
const GUARDED_PROC_FILES: [[u8; 16]; 8] = [
    name16(b"environ"),
    name16(b"mem"),
    name16(b"auxv"),
    name16(b"maps"),
    name16(b"smaps"),
    name16(b"smaps_rollup"),
    name16(b"numa_maps"),
    name16(b"pagemap"),
];

const fn name16(s: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < s.len() {
        a[i] = s[i];
        i += 1;
    }
    a
}

/// `SB_KERNMOUNT`: an internal mount (memfd, pipes): no path a scope could name.
const SB_KERNMOUNT: u64 = 1 << 22;
/// Defines a BPF LSM program for `hook` that first honours an earlier LSM's refusal (the
/// `ret` argument, right after the hook's own `params` parameters) and otherwise returns
/// `judge`. Every hook reads `ret` at its own fixed position: the verifier refuses context
/// reads at computed offsets.
macro_rules! lsm_program {
    ($(#[$doc:meta])* $name:ident, $hook:tt, params = $params:tt, |$ctx:ident| $judge:expr) => {
        $(#[$doc])*
        #[lsm(hook = $hook)]
        pub fn $name($ctx: LsmContext) -> i32 {
            let prev: i32 = $ctx.arg($params);
            if prev != 0 {
                return prev;
            }
            $judge
        }
    };
}

/// The sandbox of the current task, if the LSM engine judges it.
#[inline(always)]
fn lsm_sandbox() -> Option<(u64, Sandbox, &'static KernelOffsets)> {
    let (cg, sb) = current_sandbox()?;
    if sb.flags & sandbox_flags::LSM == 0 {
        return None;
    }
    let off = offsets();
    if off.valid == 0 {
        return None;
    }
    Some((cg, sb, off))
}

/// How to return from the hook: `-errno` when the verdict is enforced, else 0.
#[inline(always)]
fn ret(v: Verdict, errno: i32) -> i32 {
    if v.enforced() { -errno } else { 0 }
}

/// Where a record's path comes from.
#[derive(Clone, Copy)]
enum RecordPath {
    None,
    /// A `struct path *` inside a trusted kernel object, for `bpf_d_path` (sleepable hooks).
    Kernel(*mut aya_ebpf::bindings::path),
    /// Built from the names of `dentry` and its ancestors; `vfsmnt` is its mount.
    Names {
        dentry: *const u8,
        vfsmnt: *const u8,
    },
}

/// Emits an `LsmRecord`.
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
    path: RecordPath,
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
    match path {
        RecordPath::None => {}
        RecordPath::Kernel(p) => {
            // SAFETY: `p` points into a kernel object the hook received; the helper bounds
            // the write to the buffer.
            let n = unsafe { bpf_d_path(p, rec.path.as_mut_ptr().cast(), rec.path.len() as u32) };
            if n < 0 {
                rec.hdr.flags |= flags::PATH_UNREADABLE;
            }
        }
        RecordPath::Names { dentry, vfsmnt } => {
            if build_path(dentry, vfsmnt, off) {
                rec.hdr.flags |= flags::PATH_TRUNCATED;
            }
            copy_built_path(&mut rec.path);
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
    unsafe { WATCHED.get(id) }.map(|s| s.slot)
}

/// Whether `inode` is on a procfs superblock.
#[inline(always)]
fn on_procfs(inode: *const u8, off: &KernelOffsets) -> bool {
    read::<*const u8>(inode, off.inode_sb)
        .ok()
        .and_then(|sb| read::<u64>(sb, off.sb_magic).ok())
        .is_some_and(|m| m == PROC_SUPER_MAGIC)
}

/// The process a guarded `/proc/<pid>/...` file (see [`GUARDED_PROC_FILES`]) belongs to,
/// if `dentry`/`inode` is one: the task behind the procfs inode's `struct pid`.
#[inline(always)]
fn guarded_proc_task(dentry: *const u8, inode: *const u8, off: &KernelOffsets) -> Option<*const u8> {
    let sb = read::<*const u8>(inode, off.inode_sb).ok()?;
    if read::<u64>(sb, off.sb_magic).ok()? != PROC_SUPER_MAGIC {
        return None;
    }
    let name_ptr = read::<*const u8>(dentry, off.dentry_name + off.qstr_name).ok()?;
    let mut name = [0u8; 16];
    // SAFETY: bounded by the destination; a longer name is cut and matches nothing below.
    unsafe { bpf_probe_read_kernel_str_bytes(name_ptr, &mut name) }.ok()?;
    let word = |b: &[u8; 16], i: usize| {
        u64::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]])
    };
    let (lo, hi) = (word(&name, 0), word(&name, 8));
    if !GUARDED_PROC_FILES.iter().any(|g| word(g, 0) == lo && word(g, 8) == hi) {
        return None;
    }
    // `struct proc_inode` embeds the inode; its `pid` leads to the task.
    let pid =
        read::<*const u8>(inode.wrapping_sub(off.proc_inode_vfs_inode as usize), off.proc_inode_pid).ok()?;
    let node = read::<*const u8>(pid, off.pid_tasks).ok()?;
    if node.is_null() {
        return None;
    }
    Some(node.wrapping_sub(off.task_pid_links as usize))
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
    unsafe { FILE_RULES.get(FileKey { slot, dev: id.0, ino: id.1 }) }.copied().unwrap_or(0)
}

/// Rule bits the walk from an object up to the root collected.
#[derive(Clone, Copy)]
struct Walk {
    /// Rules on the object itself.
    own: u32,
    /// Rules on its directory (the first ancestor; also part of `above`).
    parent: u32,
    /// Rules on its ancestors (across mount points).
    above: u32,
    /// Reached the root within MAX_DEPTH (otherwise nothing beyond `own`/`above` is known).
    complete: bool,
}

impl Walk {
    fn all(&self) -> u32 {
        self.own | self.above
    }
}

/// What a walk found, as its callback leaves it in [`WalkCtx`]. Both fields start as
/// [`unknown_zero`] and only change to values the verifier cannot know either.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct WalkOut {
    above: u32,
    parent: u32,
    /// Non-zero once the namespace root was reached.
    complete: u32,
    _pad0: u32,
}

/// State of one walk, shared with its `bpf_loop` callback: the loop body is verified a few
/// times (until its states converge) instead of once per level.
#[repr(C)]
struct WalkCtx {
    out: WalkOut,
    dentry: *const u8,
    /// The `struct mount` `dentry` is in.
    mnt: *const u8,
    slot: u32,
    _pad0: u32,
}

/// One level of the rules walk (`bpf_loop` callback): moves from `dentry` to the next
/// ancestor and collects its rules. Returns 1 to stop.
#[inline(never)]
extern "C" fn walk_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `WalkCtx` on the caller's stack that `walk` hands to bpf_loop.
    let c = unsafe { &mut *(ctx as *mut WalkCtx) };
    let off = offsets();
    match up(c.dentry, c.mnt, off) {
        Up::Parent(p) => c.dentry = p,
        Up::MountPoint(mp, m) => {
            c.dentry = mp;
            c.mnt = m;
        }
        Up::Root => {
            c.out.complete = index as u32 | 1;
            return 1;
        }
        Up::Lost => return 1,
    }
    let Ok(inode) = read::<*const u8>(c.dentry, off.dentry_inode) else { return 1 };
    if let Some(id) = inode_id(inode, off) {
        let bits = rules_of(c.slot, id);
        c.out.above |= bits;
        if index == 0 {
            c.out.parent = bits;
        }
    }
    0
}

/// `v`, passed through map memory so the verifier no longer knows it: the paths that reach
/// a record with different constants (rule, operation) are checked once from here on.
#[inline(always)]
fn hidden(v: u32) -> u32 {
    match PATH_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU value, nothing else uses it on this CPU while the program runs;
        // volatile so the compiler keeps the round trip.
        Some(s) => unsafe {
            core::ptr::write_volatile(&mut (*s).tmp, v);
            core::ptr::read_volatile(&(*s).tmp)
        },
        None => v,
    }
}

/// Walks `dentry0` and its ancestors (crossing mount points up to the namespace root),
/// collecting the sandbox's rules on each object. `vfsmnt` is the `struct vfsmount *` of a
/// `struct path`. A negative dentry (a name being created) has no rules of its own.
#[inline(always)]
fn walk(slot: u32, dentry0: *const u8, vfsmnt: *const u8, off: &KernelOffsets) -> Walk {
    let own = read::<*const u8>(dentry0, off.dentry_inode)
        .ok()
        .filter(|i| !i.is_null())
        .and_then(|i| inode_id(i, off))
        .map(|id| rules_of(slot, id))
        .unwrap_or(0);
    let mut c = WalkCtx {
        out: WalkOut { above: unknown_zero(), parent: unknown_zero(), complete: unknown_zero(), _pad0: 0 },
        dentry: dentry0,
        mnt: vfsmnt.wrapping_sub(off.mount_mnt as usize),
        slot,
        _pad0: 0,
    };
    // SAFETY: the callback is a static function of this object and `c` outlives the call.
    unsafe {
        generated::bpf_loop(
            MAX_DEPTH,
            walk_step as *const () as *mut c_void,
            &mut c as *mut WalkCtx as *mut c_void,
            0,
        )
    };
    Walk { own, parent: c.out.parent, above: c.out.above, complete: c.out.complete != 0 }
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
    let off = offsets();
    if off.valid == 0 {
        return 0;
    }
    let bprm: *const u8 = ctx.arg(0);
    let Ok(file) = read::<*const u8>(bprm, off.bprm_file) else {
        return 0;
    };
    let id = file_id(file, off.file_inode, off.inode_ino, off.inode_sb, off.sb_dev);
    // Test hook (feature `test-hooks`): an explicit deny list (the VM tier's basic LSM test).
    #[cfg(feature = "test-hooks")]
    if let Some((dev, ino)) = id
        && crate::maps::EXEC_DENY
            .get_ptr(agent_common::maps::ExecKey { slot: sandbox.slot, dev, ino })
            .is_some()
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
    if exec_allowed(&sandbox, id) || in_exec_dir(&sandbox, file, off) {
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
            rec.hdr.flags |= exe_path(file, &mut rec.exe, off);
            entry.submit(0);
        }
        None => count_lost_denial(&sandbox),
    }
    ret(v, EPERM)
}

/// Whether rule bits grant reading (or reading is not restricted).
#[inline(always)]
fn read_ok(sandbox: &Sandbox, bits: u32, complete: bool) -> bool {
    sandbox.flags & sandbox_flags::READ_RESTRICTED == 0 || (bits & file_rule::READ != 0 && complete)
}

/// Whether rule bits grant writing (or writing is not restricted).
#[inline(always)]
fn write_ok(sandbox: &Sandbox, bits: u32, complete: bool) -> bool {
    sandbox.flags & sandbox_flags::WRITE_RESTRICTED == 0 || (bits & file_rule::WRITE != 0 && complete)
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
    let inode = read::<*const u8>(dentry, off.dentry_inode).unwrap_or_default();
    if inode.is_null() {
        return 0;
    }
    let id = inode_id(inode, off);
    let own = id.map(|i| rules_of(sandbox.slot, i)).unwrap_or(0);
    let mut rule_id = rule::NONE;
    if let Some(task) = guarded_proc_task(dentry, inode, off)
        && task_slot(task, off) != Some(sandbox.slot)
    {
        // Another process's memory or environment, however the kernel checks ptrace access.
        rule_id = rule::PROTECTED_PROCESS;
    } else if own & file_rule::SECRET != 0 {
        // A secret: its tools may open it (reading), nobody else.
        let tool = current_exe(off);
        let allowed = match (id, tool) {
            (Some((sdev, sino)), Some((tdev, tino))) => SECRET_TOOLS
                .get_ptr(SecretToolKey {
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
        let w = walk(sandbox.slot, dentry, vfsmnt, off);
        let bits = w.all();
        if bits & file_rule::DENY != 0 {
            rule_id = rule::FILES_DENY;
        } else if want_write && bits & file_rule::DENY_WRITE != 0 {
            rule_id = rule::PROTECTED_CONTROL;
        } else if want_write && bits & file_rule::DENY_SYSTEM != 0 {
            rule_id = rule::PROTECTED_SYSTEM;
        } else if want_write && !write_ok(&sandbox, bits, w.complete) {
            rule_id = rule::FILES_WRITE;
        } else if want_read && !read_ok(&sandbox, bits, w.complete) && !on_procfs(inode, off) {
            // procfs is always readable (as `/proc` is in the scope's read grants): the task's
            // own procfs is a mount of its PID namespace that no rule names by identity, and
            // other processes' memory and environment are guarded above.
            rule_id = rule::FILES_READ;
        }
    }
    if rule_id == rule::NONE {
        return 0;
    }
    let v = Verdict::deny(&sandbox, hidden(rule_id as u32) as u16, action::REFUSE);
    let path = (file as *mut u8).wrapping_add(off.file_path as usize) as *mut aya_ebpf::bindings::path;
    emit(kind::OPEN, cgroup_id, &sandbox, off, v, 0, mode, id, RecordPath::Kernel(path));
    ret(v, EACCES)
}

/// A connection from the current task to the unix socket `other` (a `struct sock *`, i.e. a
/// `struct unix_sock *`): a path-named socket is judged like opening its file for reading
/// (`files.deny`, `files.read`, Warden's evidence); abstract and unnamed sockets have no path
/// and are left to the other controls.
#[inline(always)]
fn judge_unix(other: *const u8, op: u32) -> i32 {
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let at = off.unix_sock_path as usize;
    let dentry = read::<*const u8>(other.wrapping_add(at), off.path_dentry).unwrap_or_default();
    let vfsmnt = read::<*const u8>(other.wrapping_add(at), off.path_mnt).unwrap_or_default();
    if dentry.is_null() || vfsmnt.is_null() {
        return judge_unix_abstract(other, op, cgroup_id, &sandbox, off);
    }
    let w = walk(sandbox.slot, dentry, vfsmnt, off);
    let bits = w.all();
    let rule_id = if bits & file_rule::DENY != 0 {
        rule::FILES_DENY
    } else if !read_ok(&sandbox, bits, w.complete) {
        rule::FILES_READ
    } else {
        return 0;
    };
    let v = Verdict::deny(&sandbox, hidden(rule_id as u32) as u16, action::REFUSE);
    let id = read::<*const u8>(dentry, off.dentry_inode)
        .ok()
        .filter(|i| !i.is_null())
        .and_then(|i| inode_id(i, off));
    emit(kind::UNIX, cgroup_id, &sandbox, off, v, 0, op, id, RecordPath::Names { dentry, vfsmnt });
    ret(v, EACCES)
}

/// A socket with no file (`other`, a `struct sock *`): an abstract name is reachable only when
/// the socket was created inside the task's own sandbox (its cgroup, or a child cgroup, is
/// one of the task's), as Landlock's abstract-socket scope decides on the fallback engine;
/// everything outside — a node service, another task — is refused (EPERM) and recorded as
/// `protected.process`. An unnamed socket (a `socketpair` end) is only reachable through a
/// descriptor the task already holds: not judged.
#[inline(always)]
fn judge_unix_abstract(
    other: *const u8,
    op: u32,
    cgroup_id: u64,
    sandbox: &Sandbox,
    off: &KernelOffsets,
) -> i32 {
    let addr = read::<*const u8>(other, off.unix_sock_addr).unwrap_or_default();
    if addr.is_null() {
        return 0;
    }
    // `struct sockaddr_un`: `sun_family` (2 bytes), then `sun_path`.
    match read::<u8>(addr, off.unix_address_name + 2) {
        Ok(0) => {}
        _ => return 0,
    }
    let peer = read::<*const u8>(other, off.sock_cgroup)
        .ok()
        .filter(|cg| !cg.is_null())
        .and_then(|cg| read::<*const u8>(cg, off.cgroup_kn).ok())
        .filter(|kn| !kn.is_null())
        .and_then(|kn| read::<u64>(kn, off.kn_id).ok())
        .unwrap_or(0);
    // SAFETY: value is Copy and read immediately.
    if peer != 0 && unsafe { WATCHED.get(peer) }.is_some_and(|p| p.slot == sandbox.slot) {
        return 0;
    }
    let v = Verdict::deny(sandbox, hidden(rule::PROTECTED_PROCESS as u32) as u16, action::REFUSE);
    emit(kind::UNIX, cgroup_id, sandbox, off, v, 0, op, None, RecordPath::None);
    ret(v, EPERM)
}

lsm_program!(
    /// `unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk, int ret)`
    lsm_unix_stream_connect,
    "unix_stream_connect",
    params = 3,
    |ctx| judge_unix(ctx.arg(1), unix_op::STREAM_CONNECT)
);

lsm_program!(
    /// `unix_may_send(struct socket *sock, struct socket *other, int ret)`: every datagram
    /// sent, and connecting a datagram socket.
    lsm_unix_may_send,
    "unix_may_send",
    params = 2,
    |ctx| {
        let other: *const u8 = ctx.arg(1);
        match read::<*const u8>(other, offsets().socket_sk) {
            Ok(sk) if !sk.is_null() => judge_unix(sk, unix_op::DGRAM_SEND),
            _ => 0,
        }
    }
);

/// The rule that refuses adding (`adding`) or removing the name of `w`'s object in its
/// directory (creating, unlinking, either end of a link or rename), or `rule::NONE`.
#[inline(always)]
fn name_change_rule(sandbox: &Sandbox, w: &Walk, adding: bool) -> u16 {
    let bits = w.all();
    // A new name in a system directory is the system rule's (such a directory often holds a
    // denied name too, e.g. /etc/shadow, whose carve-out refuses new names beside it).
    let system = bits & file_rule::DENY_SYSTEM != 0;
    if bits & file_rule::DENY != 0 || (adding && w.parent & file_rule::NO_NEW != 0 && !system) {
        rule::FILES_DENY
    } else if bits & file_rule::DENY_WRITE != 0 {
        rule::PROTECTED_CONTROL
    } else if system {
        rule::PROTECTED_SYSTEM
    } else if w.own & file_rule::SECRET != 0 {
        // A secret keeps the one name it was granted under.
        rule::SECRETS
    } else if !write_ok(sandbox, w.above, w.complete) {
        // The directory's rules decide (a rule on the file itself grants its contents only).
        rule::FILES_WRITE
    } else {
        rule::NONE
    }
}

/// Records and answers a file-tree verdict about `dentry` (in the mount of `vfsmnt`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tree_verdict(
    cgroup_id: u64,
    sandbox: &Sandbox,
    off: &KernelOffsets,
    rule_id: u16,
    op: u32,
    dentry: *const u8,
    vfsmnt: *const u8,
) -> i32 {
    if rule_id == rule::NONE {
        return 0;
    }
    let code = hidden(((rule_id as u32) << 16) | op);
    let v = Verdict::deny(sandbox, (code >> 16) as u16, action::REFUSE);
    let id = read::<*const u8>(dentry, off.dentry_inode)
        .ok()
        .filter(|i| !i.is_null())
        .and_then(|i| inode_id(i, off));
    emit(kind::FILE, cgroup_id, sandbox, off, v, 0, code & 0xffff, id, RecordPath::Names { dentry, vfsmnt });
    ret(v, EACCES)
}

/// A new (`adding`) or removed name `dentry` in the directory `dir` (a `struct path *`).
#[inline(always)]
fn judge_name(dir: *const u8, dentry: *const u8, op: u32, adding: bool) -> i32 {
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let Ok(vfsmnt) = read::<*const u8>(dir, off.path_mnt) else {
        return 0;
    };
    let w = walk(sandbox.slot, dentry, vfsmnt, off);
    tree_verdict(cgroup_id, &sandbox, off, name_change_rule(&sandbox, &w, adding), op, dentry, vfsmnt)
}

lsm_program!(
    /// `path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev, int ret)`:
    /// also every `open(O_CREAT)` that creates the file.
    lsm_path_mknod,
    "path_mknod",
    params = 4,
    |ctx| judge_name(ctx.arg(0), ctx.arg(1), file_op::CREATE, true)
);

lsm_program!(
    /// `path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode, int ret)`
    lsm_path_mkdir,
    "path_mkdir",
    params = 3,
    |ctx| judge_name(ctx.arg(0), ctx.arg(1), file_op::MKDIR, true)
);

lsm_program!(
    /// `path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name, int ret)`
    lsm_path_symlink,
    "path_symlink",
    params = 3,
    |ctx| judge_name(ctx.arg(0), ctx.arg(1), file_op::SYMLINK, true)
);

lsm_program!(
    /// `path_unlink(const struct path *dir, struct dentry *dentry, int ret)`
    lsm_path_unlink,
    "path_unlink",
    params = 2,
    |ctx| judge_name(ctx.arg(0), ctx.arg(1), file_op::UNLINK, false)
);

lsm_program!(
    /// `path_rmdir(const struct path *dir, struct dentry *dentry, int ret)`
    lsm_path_rmdir,
    "path_rmdir",
    params = 2,
    |ctx| judge_name(ctx.arg(0), ctx.arg(1), file_op::RMDIR, false)
);

/// The rule that guards a walked object against any change: denied, a control file, or a
/// secret (`rule::NONE` if none does).
#[inline(always)]
fn guarded_object_rule(w: &Walk) -> u16 {
    let bits = w.all();
    if bits & file_rule::DENY != 0 {
        rule::FILES_DENY
    } else if bits & file_rule::DENY_WRITE != 0 {
        rule::PROTECTED_CONTROL
    } else if bits & file_rule::DENY_SYSTEM != 0 {
        rule::PROTECTED_SYSTEM
    } else if w.own & file_rule::SECRET != 0 {
        rule::SECRETS
    } else {
        rule::NONE
    }
}

/// A hook on one `struct path *` (its first argument; `ret` is argument `ret_arg`): the
/// earlier verdict if there was one, else `judge`'s rule for the walked object, recorded and
/// answered as `op` (0: nothing to judge — not a sandbox's task, or an unreadable path).
#[inline(always)]
fn on_path(ctx: &LsmContext, ret_arg: usize, op: u32, judge: impl Fn(&Sandbox, &Walk) -> u16) -> i32 {
    let prev: i32 = ctx.arg(ret_arg);
    if prev != 0 {
        return prev;
    }
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let path: *const u8 = ctx.arg(0);
    let (Ok(dentry), Ok(vfsmnt)) =
        (read::<*const u8>(path, off.path_dentry), read::<*const u8>(path, off.path_mnt))
    else {
        return 0;
    };
    let w = walk(sandbox.slot, dentry, vfsmnt, off);
    tree_verdict(cgroup_id, &sandbox, off, judge(&sandbox, &w), op, dentry, vfsmnt)
}

/// `path_truncate(const struct path *path, int ret)`: `truncate(2)` by name (opening with
/// `O_TRUNC` needs write access, judged at `file_open`).
#[lsm(hook = "path_truncate")]
pub fn lsm_path_truncate(ctx: LsmContext) -> i32 {
    on_path(&ctx, 1, file_op::TRUNCATE, |sandbox, w| {
        let rule_id = guarded_object_rule(w);
        if rule_id == rule::NONE && !write_ok(sandbox, w.all(), w.complete) {
            rule::FILES_WRITE
        } else {
            rule_id
        }
    })
}

/// `path_chmod(const struct path *path, umode_t mode, int ret)`: changing the permissions of
/// a file the task may not write (a denied, control, system or secret file) — e.g. making a
/// node program setuid, or `/etc/passwd` writable by everyone — is refused like writing it.
#[lsm(hook = "path_chmod")]
pub fn lsm_path_chmod(ctx: LsmContext) -> i32 {
    on_path(&ctx, 2, file_op::CHMOD, |_, w| guarded_object_rule(w))
}

/// The rule that refuses giving the object `src` walked the name `dst` walked (link, or one
/// direction of a rename): both names must be changeable, and the new name may not grant
/// more than the old one did (no read or write access gained by moving or linking a file).
#[inline(always)]
fn rename_rule(sandbox: &Sandbox, src: &Walk, dst: &Walk, src_removed: bool) -> u16 {
    let d = name_change_rule(sandbox, dst, true);
    if d != rule::NONE {
        return d;
    }
    let s = if src_removed { name_change_rule(sandbox, src, false) } else { guarded_object_rule(src) };
    if s != rule::NONE {
        return s;
    }
    // The object keeps its own rules; only what the names' ancestors grant changes.
    let (src_bits, dst_bits) = (src.all(), dst.above | src.own);
    if write_ok(sandbox, dst_bits, dst.complete) && !write_ok(sandbox, src_bits, src.complete) {
        rule::FILES_WRITE
    } else if read_ok(sandbox, dst_bits, dst.complete) && !read_ok(sandbox, src_bits, src.complete) {
        rule::FILES_READ
    } else {
        rule::NONE
    }
}

/// `path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry, int ret)`
#[lsm(hook = "path_link")]
pub fn lsm_path_link(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(3);
    if prev != 0 {
        return prev;
    }
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let old: *const u8 = ctx.arg(0);
    let new_dir: *const u8 = ctx.arg(1);
    let new: *const u8 = ctx.arg(2);
    // A link never crosses mounts: both names are in `new_dir`'s mount.
    let Ok(vfsmnt) = read::<*const u8>(new_dir, off.path_mnt) else {
        return 0;
    };
    let dst = walk(sandbox.slot, new, vfsmnt, off);
    let src = walk(sandbox.slot, old, vfsmnt, off);
    let rule_id = rename_rule(&sandbox, &src, &dst, false);
    tree_verdict(cgroup_id, &sandbox, off, rule_id, file_op::LINK, old, vfsmnt)
}

/// `path_rename(const struct path *old_dir, struct dentry *old_dentry, const struct path *new_dir,
/// struct dentry *new_dentry, unsigned int flags, int ret)`
#[lsm(hook = "path_rename")]
pub fn lsm_path_rename(ctx: LsmContext) -> i32 {
    let prev: i32 = ctx.arg(5);
    if prev != 0 {
        return prev;
    }
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let old_dir: *const u8 = ctx.arg(0);
    let old: *const u8 = ctx.arg(1);
    let new: *const u8 = ctx.arg(3);
    let rename_flags: u32 = ctx.arg(4);
    // A rename never crosses mounts either.
    let Ok(vfsmnt) = read::<*const u8>(old_dir, off.path_mnt) else {
        return 0;
    };
    let dst = walk(sandbox.slot, new, vfsmnt, off);
    let src = walk(sandbox.slot, old, vfsmnt, off);
    let mut rule_id = rename_rule(&sandbox, &src, &dst, true);
    let mut op = file_op::RENAME;
    if rename_flags & RENAME_EXCHANGE != 0 {
        op = file_op::EXCHANGE;
        if rule_id == rule::NONE {
            rule_id = rename_rule(&sandbox, &dst, &src, true);
        }
    }
    tree_verdict(cgroup_id, &sandbox, off, rule_id, op, old, vfsmnt)
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
    if exec_allowed(sandbox, id) || in_exec_dir(sandbox, file, off) {
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
    if w.all() & file_rule::WRITE != 0 && sandbox.flags & sandbox_flags::WRITE_RESTRICTED != 0 {
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
    let Some(id) = exec_map_refused(&sandbox, file, off) else {
        return 0;
    };
    let v = Verdict::deny(&sandbox, rule::EXEC_MMAP, action::REFUSE);
    let path = (file as *mut u8).wrapping_add(off.file_path as usize) as *mut aya_ebpf::bindings::path;
    emit(kind::MMAP, cgroup_id, &sandbox, off, v, 0, prot as u32, Some(id), RecordPath::Kernel(path));
    ret(v, EPERM)
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
    let file = read::<*const u8>(vma, off.vma_file).unwrap_or_default();
    let Some(id) = exec_map_refused(&sandbox, file, off) else {
        return 0;
    };
    let v = Verdict::deny(&sandbox, rule::EXEC_MMAP, action::REFUSE);
    emit(kind::MMAP, cgroup_id, &sandbox, off, v, 0, prot as u32, Some(id), RecordPath::None);
    ret(v, EPERM)
}

/// Judges an action on `target` (a task): allowed only inside the caller's own sandbox.
#[inline(always)]
fn judge_task(record_kind: u16, target: *const u8, arg: u32) -> i32 {
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    if task_slot(target, off) == Some(sandbox.slot) {
        return 0;
    }
    let v = Verdict::deny(&sandbox, rule::PROTECTED_PROCESS, action::REFUSE);
    let tgid = read::<u32>(target, off.task_tgid).unwrap_or(0);
    emit(record_kind, cgroup_id, &sandbox, off, v, tgid, arg, None, RecordPath::None);
    ret(v, EPERM)
}

lsm_program!(
    /// `task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred, int ret)`
    lsm_task_kill,
    "task_kill",
    params = 4,
    |ctx| {
        let sig: i32 = ctx.arg(2);
        judge_task(kind::SIGNAL, ctx.arg(0), sig as u32)
    }
);

lsm_program!(
    /// `ptrace_access_check(struct task_struct *child, unsigned int mode, int ret)`: also guards
    /// `/proc/<pid>/environ`, `mem` and `maps` of processes outside the sandbox.
    lsm_ptrace,
    "ptrace_access_check",
    params = 2,
    |ctx| {
        let mode: u32 = ctx.arg(1);
        judge_task(kind::PTRACE, ctx.arg(0), mode)
    }
);

/// Refuses an action to every sandboxed task (protected defaults without a grant).
#[inline(always)]
fn refuse_all(record_kind: u16, rule_id: u16, arg: u32) -> i32 {
    let Some((cgroup_id, sandbox, off)) = lsm_sandbox() else {
        return 0;
    };
    let v = Verdict::deny(&sandbox, rule_id, action::REFUSE);
    emit(record_kind, cgroup_id, &sandbox, off, v, 0, arg, None, RecordPath::None);
    ret(v, EPERM)
}

lsm_program!(
    /// `bpf(int cmd, union bpf_attr *attr, unsigned int size, int ret)` (kernels before 6.14).
    /// One program per prototype: a context read at a computed offset is refused by the
    /// verifier, so the loader picks the program whose `ret` position matches the kernel.
    lsm_bpf,
    "bpf",
    params = 3,
    |ctx| {
        let cmd: i32 = ctx.arg(0);
        refuse_all(kind::BPF, rule::PROTECTED_BPF, cmd as u32)
    }
);

lsm_program!(
    /// `bpf(int cmd, union bpf_attr *attr, unsigned int size, bool kernel, int ret)` (6.14+).
    lsm_bpf_k,
    "bpf",
    params = 4,
    |ctx| {
        let cmd: i32 = ctx.arg(0);
        refuse_all(kind::BPF, rule::PROTECTED_BPF, cmd as u32)
    }
);

lsm_program!(
    /// `sb_mount(const char *dev, const struct path *path, const char *type, unsigned long flags, void *data, int ret)`
    lsm_sb_mount,
    "sb_mount",
    params = 5,
    |ctx| refuse_all(kind::MOUNT, rule::PROTECTED_MOUNT, 0)
);

lsm_program!(
    /// `move_mount(const struct path *from, const struct path *to, int ret)` (new mount API).
    lsm_move_mount,
    "move_mount",
    params = 2,
    |ctx| refuse_all(kind::MOUNT, rule::PROTECTED_MOUNT, 1)
);

lsm_program!(
    /// `kernel_read_file(struct file *file, enum kernel_read_file_id id, bool contents, int ret)`
    lsm_kernel_read_file,
    "kernel_read_file",
    params = 3,
    |ctx| {
        let id: u32 = ctx.arg(1);
        refuse_all(kind::MODULE, rule::PROTECTED_MODULE, id)
    }
);

lsm_program!(
    /// `kernel_load_data(enum kernel_load_data_id id, bool contents, int ret)`
    lsm_kernel_load_data,
    "kernel_load_data",
    params = 2,
    |ctx| {
        let id: u32 = ctx.arg(0);
        refuse_all(kind::MODULE, rule::PROTECTED_MODULE, id)
    }
);
