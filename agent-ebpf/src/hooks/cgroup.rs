//! Sandbox ancestry: a cgroup created under a watched cgroup joins its sandbox.
//!
//! Done in the kernel at `cgroup_mkdir`, before any task can be moved into the
//! new cgroup, so events keep costing a single `WATCHED` lookup.
use agent_common::maps::stat;
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    maps::{WATCHED, count},
    offsets::{OFFSETS, read},
};

/// Reads `cgrp->kn->id` and `cgrp->kn->parent->id`.
#[inline(always)]
fn ids(cgrp: *const u8) -> Option<(u64, u64)> {
    let off = OFFSETS.load();
    if off.valid == 0 {
        return None;
    }
    let kn = read::<*const u8>(cgrp, off.cgroup_kn).ok()?;
    let id = read::<u64>(kn, off.kn_id).ok()?;
    let parent = read::<*const u8>(kn, off.kn_parent).ok()?;
    let parent_id = read::<u64>(parent, off.kn_id).ok()?;
    Some((id, parent_id))
}

/// `cgroup_mkdir(struct cgroup *cgrp, const char *path)`
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    let Some((id, parent_id)) = ids(ctx.arg(0)) else {
        return 0;
    };
    // SAFETY: value is Copy and read immediately.
    let Some(sandbox) = (unsafe { WATCHED.get(parent_id) }).copied() else {
        return 0;
    };
    match WATCHED.insert(id, sandbox, 0) {
        Ok(()) => count(stat::CGROUP_INHERITED),
        Err(_) => count(stat::CGROUP_INHERIT_FAILED),
    }
    0
}

/// `cgroup_rmdir(struct cgroup *cgrp, const char *path)`: cgroup ids are never
/// reused, but the entry would hold a map slot forever.
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    if let Some((id, _)) = ids(ctx.arg(0)) {
        let _ = WATCHED.remove(id);
    }
    0
}
