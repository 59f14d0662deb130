//! Decode: ring-buffer bytes → typed events.
//!
//! Kernel-provided bytes are never trusted: every record is length-checked
//! against its header and its kind's fixed size, strings are cut at the first
//! NUL inside their buffer, and unknown kinds or versions are errors. The
//! decoder never panics; [`DecodeStats`] counts what failed so the pipeline can
//! report it as an evidence gap.
use std::net::{IpAddr, Ipv6Addr};

use crate::audit::Kind;
use agent_common::abi::{
    ABI_VERSION, COMM_LEN, ConnectRecord, EventHeader, ExecRecord, ExitRecord, ForkRecord, LsmRecord,
    PATH_LEN, ProcIds, action, decision, flags, kind, op, rule,
};

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than the {need}-byte header")]
    ShortHeader { len: usize, need: usize },
    #[error("record header says {header} bytes but {len} bytes arrived")]
    SizeMismatch { header: u32, len: usize },
    #[error("record kind {kind} must be {expected} bytes, got {len}")]
    WrongSize { kind: u16, expected: usize, len: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("record ABI version {0} is not supported (this build speaks {ABI_VERSION})")]
    Version(u16),
    #[error("record field {field} has unknown value {value}")]
    BadValue { field: &'static str, value: u32 },
}

/// What the kernel decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KDecision {
    Allow,
    Deny,
    Audit,
}

/// What the kernel did about a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KAction {
    None,
    Refuse,
    Kill,
}

/// Which scope rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KRule {
    None,
    ExecAllow,
    NetworkEgress,
    FilesDeny,
    FilesRead,
    FilesWrite,
    Secrets,
    ProtectedProcess,
    ProtectedBpf,
    ProtectedMount,
    ProtectedModule,
    ProtectedControl,
    ProtectedSystem,
    ExecMmap,
    /// A unix socket named so the fallback engine cannot judge it (see `rule::UNIX_NAME`).
    UnixName,
}

impl KRule {
    /// The scope field that decided, as written in audit records.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            KRule::None => None,
            KRule::ExecAllow => Some("exec.allow"),
            KRule::NetworkEgress => Some("network.egress"),
            KRule::FilesDeny => Some("files.deny"),
            KRule::FilesRead => Some("files.read"),
            KRule::FilesWrite => Some("files.write"),
            KRule::Secrets => Some("secrets"),
            KRule::ProtectedProcess => Some("protected.process"),
            KRule::ProtectedBpf => Some("protected.bpf"),
            KRule::ProtectedMount => Some("protected.mount"),
            KRule::ProtectedModule => Some("protected.modules"),
            KRule::ProtectedControl => Some("protected.control"),
            KRule::ProtectedSystem => Some("protected.system"),
            KRule::ExecMmap => Some("exec.allow"),
            KRule::UnixName => Some("files.unix_name"),
        }
    }
}

/// What a BPF LSM record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsmKind {
    Open,
    Signal,
    Ptrace,
    Bpf,
    Mount,
    Mmap,
    Module,
    /// A change to the file tree (create, link, rename, remove, truncate); `arg` says which.
    File,
    /// A connection to a path-named unix socket; `arg` says stream connect (1) or datagram (2).
    Unix,
}

impl LsmKind {
    pub fn kind(self) -> Kind {
        match self {
            LsmKind::Open => Kind::Open,
            LsmKind::Signal => Kind::Signal,
            LsmKind::Ptrace => Kind::Ptrace,
            LsmKind::Bpf => Kind::Bpf,
            LsmKind::Mount => Kind::Mount,
            LsmKind::Mmap => Kind::Mmap,
            LsmKind::Module => Kind::Module,
            LsmKind::File => Kind::File,
            LsmKind::Unix => Kind::UnixConnect,
        }
    }
}

/// Outbound operation of a connect record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOp {
    Connect,
    Sendmsg,
}

/// Fields every event has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub ktime_ns: u64,
    pub cgroup_id: u64,
    pub slot: u32,
    pub flags: u16,
    pub decision: KDecision,
    pub action: KAction,
    pub rule: KRule,
}

/// The process an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
}

/// A decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Exec {
        meta: Meta,
        proc: Proc,
        old_pid: u32,
        dev: u32,
        ino: u64,
        /// The path exec was called with (a symlink stays a symlink).
        path: String,
        path_truncated: bool,
        /// The executed file's own path as the kernel resolved it (empty when it could not be
        /// built); for a script, its interpreter.
        exe: String,
        exe_truncated: bool,
    },
    Fork {
        meta: Meta,
        proc: Proc,
        child_pid: u32,
        child_tgid: u32,
    },
    Exit {
        meta: Meta,
        proc: Proc,
        exit_code: u32,
    },
    Connect {
        meta: Meta,
        proc: Proc,
        /// Destination; an IPv4-mapped IPv6 address is reported as IPv4.
        addr: IpAddr,
        port: u16,
        protocol: u8,
        op: ConnectOp,
    },
    /// A verdict of the BPF LSM engine.
    Lsm {
        meta: Meta,
        proc: Proc,
        what: LsmKind,
        /// SIGNAL/PTRACE: the target process.
        target_pid: u32,
        /// OPEN: f_mode; SIGNAL: signal; PTRACE: mode; BPF: command; MMAP: prot.
        arg: u32,
        dev: u32,
        ino: u64,
        path: String,
    },
}

impl Event {
    pub fn meta(&self) -> &Meta {
        match self {
            Event::Exec { meta, .. }
            | Event::Fork { meta, .. }
            | Event::Exit { meta, .. }
            | Event::Connect { meta, .. }
            | Event::Lsm { meta, .. } => meta,
        }
    }
    pub fn proc(&self) -> &Proc {
        match self {
            Event::Exec { proc, .. }
            | Event::Fork { proc, .. }
            | Event::Exit { proc, .. }
            | Event::Connect { proc, .. }
            | Event::Lsm { proc, .. } => proc,
        }
    }
    /// The audit record's `kind`.
    pub fn kind(&self) -> Kind {
        match self {
            Event::Exec { .. } => Kind::Exec,
            Event::Fork { .. } => Kind::Fork,
            Event::Exit { .. } => Kind::Exit,
            Event::Connect { op: ConnectOp::Connect, .. } => Kind::Connect,
            Event::Connect { op: ConnectOp::Sendmsg, .. } => Kind::Sendmsg,
            Event::Lsm { what, .. } => what.kind(),
        }
    }
}

/// Counts of decoded and failed records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DecodeStats {
    pub decoded: u64,
    pub failed: u64,
}

/// Decoder with failure accounting.
#[derive(Debug, Default)]
pub struct Decoder {
    pub stats: DecodeStats,
}

impl Decoder {
    /// Decodes one record, counting the outcome.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let r = decode(bytes);
        match r {
            Ok(_) => self.stats.decoded += 1,
            Err(_) => self.stats.failed += 1,
        }
        r
    }
}

/// Reads a plain-old-data record from `bytes`, which must be exactly its size.
fn read_pod<T: Copy>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: length checked above; T is one of the agent_common `#[repr(C)]` records made of
    // integers and byte arrays, for which every bit pattern is valid; read_unaligned needs no
    // alignment.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// Decodes one record. Pure: no state, no panics on any input.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let need = size_of::<EventHeader>();
    if bytes.len() < need {
        return Err(DecodeError::ShortHeader { len: bytes.len(), need });
    }
    let hdr: EventHeader = read_pod(bytes);
    if hdr.size as usize != bytes.len() {
        return Err(DecodeError::SizeMismatch { header: hdr.size, len: bytes.len() });
    }
    if hdr.abi != ABI_VERSION {
        return Err(DecodeError::Version(hdr.abi));
    }
    let expect = |expected: usize| {
        if bytes.len() == expected {
            Ok(())
        } else {
            Err(DecodeError::WrongSize { kind: hdr.kind, expected, len: bytes.len() })
        }
    };
    let bad = |field: &'static str, value: u32| DecodeError::BadValue { field, value };
    let meta = Meta {
        ktime_ns: hdr.ktime_ns,
        cgroup_id: hdr.cgroup_id,
        slot: hdr.slot,
        flags: hdr.flags,
        decision: match hdr.decision {
            decision::ALLOW => KDecision::Allow,
            decision::DENY => KDecision::Deny,
            decision::AUDIT => KDecision::Audit,
            v => return Err(bad("decision", v.into())),
        },
        action: match hdr.action {
            action::NONE => KAction::None,
            action::REFUSE => KAction::Refuse,
            action::KILL => KAction::Kill,
            v => return Err(bad("action", v.into())),
        },
        rule: match hdr.rule {
            rule::NONE => KRule::None,
            rule::EXEC_ALLOW => KRule::ExecAllow,
            rule::NETWORK_EGRESS => KRule::NetworkEgress,
            rule::FILES_DENY => KRule::FilesDeny,
            rule::FILES_READ => KRule::FilesRead,
            rule::FILES_WRITE => KRule::FilesWrite,
            rule::SECRETS => KRule::Secrets,
            rule::PROTECTED_PROCESS => KRule::ProtectedProcess,
            rule::PROTECTED_BPF => KRule::ProtectedBpf,
            rule::PROTECTED_MOUNT => KRule::ProtectedMount,
            rule::PROTECTED_MODULE => KRule::ProtectedModule,
            rule::PROTECTED_CONTROL => KRule::ProtectedControl,
            rule::PROTECTED_SYSTEM => KRule::ProtectedSystem,
            rule::EXEC_MMAP => KRule::ExecMmap,
            rule::UNIX_NAME => KRule::UnixName,
            v => return Err(bad("rule", v.into())),
        },
    };
    match hdr.kind {
        kind::EXEC => {
            expect(size_of::<ExecRecord>())?;
            let r: ExecRecord = read_pod(bytes);
            Ok(Event::Exec {
                proc: proc(&r.proc),
                old_pid: r.old_pid,
                dev: r.dev,
                ino: r.ino,
                path: c_string(&r.path[..PATH_LEN]),
                path_truncated: hdr.flags & flags::PATH_TRUNCATED != 0,
                exe: c_string(&r.exe[..PATH_LEN]),
                exe_truncated: hdr.flags & flags::EXE_TRUNCATED != 0,
                meta,
            })
        }
        kind::FORK => {
            expect(size_of::<ForkRecord>())?;
            let r: ForkRecord = read_pod(bytes);
            Ok(Event::Fork { proc: proc(&r.proc), child_pid: r.child_pid, child_tgid: r.child_tgid, meta })
        }
        kind::EXIT => {
            expect(size_of::<ExitRecord>())?;
            let r: ExitRecord = read_pod(bytes);
            Ok(Event::Exit { proc: proc(&r.proc), exit_code: r.exit_code, meta })
        }
        kind::CONNECT => {
            expect(size_of::<ConnectRecord>())?;
            let r: ConnectRecord = read_pod(bytes);
            let v6 = Ipv6Addr::from(r.addr);
            let addr = match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            };
            let op = match r.op {
                op::CONNECT4 | op::CONNECT6 => ConnectOp::Connect,
                op::SENDMSG4 | op::SENDMSG6 => ConnectOp::Sendmsg,
                v => return Err(bad("op", v.into())),
            };
            Ok(Event::Connect { proc: proc(&r.proc), addr, port: r.port, protocol: r.protocol, op, meta })
        }
        kind::OPEN
        | kind::SIGNAL
        | kind::PTRACE
        | kind::BPF
        | kind::MOUNT
        | kind::MMAP
        | kind::MODULE
        | kind::FILE
        | kind::UNIX => {
            expect(size_of::<LsmRecord>())?;
            let r: LsmRecord = read_pod(bytes);
            let what = match hdr.kind {
                kind::OPEN => LsmKind::Open,
                kind::SIGNAL => LsmKind::Signal,
                kind::PTRACE => LsmKind::Ptrace,
                kind::BPF => LsmKind::Bpf,
                kind::MOUNT => LsmKind::Mount,
                kind::MMAP => LsmKind::Mmap,
                kind::FILE => LsmKind::File,
                kind::UNIX => LsmKind::Unix,
                _ => LsmKind::Module,
            };
            Ok(Event::Lsm {
                proc: proc(&r.proc),
                what,
                target_pid: r.target_pid,
                arg: r.arg,
                dev: r.dev,
                ino: r.ino,
                path: c_string(&r.path[..PATH_LEN]),
                meta,
            })
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn proc(p: &ProcIds) -> Proc {
    Proc {
        pid: p.pid,
        tgid: p.tgid,
        ppid: p.ppid,
        uid: p.uid,
        gid: p.gid,
        comm: c_string(&p.comm[..COMM_LEN]),
    }
}

/// The bytes before the first NUL (or all of them), as UTF-8 with replacement characters.
pub fn c_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: test helper over #[repr(C)] POD records.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    pub fn header(kind: u16, size: usize) -> EventHeader {
        EventHeader {
            kind,
            flags: 0,
            size: size as u32,
            ktime_ns: 5,
            cgroup_id: 77,
            slot: 3,
            abi: ABI_VERSION,
            decision: 0,
            action: 0,
            rule: 0,
            _pad0: 0,
            _pad1: 0,
        }
    }

    pub fn ids(pid: u32, ppid: u32, comm: &str) -> ProcIds {
        let mut c = [0u8; COMM_LEN];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        ProcIds { pid, tgid: pid, ppid, uid: 1000, gid: 1000, _pad0: 0, comm: c }
    }

    pub fn exec_bytes(pid: u32, ppid: u32, path: &str) -> Vec<u8> {
        exec_bytes_exe(pid, ppid, path, path)
    }

    pub fn exec_bytes_exe(pid: u32, ppid: u32, path: &str, exe: &str) -> Vec<u8> {
        let mut p = [0u8; PATH_LEN];
        p[..path.len()].copy_from_slice(path.as_bytes());
        let mut e = [0u8; PATH_LEN];
        e[..exe.len()].copy_from_slice(exe.as_bytes());
        as_bytes(&ExecRecord {
            hdr: header(kind::EXEC, size_of::<ExecRecord>()),
            proc: ids(pid, ppid, "sh"),
            dev: 0x0080_0001,
            old_pid: pid,
            ino: 42,
            path: p,
            exe: e,
        })
    }

    #[test]
    fn decodes_exec() {
        let ev = decode(&exec_bytes(10, 1, "/usr/bin/ls")).unwrap();
        let Event::Exec { meta, proc, dev, ino, path, path_truncated, .. } = ev else { panic!("not exec") };
        assert_eq!((meta.cgroup_id, meta.slot, meta.ktime_ns), (77, 3, 5));
        assert_eq!((proc.pid, proc.ppid, proc.comm.as_str()), (10, 1, "sh"));
        assert_eq!((dev, ino, path.as_str(), path_truncated), (0x0080_0001, 42, "/usr/bin/ls", false));
        // The invoked name and the kernel's executable are separate fields.
        let ev = decode(&exec_bytes_exe(10, 1, "/tmp/bin/git", "/usr/bin/python3.11")).unwrap();
        let Event::Exec { path, exe, exe_truncated, .. } = ev else { panic!("not exec") };
        assert_eq!(
            (path.as_str(), exe.as_str(), exe_truncated),
            ("/tmp/bin/git", "/usr/bin/python3.11", false)
        );
    }

    #[test]
    fn decodes_fork_and_exit() {
        let f = ForkRecord {
            hdr: header(kind::FORK, size_of::<ForkRecord>()),
            proc: ids(10, 1, "sh"),
            child_pid: 11,
            child_tgid: 11,
        };
        assert!(matches!(decode(&as_bytes(&f)).unwrap(), Event::Fork { child_tgid: 11, .. }));
        let e = ExitRecord {
            hdr: header(kind::EXIT, size_of::<ExitRecord>()),
            proc: ids(11, 10, "ls"),
            exit_code: 3 << 8,
            _pad0: 0,
        };
        assert!(matches!(decode(&as_bytes(&e)).unwrap(), Event::Exit { exit_code: 768, .. }));
    }

    #[test]
    fn rejects_bad_records() {
        let good = exec_bytes(1, 0, "/x");
        assert!(matches!(decode(&good[..10]), Err(DecodeError::ShortHeader { .. })));
        assert!(matches!(decode(&good[..100]), Err(DecodeError::SizeMismatch { .. })));
        let mut bad_kind = good.clone();
        bad_kind[0] = 99;
        assert_eq!(decode(&bad_kind), Err(DecodeError::UnknownKind(99)));
        let mut bad_ver = good.clone();
        bad_ver[28] = 0xff;
        let mut bad_decision = exec_bytes(1, 0, "/x");
        bad_decision[30] = 9;
        assert_eq!(decode(&bad_decision), Err(DecodeError::BadValue { field: "decision", value: 9 }));
        assert!(matches!(decode(&bad_ver), Err(DecodeError::Version(_))));
        // A fork header on an exec-sized record.
        let mut wrong = good;
        wrong[0] = kind::FORK as u8;
        assert!(matches!(decode(&wrong), Err(DecodeError::WrongSize { .. })));
    }

    pub fn connect_bytes(addr: [u8; 16], port: u16, op_code: u8, decision_code: u8) -> Vec<u8> {
        let mut hdr = header(kind::CONNECT, size_of::<ConnectRecord>());
        hdr.decision = decision_code;
        hdr.action = if decision_code == decision::DENY { action::REFUSE } else { action::NONE };
        hdr.rule = if decision_code == decision::ALLOW { rule::NONE } else { rule::NETWORK_EGRESS };
        as_bytes(&ConnectRecord {
            hdr,
            proc: ids(5, 1, "curl"),
            addr,
            port,
            protocol: 6,
            op: op_code,
            _pad0: 0,
        })
    }

    #[test]
    fn decodes_connect_with_mapped_v4_as_v4() {
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3];
        let ev = decode(&connect_bytes(mapped, 443, op::CONNECT6, decision::DENY)).unwrap();
        let Event::Connect { addr, port, op, meta, .. } = ev else { panic!() };
        assert_eq!(addr, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!((port, op), (443, ConnectOp::Connect));
        assert_eq!(
            (meta.decision, meta.action, meta.rule),
            (KDecision::Deny, KAction::Refuse, KRule::NetworkEgress)
        );
        let v6: [u8; 16] = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        let ev = decode(&connect_bytes(v6, 53, op::SENDMSG6, decision::ALLOW)).unwrap();
        assert_eq!(ev.kind(), Kind::Sendmsg);
        let mut bad_op = connect_bytes(v6, 53, 9, decision::ALLOW);
        bad_op[99] = 9;
        assert!(matches!(decode(&bad_op), Err(DecodeError::BadValue { field: "op", .. })));
    }

    #[test]
    fn decodes_lsm_records() {
        let mut hdr = header(kind::SIGNAL, size_of::<LsmRecord>());
        hdr.decision = decision::DENY;
        hdr.action = action::REFUSE;
        hdr.rule = rule::PROTECTED_PROCESS;
        let mut path = [0u8; PATH_LEN];
        path[..4].copy_from_slice(b"/etc");
        let r =
            LsmRecord { hdr, proc: ids(9, 1, "sh"), target_pid: 1, arg: 15, dev: 3, _pad0: 0, ino: 4, path };
        let ev = decode(&as_bytes(&r)).unwrap();
        assert_eq!(ev.kind(), Kind::Signal);
        let Event::Lsm { target_pid, arg, meta, path, .. } = ev else { panic!() };
        assert_eq!((target_pid, arg, path.as_str()), (1, 15, "/etc"));
        assert_eq!(meta.rule.as_str(), Some("protected.process"));
        let mut bad = as_bytes(&r);
        bad[32] = 200; // rule
        assert!(matches!(decode(&bad), Err(DecodeError::BadValue { field: "rule", .. })));
        // A refused change to the file tree: `arg` is the operation.
        let mut file = r;
        file.hdr.kind = kind::FILE;
        file.hdr.rule = rule::FILES_DENY;
        file.arg = agent_common::abi::file_op::RENAME;
        let ev = decode(&as_bytes(&file)).unwrap();
        assert_eq!(ev.kind(), Kind::File);
        let Event::Lsm { what, arg, meta, .. } = ev else { panic!() };
        assert_eq!((what, arg, meta.rule.as_str()), (LsmKind::File, 5, Some("files.deny")));
    }

    #[test]
    fn unterminated_and_invalid_strings_are_bounded() {
        let mut bytes = exec_bytes(1, 0, "");
        let path_off = std::mem::offset_of!(ExecRecord, path);
        for b in &mut bytes[path_off..path_off + PATH_LEN] {
            *b = 0xff; // no NUL, not UTF-8
        }
        let Event::Exec { path, .. } = decode(&bytes).unwrap() else { panic!() };
        assert_eq!(path.chars().count(), PATH_LEN);
    }

    #[test]
    fn decoder_counts_outcomes() {
        let mut d = Decoder::default();
        d.decode(&exec_bytes(1, 0, "/a")).unwrap();
        d.decode(&[1, 2, 3]).unwrap_err();
        assert_eq!(d.stats, DecodeStats { decoded: 1, failed: 1 });
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_mutated_valid_records(idx in 0usize..352, val in any::<u8>(), cut in 0usize..352) {
            let mut b = exec_bytes(7, 1, "/bin/true");
            b[idx] = val;
            let _ = decode(&b);
            let _ = decode(&b[..cut]);
        }
    }
}
