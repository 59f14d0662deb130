//! Paths of kernel objects built from dentry names, for programs where `bpf_d_path` is not
//! allowed (most LSM hooks, and the exec tracepoint, which names the executed file this way):
//! the names are prepended one `bpf_loop` step per level into the per-CPU `PATH_SCRATCH`,
//! crossing mount points up to the namespace root.
use core::ffi::c_void;

use agent_common::{abi::PATH_LEN, config::KernelOffsets};
use aya_ebpf::helpers::generated;

use crate::{
    maps::{EXEC_ALLOW, PATH_SCRATCH},
    offsets::{offsets, read},
};

/// Ancestors looked at per file; deeper files are judged as not granted.
pub const MAX_DEPTH: u32 = 48;

/// Zero, read from a map, so the verifier does not know it: a walk's results start as such
/// values and change only to values it cannot know either (derived from the loop index or
/// map lookups), so every way out of a walk leaves the same verifier state. Otherwise the
/// code after a walk is checked once per combination of constants it could leave behind,
/// and after two walks (link, rename) older verifiers (6.1) give up.
#[inline(always)]
pub fn unknown_zero() -> u32 {
    match PATH_SCRATCH.get_ptr(0) {
        // SAFETY: per-CPU value; `zero` is never written.
        Some(s) => unsafe { (*s).zero },
        None => 0,
    }
}

/// Where the walk goes from `dentry` in `mnt` (a `struct mount *`): its parent, the mount
/// point of its mount when it is a mount's root, or nowhere at the namespace root.
pub enum Up {
    Parent(*const u8),
    MountPoint(*const u8, *const u8),
    Root,
    /// A read failed.
    Lost,
}

#[inline(always)]
pub fn up(dentry: *const u8, mnt: *const u8, off: &KernelOffsets) -> Up {
    let Ok(parent) = read::<*const u8>(dentry, off.dentry_parent) else { return Up::Lost };
    // `struct vfsmount` (whose first field is `mnt_root`) is embedded in `struct mount`.
    let mnt_root = read::<*const u8>(mnt.wrapping_add(off.mount_mnt as usize), 0).unwrap_or_default();
    if parent != dentry && dentry != mnt_root {
        return Up::Parent(parent);
    }
    let Ok(mnt_parent) = read::<*const u8>(mnt, off.mount_parent) else { return Up::Lost };
    if mnt_parent == mnt {
        return Up::Root;
    }
    match read::<*const u8>(mnt, off.mount_mountpoint) {
        Ok(mp) => Up::MountPoint(mp, mnt_parent),
        Err(_) => Up::Lost,
    }
}

/// State of the walk that builds a path from names (see [`build_path`]).
#[repr(C)]
struct NameCtx {
    dentry: *const u8,
    mnt: *const u8,
    /// Non-zero once the root is reached (values unknown to the verifier, as in [`WalkOut`]).
    root: u32,
    /// Non-zero when a name did not fit or a read failed.
    failed: u32,
}

/// Prepends `/<name of dentry>` to the path in `PATH_SCRATCH`; false if it does not fit.
#[inline(always)]
fn prepend_name(dentry: *const u8, off: &KernelOffsets) -> bool {
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else { return false };
    // SAFETY: per-CPU value, nothing else uses it on this CPU while the program runs.
    let scratch = unsafe { &mut *scratch };
    let name = read::<*const u8>(dentry, off.dentry_name + off.qstr_name).unwrap_or_default();
    let len = read::<u32>(dentry, off.dentry_name + off.qstr_len).unwrap_or(0);
    let pos = scratch.pos;
    // Keep one byte in front: the record needs room for the NUL after at most PATH_LEN - 1.
    if name.is_null() || len == 0 || pos > PATH_LEN as u32 || len + 1 >= pos {
        return false;
    }
    let start = pos - len - 1;
    let mask = PATH_LEN - 1;
    scratch.buf[start as usize & mask] = b'/';
    let dst = scratch.buf.as_mut_ptr().wrapping_add((start as usize + 1) & mask);
    // SAFETY: the offset and the length are masked below PATH_LEN and the buffer is twice
    // that long.
    if unsafe { bpf_probe_read_kernel_buf(dst, len & mask as u32, name) } != 0 {
        return false;
    }
    scratch.pos = start;
    true
}

/// One level of the name walk (`bpf_loop` callback). Returns 1 to stop.
#[inline(never)]
extern "C" fn name_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `NameCtx` on the caller's stack that `build_path` hands to bpf_loop.
    let c = unsafe { &mut *(ctx as *mut NameCtx) };
    let dentry = c.dentry;
    let off = offsets();
    match up(dentry, c.mnt, off) {
        Up::Parent(p) => {
            if !prepend_name(dentry, off) {
                c.failed = index as u32 | 1;
                return 1;
            }
            c.dentry = p;
            0
        }
        Up::MountPoint(mp, m) => {
            c.dentry = mp;
            c.mnt = m;
            0
        }
        Up::Root => {
            c.root = index as u32 | 1;
            1
        }
        Up::Lost => {
            c.failed = index as u32 | 1;
            1
        }
    }
}

/// Builds the path of `dentry` (in the mount of `vfsmnt`) in `PATH_SCRATCH` from the names
/// on the way to the root, for hooks where `bpf_d_path` is not allowed. Returns whether
/// names were left out (too long, or deeper than MAX_DEPTH).
#[inline(always)]
pub fn build_path(dentry: *const u8, vfsmnt: *const u8, off: &KernelOffsets) -> bool {
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else { return true };
    // SAFETY: per-CPU value, nothing else uses it on this CPU while the program runs.
    unsafe { (*scratch).pos = PATH_LEN as u32 };
    let mut c = NameCtx {
        dentry,
        mnt: vfsmnt.wrapping_sub(off.mount_mnt as usize),
        root: unknown_zero(),
        failed: unknown_zero(),
    };
    // SAFETY: as in `walk`.
    unsafe {
        generated::bpf_loop(
            MAX_DEPTH,
            name_step as *const () as *mut c_void,
            &mut c as *mut NameCtx as *mut c_void,
            0,
        )
    };
    c.root == 0 || c.failed != 0
}

/// `bpf_probe_read_kernel` into a raw buffer; 0 on success.
#[inline(always)]
pub unsafe fn bpf_probe_read_kernel_buf(dst: *mut u8, len: u32, src: *const u8) -> i64 {
    // SAFETY: the caller bounds `dst..dst+len`; the helper never faults on `src`.
    unsafe { generated::bpf_probe_read_kernel(dst as *mut c_void, len, src as *const c_void) }
}

/// Copies the path built in `PATH_SCRATCH` (`buf[pos..PATH_LEN]`, at most PATH_LEN - 1
/// bytes) into `dst` and terminates it; an empty path is the root.
#[inline(always)]
pub fn copy_built_path(dst: &mut [u8; PATH_LEN]) {
    dst[0] = 0;
    let Some(scratch) = PATH_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU value, nothing else uses it on this CPU while the program runs.
    let scratch = unsafe { &*scratch };
    let pos = scratch.pos;
    if pos == 0 || pos > PATH_LEN as u32 {
        return;
    }
    let mask = PATH_LEN as u32 - 1;
    let len = (PATH_LEN as u32 - pos) & mask;
    if len == 0 {
        dst[0] = b'/';
        dst[1] = 0;
        return;
    }
    let src = scratch.buf.as_ptr().wrapping_add((pos & mask) as usize);
    // SAFETY: the offset and the length are masked below PATH_LEN; the scratch is twice
    // that long and `dst` PATH_LEN long.
    if unsafe { bpf_probe_read_kernel_buf(dst.as_mut_ptr(), len, src) } != 0 {
        dst[0] = 0;
        return;
    }
    dst[(len & mask) as usize] = 0;
}

/// Writes the path of the opened `file` (a `struct file *`) into `dst`, built from names;
/// returns the `EXE_*` header flags that describe it.
#[inline(always)]
pub fn exe_path(file: *const u8, dst: &mut [u8; PATH_LEN], off: &KernelOffsets) -> u16 {
    dst[0] = 0;
    let (Ok(dentry), Ok(vfsmnt)) = (
        read::<*const u8>(file, off.file_path + off.path_dentry),
        read::<*const u8>(file, off.file_path + off.path_mnt),
    ) else {
        return agent_common::abi::flags::EXE_UNREADABLE;
    };
    let cut = build_path(dentry, vfsmnt, off);
    copy_built_path(dst);
    if dst[0] == 0 {
        agent_common::abi::flags::EXE_UNREADABLE
    } else if cut {
        agent_common::abi::flags::EXE_TRUNCATED
    } else {
        0
    }
}

/// State of the walk that looks for an allowed directory above an executed file.
#[repr(C)]
struct ExecDirCtx {
    dentry: *const u8,
    mnt: *const u8,
    slot: u32,
    /// Non-zero once an `exec_allow::DIR` entry was found (a value unknown to the verifier).
    found: u32,
}

/// One level of the exec-directory walk (`bpf_loop` callback). Returns 1 to stop.
#[inline(never)]
extern "C" fn exec_dir_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `ExecDirCtx` on the caller's stack that `under_exec_dir` hands to
    // bpf_loop.
    let c = unsafe { &mut *(ctx as *mut ExecDirCtx) };
    let off = offsets();
    match up(c.dentry, c.mnt, off) {
        Up::Parent(p) => c.dentry = p,
        Up::MountPoint(mp, m) => {
            c.dentry = mp;
            c.mnt = m;
        }
        Up::Root | Up::Lost => return 1,
    }
    let Ok(inode) = read::<*const u8>(c.dentry, off.dentry_inode) else { return 1 };
    let (Ok(ino), Ok(sb)) = (read::<u64>(inode, off.inode_ino), read::<*const u8>(inode, off.inode_sb))
    else {
        return 1;
    };
    let Ok(dev) = read::<u32>(sb, off.sb_dev) else { return 1 };
    let key = agent_common::maps::ExecKey { slot: c.slot, dev, ino };
    // SAFETY: value is Copy and read immediately.
    if unsafe { EXEC_ALLOW.get(key) }.copied() == Some(agent_common::maps::exec_allow::DIR) {
        c.found = index as u32 | 1;
        return 1;
    }
    0
}

/// Whether the opened `file` (a `struct file *`) lies below a directory `EXEC_ALLOW` holds
/// for `slot` (`exec.allow` directory entries), its ancestors walked across mounts by
/// identity, as far as [`MAX_DEPTH`] levels.
#[inline(always)]
pub fn under_exec_dir(slot: u32, file: *const u8, off: &KernelOffsets) -> bool {
    let (Ok(dentry), Ok(vfsmnt)) = (
        read::<*const u8>(file, off.file_path + off.path_dentry),
        read::<*const u8>(file, off.file_path + off.path_mnt),
    ) else {
        return false;
    };
    let mut c =
        ExecDirCtx { dentry, mnt: vfsmnt.wrapping_sub(off.mount_mnt as usize), slot, found: unknown_zero() };
    // SAFETY: the callback is a static function of this object and `c` outlives the call.
    unsafe {
        generated::bpf_loop(
            MAX_DEPTH,
            exec_dir_step as *const () as *mut c_void,
            &mut c as *mut ExecDirCtx as *mut c_void,
            0,
        )
    };
    c.found != 0
}
