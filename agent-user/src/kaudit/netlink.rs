//! The audit netlink socket: reading the kernel's records from the read-only multicast group
//! (`AUDIT_NLGRP_READLOG`, which leaves auditd in charge of the unicast stream), and the
//! status requests Warden makes (`AUDIT_GET`, `AUDIT_SET`, `AUDIT_ADD_RULE`; `AUDIT_DEL_RULE`
//! for the benchmark's auditd peer only).
use std::{io, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

const NETLINK_AUDIT: i32 = 9;
/// `AUDIT_NLGRP_READLOG`: the multicast group for read-only listeners.
const NLGRP_READLOG: u32 = 1;
const AUDIT_GET: u16 = 1000;
const AUDIT_SET: u16 = 1001;
const AUDIT_ADD_RULE: u16 = 1011;
const AUDIT_DEL_RULE: u16 = 1012;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const AUDIT_STATUS_ENABLED: u32 = 1;
const AUDIT_STATUS_BACKLOG_LIMIT: u32 = 16;
const AUDIT_FILTER_TASK: u32 = 1;
const AUDIT_NEVER: u32 = 0;
const AUDIT_BITMASK_SIZE: usize = 64;
const AUDIT_MAX_FIELDS: usize = 64;
const HDR: usize = 16;

/// The part of `struct audit_status` Warden reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// 0 off, 1 on, 2 on and locked.
    pub enabled: u32,
    /// Port id of auditd, 0 if none.
    pub pid: u32,
    pub backlog_limit: u32,
    /// Records the kernel lost (backlog full, no memory), node-wide.
    pub lost: u32,
}

fn socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            NETLINK_AUDIT,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is a valid value; fields are set before use.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = groups;
    // SAFETY: addr is a valid sockaddr_nl of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Receives one datagram into `buf`; `Ok(None)` when nothing is waiting.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
    }
    Ok(Some(n as usize))
}

/// The netlink header of a message: (total length, type).
fn header(buf: &[u8]) -> Option<(usize, u16)> {
    let len = u32::from_ne_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    let typ = u16::from_ne_bytes(buf.get(4..6)?.try_into().ok()?);
    (HDR..=buf.len()).contains(&len).then_some((len, typ))
}

/// A read-only listener on the kernel's audit records.
pub struct Listener {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// Times the socket's buffer overflowed (records lost, number unknown).
    pub overruns: u64,
}

impl Listener {
    /// Joins the multicast group (needs `CAP_AUDIT_READ`). The receive buffer is raised so
    /// a burst of refusals is not lost between two reads.
    pub fn open() -> io::Result<Self> {
        let fd = socket(1 << (NLGRP_READLOG - 1))?;
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with a c_int value of the size passed. Best effort: without
        // CAP_NET_ADMIN the default size stays, and overruns are still counted.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Self { fd, buf: vec![0u8; 16 * 1024], overruns: 0 })
    }

    /// Hands every record waiting now to `f` as (type, text), without blocking.
    pub fn drain(&mut self, f: &mut dyn FnMut(u16, &str)) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match recv(&self.fd, &mut self.buf) {
                Ok(None) => return Ok(n),
                Ok(Some(len)) => {
                    let Some((mlen, typ)) = header(&self.buf[..len]) else { continue };
                    let text = String::from_utf8_lossy(&self.buf[HDR..mlen]);
                    f(typ, &text);
                    n += 1;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.overruns += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// A request on a fresh unicast socket, waiting for the kernel's answer of type `want` (or
/// its acknowledgement when `want` is `None`).
fn request(typ: u16, payload: &[u8], want: Option<u16>) -> io::Result<Vec<u8>> {
    let fd = socket(0)?;
    let mut msg = Vec::with_capacity(HDR + payload.len());
    msg.extend_from_slice(&((HDR + payload.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&typ.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(payload);
    // SAFETY: msg is valid for reads of its length.
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let Some(n) = recv(&fd, &mut buf)? else {
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        };
        let Some((len, t)) = header(&buf[..n]) else { continue };
        if t == NLMSG_ERROR {
            let err =
                i32::from_ne_bytes(buf.get(HDR..HDR + 4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
            if err != 0 {
                return Err(io::Error::from_raw_os_error(-err));
            }
            if want.is_none() {
                return Ok(Vec::new());
            }
        } else if Some(t) == want {
            return Ok(buf[HDR..len].to_vec());
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "the kernel did not answer the audit request"))
}

/// The kernel's audit status (needs `CAP_AUDIT_CONTROL`).
pub fn status() -> io::Result<Status> {
    let b = request(AUDIT_GET, &[], Some(AUDIT_GET))?;
    let word = |i: usize| b.get(i * 4..i * 4 + 4).and_then(|w| w.try_into().ok()).map(u32::from_ne_bytes);
    match (word(1), word(3), word(5), word(6)) {
        (Some(enabled), Some(pid), Some(backlog_limit), Some(lost)) => {
            Ok(Status { enabled, pid, backlog_limit, lost })
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "short audit status")),
    }
}

fn set(mask: u32, enabled: u32, backlog_limit: u32) -> io::Result<()> {
    // struct audit_status: mask, enabled, failure, pid, rate_limit, backlog_limit, ...
    let mut words = [0u32; 11];
    words[0] = mask;
    words[1] = enabled;
    words[5] = backlog_limit;
    let payload: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    request(AUDIT_SET, &payload, None).map(|_| ())
}

/// `struct audit_rule_data` of `-a never,task`: flags, action, field_count, mask[64],
/// fields[64], values[64], fieldflags[64], buflen.
fn never_task_rule() -> Vec<u8> {
    let mut words = Vec::with_capacity(3 + AUDIT_BITMASK_SIZE + 3 * AUDIT_MAX_FIELDS + 1);
    words.extend([AUDIT_FILTER_TASK, AUDIT_NEVER, 0]);
    words.extend([u32::MAX; AUDIT_BITMASK_SIZE]);
    words.extend([0u32; 3 * AUDIT_MAX_FIELDS]);
    words.push(0);
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Adds the rule `-a never,task`: no task gets a syscall-audit context, so enabling audit
/// costs no process a syscall slow path. An identical rule already there is fine.
pub fn add_never_task_rule() -> io::Result<()> {
    match request(AUDIT_ADD_RULE, &never_task_rule(), None) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Deletes the rule [`add_never_task_rule`] adds, returning whether it was there. Only the
/// benchmark's auditd peer does this (its syscall rules match no process while the rule is
/// in), and it puts the rule back with [`add_never_task_rule`] when it stops.
pub fn delete_never_task_rule() -> io::Result<bool> {
    match request(AUDIT_DEL_RULE, &never_task_rule(), None) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        r => r.map(|_| true),
    }
}

/// What [`ensure_enabled`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enabled {
    /// Audit was already on (auditd, or an earlier Warden): nothing changed.
    Already,
    /// Warden turned it on, after adding `never,task` so no process pays for syscall auditing.
    ByWarden,
}

/// Backlog Warden asks for when it turns audit on (the default, 64, drops bursts).
const BACKLOG: u32 = 8192;

/// Makes the kernel emit audit records (Landlock and seccomp log only while audit is
/// enabled). When audit is off, first adds `-a never,task` — so no task gets a syscall-audit
/// context and no process pays the syscall slow path —, then turns it on with a larger
/// backlog. When it is on already, it is left as it is (auditd's rules stay in charge).
pub fn ensure_enabled() -> io::Result<Enabled> {
    let st = status()?;
    if st.enabled != 0 {
        return Ok(Enabled::Already);
    }
    add_never_task_rule()?;
    set(AUDIT_STATUS_ENABLED | AUDIT_STATUS_BACKLOG_LIMIT, 1, st.backlog_limit.max(BACKLOG))?;
    Ok(Enabled::ByWarden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_bounded_by_the_datagram() {
        let mut m = vec![0u8; 20];
        m[0..4].copy_from_slice(&20u32.to_ne_bytes());
        m[4..6].copy_from_slice(&1423u16.to_ne_bytes());
        assert_eq!(header(&m), Some((20, 1423)));
        m[0..4].copy_from_slice(&21u32.to_ne_bytes());
        assert_eq!(header(&m), None, "a length beyond the datagram is refused");
        m[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(header(&m), None);
        assert_eq!(header(&m[..5]), None);
    }
}
