//! Fallback engine: path-named unix sockets at the cgroup `connect_unix` and `sendmsg_unix`
//! hooks (kernel 6.7+), attached to each sandbox cgroup like the egress programs.
//!
//! Without BPF LSM there is no hook that sees the socket *file* a connect reaches: these run
//! in `connect(2)` (stream and datagram) and in `sendmsg(2)` with an address, before the
//! kernel looks the name up, and judge the name the task gave, the way the LSM engine's
//! `unix_stream_connect`/`unix_may_send` judge the file: refused under a `files.deny` path
//! (or a protected one), or outside `files.read` when reading is restricted. A name that
//! cannot be judged by its text — relative, with `.`, `..` or empty components, or through the
//! magic links of `/proc` and `/dev/fd` — is refused too (`rule::UNIX_NAME`). Abstract and
//! unnamed sockets are not judged here (Landlock scopes abstract sockets).
//!
//! Refusals return `EACCES` (as the LSM engine and Landlock do for files) through
//! `bpf_set_retval`, and are recorded as `kind::UNIX`; audit mode records and allows.
//!
//! aya 0.14 has no attach type for these hooks: the sections below are ones aya parses
//! (`cgroup/connect4/...`), and `agent-user/src/loader/raw_unix.rs` loads the programs itself
//! with the real `expected_attach_type` and attaches them with `BPF_LINK_CREATE`.
use core::ffi::c_void;

use agent_common::{
    abi::{LsmRecord, action, kind, rule, unix_op},
    maps::{Sandbox, UNIX_FULL_PREFIX, UNIX_PATH_KEY, file_rule, sandbox_flags},
};
use aya_ebpf::{bindings::bpf_sock_addr, helpers::generated};

use crate::{
    emit::{Verdict, count_lost_denial, current_proc, header, reserve, set_verdict},
    maps::{UNIX_RULES, UNIX_SCRATCH, UnixScratch, current_sandbox},
    offsets::{offsets, read},
};

const EACCES: i32 = 13;
const SOCK_DGRAM: u32 = 2;
/// `sun_path` holds at most this many bytes.
const SUN_PATH_MAX: u32 = 108;
/// Offset of `sun_path` in `struct sockaddr_un`.
const SUN_PATH_AT: usize = 2;
/// Offset of the path bytes in [`UnixScratch`] (after `prefix_len` and `slot_be`).
const SCRATCH_PATH_AT: usize = 8;

/// Checks one byte of the name in the scratch: tracks the current component and marks the
/// name bad on an empty, `.` or `..` component, or when it is relative. Returns false at the
/// end of the name. The state lives in map memory (read and written volatile), so the
/// verifier sees the same state at the top of every iteration and prunes instead of
/// following each way through the previous bytes.
#[inline(always)]
fn name_step(s: *mut UnixScratch, index: usize) -> bool {
    // SAFETY: `s` is the per-CPU scratch value; `index` < UNIX_PATH_KEY, so the byte is
    // inside the path. Nothing else uses the value on this CPU while the program runs.
    unsafe {
        let c = core::ptr::read_volatile((s as *const u8).wrapping_add(SCRATCH_PATH_AT + index));
        let seg = core::ptr::addr_of_mut!((*s).seg);
        let dots = core::ptr::addr_of_mut!((*s).dots);
        let bad = core::ptr::addr_of_mut!((*s).bad);
        if c == b'/' || c == 0 {
            // The component that ends here: empty (`//`, a trailing `/`), `.` or `..`.
            let (n, d) = (core::ptr::read_volatile(seg), core::ptr::read_volatile(dots));
            if (index != 0 && n == 0) || (n != 0 && n == d && d <= 2) {
                core::ptr::write_volatile(bad, 1);
            }
            core::ptr::write_volatile(seg, 0);
            core::ptr::write_volatile(dots, 0);
            return c != 0;
        }
        if index == 0 {
            // Relative: resolved from a working directory the name does not show.
            core::ptr::write_volatile(bad, 1);
            return false;
        }
        core::ptr::write_volatile(seg, core::ptr::read_volatile(seg) + 1);
        if c == b'.' {
            core::ptr::write_volatile(dots, core::ptr::read_volatile(dots) + 1);
        }
        true
    }
}

/// Copies the socket's name from the address the task gave into the scratch key. Returns
/// false for anything that is no path-named socket (unnamed, abstract) or unreadable.
#[inline(always)]
fn copy_name(sa: *const bpf_sock_addr, s: &mut UnixScratch) -> bool {
    let off = offsets();
    if off.sock_addr_uaddrlen == 0 {
        return false;
    }
    // The context is a `struct bpf_sock_addr_kern` (its `bpf_sock_addr` view has no unix
    // path): read its `uaddr`/`uaddrlen` through BTF offsets.
    let kctx = sa as *const u8;
    let Ok(uaddr) = read::<*const u8>(kctx, off.sock_addr_uaddr) else { return false };
    let Ok(len) = read::<u32>(kctx, off.sock_addr_uaddrlen) else { return false };
    if uaddr.is_null() || len <= SUN_PATH_AT as u32 {
        return false;
    }
    let Ok(first) = read::<u8>(uaddr, SUN_PATH_AT as u32) else { return false };
    if first == 0 {
        return false;
    }
    let mut n = len - SUN_PATH_AT as u32;
    if n > SUN_PATH_MAX {
        n = SUN_PATH_MAX;
    }
    let mut i = 0;
    while i < UNIX_PATH_KEY {
        s.key.path[i] = 0;
        i += 1;
    }
    // SAFETY: at most n + 1 <= 109 bytes into the 112-byte buffer; the helper stops at the
    // first NUL and never faults on the source.
    let r = unsafe {
        generated::bpf_probe_read_kernel_str(
            s.key.path.as_mut_ptr() as *mut c_void,
            (n & 0x7f) + 1,
            uaddr.wrapping_add(SUN_PATH_AT) as *const c_void,
        )
    };
    r > 0
}

/// Judges a connect or datagram to a path-named unix socket; 1 lets it through, 0 refuses it
/// (with the `EACCES` set here).
#[inline(always)]
fn judge(sa: *const bpf_sock_addr, op: u32) -> i32 {
    let Some((cgroup_id, sandbox)) = current_sandbox() else {
        return 1;
    };
    // The BPF LSM engine judges the socket's file itself.
    if sandbox.flags & sandbox_flags::LSM != 0 {
        return 1;
    }
    let Some(s) = UNIX_SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: per-CPU value, nothing else uses it on this CPU while the program runs.
    let s = unsafe { &mut *s };
    if !copy_name(sa, s) {
        return 1;
    }
    s.seg = 0;
    s.dots = 0;
    s.bad = 0;
    let sp = s as *mut UnixScratch;
    let mut i = 0;
    while i < UNIX_PATH_KEY {
        if !name_step(sp, i) {
            break;
        }
        i += 1;
    }
    let rule_id = if s.bad != 0 {
        rule::UNIX_NAME
    } else {
        s.prefix_len = UNIX_FULL_PREFIX;
        s.key.slot_be = sandbox.slot.to_be_bytes();
        let key =
            s as *const UnixScratch as *const aya_ebpf::maps::lpm_trie::Key<agent_common::maps::UnixPathKey>;
        // SAFETY: `prefix_len` and `key` are laid out as the trie's `Key`; the value is
        // copied at once.
        let bits = unsafe { UNIX_RULES.get(&*key) }.copied().unwrap_or(0);
        if bits & file_rule::OPAQUE != 0 {
            rule::UNIX_NAME
        } else if bits & file_rule::DENY != 0 {
            rule::FILES_DENY
        } else if sandbox.flags & sandbox_flags::READ_RESTRICTED != 0 && bits & file_rule::READ == 0 {
            rule::FILES_READ
        } else {
            return 1;
        }
    };
    let v = Verdict::deny(&sandbox, rule_id, action::REFUSE);
    emit(cgroup_id, &sandbox, v, op, s);
    if v.enforced() {
        // SAFETY: helper with a plain integer; allowed in connect/sendmsg programs.
        unsafe { generated::bpf_set_retval(-EACCES) };
        0
    } else {
        1
    }
}

#[inline(always)]
fn emit(cgroup_id: u64, sandbox: &Sandbox, v: Verdict, op: u32, s: &UnixScratch) {
    let Some(mut entry) = reserve::<LsmRecord>(sandbox, kind::UNIX) else {
        count_lost_denial(sandbox);
        return;
    };
    // SAFETY: reserved, exclusively owned record.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    let off = offsets();
    header(&mut rec.hdr, kind::UNIX, size_of::<LsmRecord>(), cgroup_id, sandbox);
    set_verdict(&mut rec.hdr, v);
    current_proc(&mut rec.proc, off.task_tgid, off.task_real_parent);
    rec.target_pid = 0;
    rec.arg = op;
    rec.dev = 0;
    rec._pad0 = 0;
    rec.ino = 0;
    let mut i = 0;
    while i < UNIX_PATH_KEY {
        rec.path[i] = s.key.path[i];
        i += 1;
    }
    rec.path[UNIX_PATH_KEY] = 0;
    entry.submit(0);
}

/// `connect(2)` of a unix socket (stream, seqpacket, datagram) to a name. The section is
/// one aya parses; the loader sets the real attach type (`BPF_CGROUP_UNIX_CONNECT`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect4/unix_connect")]
pub fn unix_connect(ctx: *mut bpf_sock_addr) -> i32 {
    // SAFETY: valid context pointer; `type` is readable in every sock_addr program.
    let op =
        if unsafe { (*ctx).type_ } == SOCK_DGRAM { unix_op::DGRAM_SEND } else { unix_op::STREAM_CONNECT };
    judge(ctx, op)
}

/// `sendmsg(2)` of a datagram to a name (`BPF_CGROUP_UNIX_SENDMSG`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect4/unix_sendmsg")]
pub fn unix_sendmsg(ctx: *mut bpf_sock_addr) -> i32 {
    judge(ctx, unix_op::DGRAM_SEND)
}
