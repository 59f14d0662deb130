//! Record construction: constant-size ring-buffer reservations, header filling,
//! and per-sandbox drop counting when the ring is full.
use agent_common::{
    abi::{ABI_VERSION, COMM_LEN, EventHeader, ProcIds, action, decision, kind, rule},
    maps::{Sandbox, sandbox_flags},
};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns},
    maps::ring_buf::RingBufEntry,
};

use crate::{
    maps::{DROPS, EVENTS},
    offsets::read,
};

/// Reserves a `T` in the ring buffer, or counts a drop for the sandbox and kind.
#[inline(always)]
pub fn reserve<T: 'static>(sandbox: &Sandbox, record_kind: u16) -> Option<RingBufEntry<T>> {
    let entry = EVENTS.reserve::<T>(0);
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
