//! The fallback engine's unix-socket programs (`agent-ebpf/src/hooks/unix.rs`), loaded and
//! attached without aya's program types.
//!
//! aya 0.14 has no attach type for the cgroup `connect_unix`/`sendmsg_unix` hooks (kernel
//! 6.7+), and a cgroup sock_addr program attaches only where its `expected_attach_type`
//! (fixed at load) says. So the object is parsed again with `aya-obj`, the two programs'
//! instructions are relocated against the maps the sensor's aya load already created (same
//! object, so same sections and symbols; `.rodata` carries the kernel offsets), and loaded
//! with `BPF_PROG_LOAD` as `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` with the real attach type.
//! `BPF_LINK_CREATE` attaches them to a sandbox cgroup; a link is kept by its fd or pinned
//! with `BPF_OBJ_PIN` (the daemon's per-task pins, beside the egress programs').
//!
//! Older kernels refuse the attach type at load (`EINVAL`): the sensor keeps the reason and
//! `warden probe` and `task_start.unenforced` say that pathname unix connects are not judged.
use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use aya::{Ebpf, maps::Map};
use aya_obj::{Object, generated::bpf_insn};

/// `enum bpf_attach_type` (uapi `linux/bpf.h`).
pub const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
pub const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;
/// `enum bpf_prog_type`.
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
/// `enum bpf_cmd`.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// The programs and their attach types. The names are also their pin names.
pub const UNIX_PROGRAMS: [(&str, u32); 2] =
    [("unix_connect", BPF_CGROUP_UNIX_CONNECT), ("unix_sendmsg", BPF_CGROUP_UNIX_SENDMSG)];

/// Errors of the raw load and attach.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("parsing the eBPF object again: {0}")]
    Parse(String),
    #[error("relocating the unix programs: {0}")]
    Relocate(String),
    #[error("program `{0}` is missing from the eBPF object")]
    Missing(&'static str),
    #[error("BPF_PROG_LOAD `{name}`: {source}{log}")]
    Load { name: &'static str, source: std::io::Error, log: String },
    #[error("BPF_LINK_CREATE `{name}` on the sandbox cgroup: {source}")]
    Link { name: &'static str, source: std::io::Error },
    #[error("BPF_OBJ_PIN {path}: {source}")]
    Pin { path: String, source: std::io::Error },
}

/// The loaded unix programs (not attached anywhere yet).
pub struct UnixPrograms {
    progs: Vec<(&'static str, u32, OwnedFd)>,
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`, zero-padded.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}
const _: () = assert!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type) == 68);

/// `union bpf_attr` for `BPF_LINK_CREATE` (cgroup target).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 8],
}

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _rest: [u64; 8],
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<RawFd> {
    // SAFETY: `attr` is a zero-padded `union bpf_attr` layout for `cmd`, alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r as RawFd) }
}

/// The fd of any aya map.
fn map_fd(m: &Map) -> RawFd {
    let data = match m {
        Map::Array(d)
        | Map::ArrayOfMaps(d)
        | Map::BloomFilter(d)
        | Map::CgroupArray(d)
        | Map::CgroupStorage(d)
        | Map::CgrpStorage(d)
        | Map::CpuMap(d)
        | Map::DevMap(d)
        | Map::DevMapHash(d)
        | Map::HashMap(d)
        | Map::HashOfMaps(d)
        | Map::InodeStorage(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuCgroupStorage(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::ProgramArray(d)
        | Map::Queue(d)
        | Map::ReusePortSockArray(d)
        | Map::RingBuf(d)
        | Map::SockHash(d)
        | Map::SockMap(d)
        | Map::SkStorage(d)
        | Map::Stack(d)
        | Map::StackTraceMap(d)
        | Map::Unsupported(d)
        | Map::XskMap(d) => d,
    };
    use std::os::fd::AsFd;
    data.fd().as_fd().as_raw_fd()
}

impl UnixPrograms {
    /// Loads the unix programs of `object` (the bytes `ebpf` was loaded from), relocated
    /// against `ebpf`'s maps. Every map the programs use must still be in `ebpf` (load before
    /// taking the ring buffer out).
    pub fn load(ebpf: &Ebpf, object: &[u8], btf: &aya::Btf) -> Result<Self, RawError> {
        let mut obj = Object::parse(object).map_err(|e| RawError::Parse(e.to_string()))?;
        if obj.has_btf_relocations() {
            obj.relocate_btf(btf).map_err(|e| RawError::Relocate(e.to_string()))?;
        }
        let fds: Vec<(String, RawFd)> = ebpf.maps().map(|(name, m)| (name.to_string(), map_fd(m))).collect();
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
        let obj_maps = std::mem::take(&mut obj.maps);
        let pairs = obj_maps.iter().filter_map(|(name, map)| {
            fds.iter().find(|(n, _)| n == name).map(|(_, fd)| (name.as_str(), *fd, map))
        });
        obj.relocate_maps(pairs, &text_sections).map_err(|e| RawError::Relocate(e.to_string()))?;
        obj.relocate_calls(&text_sections).map_err(|e| RawError::Relocate(e.to_string()))?;
        let mut progs = Vec::new();
        for (name, attach_type) in UNIX_PROGRAMS {
            let prog = obj.programs.get(name).ok_or(RawError::Missing(name))?;
            let func = obj.functions.get(&prog.function_key()).ok_or(RawError::Missing(name))?;
            let fd = load_program(name, attach_type, &func.instructions)?;
            progs.push((name, attach_type, fd));
        }
        Ok(Self { progs })
    }

    /// Attaches every program to the cgroup `dir` (an open cgroup directory) through a
    /// `bpf_link`; returns (program, link) pairs. A link detaches when its last fd or pin
    /// goes, or with the cgroup.
    pub fn attach(&self, dir: BorrowedFd<'_>) -> Result<Vec<(&'static str, OwnedFd)>, RawError> {
        let mut links = Vec::new();
        for (name, attach_type, fd) in &self.progs {
            let mut attr = LinkCreateAttr {
                prog_fd: fd.as_raw_fd() as u32,
                target_fd: dir.as_raw_fd() as u32,
                attach_type: *attach_type,
                ..Default::default()
            };
            let link =
                sys_bpf(BPF_LINK_CREATE, &mut attr).map_err(|source| RawError::Link { name, source })?;
            // SAFETY: a new fd the kernel just returned, owned by nobody else.
            links.push((*name, unsafe { OwnedFd::from_raw_fd(link) }));
        }
        Ok(links)
    }
}

/// Pins a link (or any bpf object fd) at `path` in bpffs.
pub fn pin(fd: &OwnedFd, path: &Path) -> Result<(), RawError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |source| RawError::Pin { path: path.display().to_string(), source };
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let mut attr =
        ObjPinAttr { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..Default::default() };
    sys_bpf(BPF_OBJ_PIN, &mut attr).map(drop).map_err(err)
}

fn load_program(name: &'static str, attach_type: u32, insns: &[bpf_insn]) -> Result<OwnedFd, RawError> {
    let license = c"GPL";
    let mut prog_name = [0u8; 16];
    prog_name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name,
            expected_attach_type: attach_type,
            ..Default::default()
        };
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = buf.len() as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        sys_bpf(BPF_PROG_LOAD, &mut attr)
    };
    match attempt(None) {
        // SAFETY: a new fd the kernel just returned, owned by nobody else.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(source) => {
            // Again with the verifier's log, for the error (an unknown attach type fails
            // before the verifier runs: no log then).
            let mut buf = vec![0u8; 1 << 20];
            let log = match attempt(Some(&mut buf)) {
                Ok(fd) => {
                    // SAFETY: as above; loaded the second time (a transient failure).
                    return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                Err(_) => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
                    let text = String::from_utf8_lossy(&buf[..end]);
                    let tail: Vec<&str> = text.lines().rev().take(12).collect();
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; verifier: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | "))
                    }
                }
            };
            Err(RawError::Load { name, source, log })
        }
    }
}
