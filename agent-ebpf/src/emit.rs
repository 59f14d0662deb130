//! Record construction: constant-size ring-buffer reservations, header filling,
//! per-sandbox drop counting when the ring is full, and batched reader wake-ups.
//!
//! Wake-ups: a plain `bpf_ringbuf_submit(.., 0)` wakes a waiting reader for every record
//! (an `irq_work` self-interrupt plus a cross-CPU wake-up; 7–17 µs per record in a VM, see
//! docs/benchmarks.md). Records are therefore submitted with `BPF_RB_NO_WAKEUP`, and the
//! reader drains on a short timer (`agent_user::source::RingBufSource`). A record forces a
//! wake-up only when [`WAKEUP_BYTES`] or more are waiting, so a burst is seen before it can
//! fill the ring, whatever the timer does.
use core::{
    mem::MaybeUninit,
    ops::{Deref, DerefMut},
};

use agent_common::{
    abi::{ABI_VERSION, COMM_LEN, EventHeader, ProcIds, action, decision, kind, rule},
    maps::{Sandbox, sandbox_flags, stat},
};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::{bpf_get_current_comm, bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns},
    maps::ring_buf::RingBufEntry,
};

use crate::{
    maps::{DROPS, EVENTS, STATS},
    offsets::read,
};

/// Bytes waiting in the ring (this record included) from which a submit wakes the reader.
/// 64 KiB is 1/64 of the default 4 MiB ring: hundreds of records, well before it is full.
/// A ring smaller than 256 KiB (`--ring-bytes`) wakes it at a quarter of its size instead.
pub const WAKEUP_BYTES: u64 = 64 << 10;

/// A reserved record. Written through `as_mut_ptr()` like aya's `RingBufEntry`, and like it
/// must be submitted or discarded; [`Record::submit`] decides about the reader's wake-up.
#[must_use = "eBPF verifier requires ring buffer entries to be either submitted or discarded"]
#[repr(transparent)]
pub struct Record<T: 'static>(RingBufEntry<T>);

impl<T> Deref for Record<T> {
    type Target = MaybeUninit<T>;

    #[inline(always)]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<T> DerefMut for Record<T> {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<T> Record<T> {
    /// Commits the record. `flags` 0 (what the hooks pass): no wake-up unless
    /// [`WAKEUP_BYTES`] (a quarter of a small ring) or more are waiting, then a forced one. An explicit
    /// `BPF_RB_NO_WAKEUP` or `BPF_RB_FORCE_WAKEUP` (a record that must be seen at once) is
    /// honoured as given.
    #[inline(always)]
    pub fn submit(self, flags: u64) {
        let flags = if flags & (BPF_RB_NO_WAKEUP | BPF_RB_FORCE_WAKEUP) as u64 != 0 {
            flags
        } else {
            flags | wakeup_flag()
        };
        self.0.submit(flags);
    }
}

/// The wake-up flag for a record about to be submitted; records the fill level it saw in
/// `STATS[stat::RING_FILL]` (a per-CPU gauge: the last value this CPU observed).
#[inline(always)]
fn wakeup_flag() -> u64 {
    // Producer minus consumer position: reserved records (this one included) not yet read.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if let Some(g) = STATS.get_ptr_mut(stat::RING_FILL) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *g = waiting };
    }
    let quarter = EVENTS.query(BPF_RB_RING_SIZE as u64) / 4;
    let threshold = if quarter < WAKEUP_BYTES { quarter } else { WAKEUP_BYTES };
    if waiting >= threshold { BPF_RB_FORCE_WAKEUP as u64 } else { BPF_RB_NO_WAKEUP as u64 }
}

/// Reserves a `T` in the ring buffer, or counts a drop for the sandbox and kind.
#[inline(always)]
pub fn reserve<T: 'static>(sandbox: &Sandbox, record_kind: u16) -> Option<Record<T>> {
    let entry = EVENTS.reserve::<T>(0).map(Record);
    if entry.is_none()
        && let Some(d) = DROPS.get_ptr_mut(sandbox.slot)
    {
        // SAFETY: per-CPU value; nothing else writes it on this CPU while we run.
        unsafe {
            (*d).total += 1;
            match record_kind {
                kind::EXEC => (*d).exec += 1,
                kind::FORK => (*d).fork += 1,
                kind::CONNECT => (*d).connect += 1,
                _ => (*d).exit += 1,
            }
        }
    }
    entry
}

/// Counts a denial whose record could not be reserved (the denial itself still happens).
#[inline(always)]
pub fn count_lost_denial(sandbox: &Sandbox) {
    if let Some(d) = DROPS.get_ptr_mut(sandbox.slot) {
        // SAFETY: per-CPU value.
        unsafe { (*d).denials += 1 };
    }
}

/// A verdict: what was decided, what was done, which rule.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub decision: u8,
    pub action: u8,
    pub rule: u16,
}

impl Verdict {
    pub const ALLOW: Verdict = Verdict { decision: decision::ALLOW, action: action::NONE, rule: rule::NONE };

    /// A denial under `rule`: in audit mode recorded as "audit" and not acted on, else
    /// `enforce_action` (refuse or kill).
    #[inline(always)]
    pub fn deny(sandbox: &Sandbox, rule_id: u16, enforce_action: u8) -> Verdict {
        if sandbox.flags & sandbox_flags::AUDIT != 0 {
            Verdict { decision: decision::AUDIT, action: action::NONE, rule: rule_id }
        } else {
            Verdict { decision: decision::DENY, action: enforce_action, rule: rule_id }
        }
    }

    /// Whether the request must be stopped.
    #[inline(always)]
    pub fn enforced(&self) -> bool {
        self.decision == decision::DENY
    }
}

/// Fills a record header.
#[inline(always)]
pub fn header(hdr: &mut EventHeader, record_kind: u16, size: usize, cgroup_id: u64, sandbox: &Sandbox) {
    hdr.kind = record_kind;
    hdr.flags = 0;
    hdr.size = size as u32;
    // SAFETY: helper without arguments.
    hdr.ktime_ns = unsafe { bpf_ktime_get_boot_ns() };
    hdr.cgroup_id = cgroup_id;
    hdr.slot = sandbox.slot;
    hdr.abi = ABI_VERSION;
    hdr.decision = decision::ALLOW;
    hdr.action = action::NONE;
    hdr.rule = rule::NONE;
    hdr._pad0 = 0;
    hdr._pad1 = 0;
}

/// Writes a verdict into a header.
#[inline(always)]
pub fn set_verdict(hdr: &mut EventHeader, v: Verdict) {
    hdr.decision = v.decision;
    hdr.action = v.action;
    hdr.rule = v.rule;
}

/// Fills the identity of the current task. `real_parent` and `tgid` are read
/// through BTF-resolved offsets.
#[inline(always)]
pub fn current_proc(ids: &mut ProcIds, task_tgid: u32, task_real_parent: u32) {
    let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    ids.pid = pid_tgid as u32;
    ids.tgid = (pid_tgid >> 32) as u32;
    let uid_gid = bpf_get_current_uid_gid();
    ids.uid = uid_gid as u32;
    ids.gid = (uid_gid >> 32) as u32;
    ids._pad0 = 0;
    // SAFETY: helper without arguments; returns the current task_struct address.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    ids.ppid = match read::<*const u8>(task, task_real_parent) {
        Ok(parent) => read::<u32>(parent, task_tgid).unwrap_or(0),
        Err(_) => 0,
    };
    ids.comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
}
