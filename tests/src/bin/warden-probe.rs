//! `warden-probe OP ARGS...`: makes one real attempt the integration tests need and prints
//! `OP ok` or `OP err <errno>`; exit status 0 on success, 1 when refused, 2 on bad usage.
//! `memfd-exec` exits 126 when the exec itself is refused, as a shell reports a command it
//! cannot execute (a kill before the new image runs shows as 137 either way).
//! Runs inside Warden sandboxes, so it is plain syscalls and nothing clever.
// An attack probe: each unsafe block is one raw syscall with integer arguments or pointers to
// locals that outlive it — the attempt itself, whose outcome is the point.
#![allow(clippy::undocumented_unsafe_blocks, reason = "raw-syscall attack probe; see above")]
use std::{
    ffi::CString,
    io::Write,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn report(op: &str, r: Result<(), i32>) -> ! {
    match r {
        Ok(()) => {
            println!("{op} ok");
            let _ = std::io::stdout().flush();
            std::process::exit(0)
        }
        Err(e) => {
            println!("{op} err {e}");
            let _ = std::io::stdout().flush();
            std::process::exit(1)
        }
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn open(path: &str, flags: i32) -> Result<OwnedFd, i32> {
    // SAFETY: valid C string.
    let fd = unsafe { libc::open(cstr(path).as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 { Err(errno()) } else { Ok(unsafe { OwnedFd::from_raw_fd(fd) }) }
}

fn sockaddr(addr: &str, port: &str) -> SocketAddr {
    SocketAddr::new(addr.parse::<IpAddr>().expect("address"), port.parse().expect("port"))
}

/// One DNS query the way a stub resolver makes it: `udp` (unconnected `sendto`/`recvfrom`),
/// `udp-connected` (`connect`, then `send`/`recvfrom`) or `tcp`; or over UDP through io_uring:
/// `uring-sendmsg` (IORING_OP_SENDMSG with the server as `msg_name`) or `uring-connect`
/// (IORING_OP_CONNECT, then IORING_OP_SENDMSG without a name), the reply read with
/// IORING_OP_RECVMSG. Prints
/// `dns ok RCODE ADDRS from=SOURCE` (ADDRS comma-separated, `-` for none; SOURCE the address
/// the reply came from) or `dns err ERRNO`.
fn dns(mode: &str, server: SocketAddr, name: &str, qtype: &str) -> Result<(), i32> {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RData, RecordType},
    };
    use std::io::Read;
    let io = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let qtype: RecordType = qtype.parse().map_err(|_| libc::EINVAL)?;
    let mut q = Message::query();
    q.metadata.id = std::process::id() as u16;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).map_err(|_| libc::EINVAL)?, qtype));
    let bytes = q.to_vec().map_err(|_| libc::EINVAL)?;
    let timeout = Some(std::time::Duration::from_secs(5));
    let (raw, from) = if let Some(how) = mode.strip_prefix("uring-") {
        uring_udp_exchange(how, server, &bytes)?
    } else if mode == "tcp" {
        let mut s = TcpStream::connect(server).map_err(io)?;
        s.set_read_timeout(timeout).map_err(io)?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        s.write_all(&framed).map_err(io)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(io)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).map_err(io)?;
        (buf, s.peer_addr().map_err(io)?)
    } else {
        let bind = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(bind).map_err(io)?;
        s.set_read_timeout(timeout).map_err(io)?;
        if mode == "udp-connected" {
            s.connect(server).map_err(io)?;
            s.send(&bytes).map_err(io)?;
        } else {
            s.send_to(&bytes, server).map_err(io)?;
        }
        let mut buf = vec![0u8; 65535];
        let (n, from) = s.recv_from(&mut buf).map_err(io)?;
        buf.truncate(n);
        (buf, from)
    };
    let m = Message::from_vec(&raw).map_err(|_| libc::EBADMSG)?;
    let addrs: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    let addrs = if addrs.is_empty() { "-".to_string() } else { addrs.join(",") };
    let tc = if m.metadata.truncation { " tc" } else { "" };
    println!("dns ok {:?}{tc} {addrs} from={from}", m.metadata.response_code);
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

/// One io_uring submission, completed within 5 s: its result, or the errno.
fn uring_one(ring: &mut io_uring::IoUring, op: &io_uring::squeue::Entry) -> Result<i32, i32> {
    // SAFETY: the caller keeps every buffer the entry points to alive until this returns,
    // and it returns only after the completion (or with the ring, and the op, still pending
    // on a timeout, when the caller exits at once).
    unsafe { ring.submission().push(op).map_err(|_| libc::EBUSY)? };
    let ts = io_uring::types::Timespec::new().sec(5);
    let args = io_uring::types::SubmitArgs::new().timespec(&ts);
    ring.submitter().submit_with_args(1, &args).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let res = ring.completion().next().ok_or(libc::ETIME)?.result();
    if res < 0 { Err(-res) } else { Ok(res) }
}

/// A UDP query and its reply entirely through io_uring (see [`dns`]): the reply and the
/// address `recvmsg` reported it from.
fn uring_udp_exchange(how: &str, server: SocketAddr, query: &[u8]) -> Result<(Vec<u8>, SocketAddr), i32> {
    let domain = if server.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2).
    let s = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(errno());
    }
    // SAFETY: fd just created.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let fd = io_uring::types::Fd(sock.as_raw_fd());
    let mut ring = io_uring::IoUring::new(4).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let (mut dst, dst_len) = to_storage(server);
    let mut iov = libc::iovec { iov_base: query.as_ptr() as *mut libc::c_void, iov_len: query.len() };
    // SAFETY: a zeroed msghdr is valid; the fields set below point to locals that outlive it.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    match how {
        "sendmsg" => {
            msg.msg_name = (&mut dst as *mut libc::sockaddr_storage).cast();
            msg.msg_namelen = dst_len;
        }
        "connect" => {
            let c =
                io_uring::opcode::Connect::new(fd, (&dst as *const libc::sockaddr_storage).cast(), dst_len);
            uring_one(&mut ring, &c.build())?;
        }
        _ => return Err(libc::EINVAL),
    }
    uring_one(&mut ring, &io_uring::opcode::SendMsg::new(fd, &msg).build())?;
    let mut buf = vec![0u8; 65535];
    // SAFETY: as above.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut riov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as above.
    let mut rmsg: libc::msghdr = unsafe { std::mem::zeroed() };
    rmsg.msg_iov = &mut riov;
    rmsg.msg_iovlen = 1;
    rmsg.msg_name = (&mut from as *mut libc::sockaddr_storage).cast();
    rmsg.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
    let n = uring_one(&mut ring, &io_uring::opcode::RecvMsg::new(fd, &mut rmsg).build())?;
    buf.truncate(n as usize);
    Ok((buf, from_storage(&from).ok_or(libc::EAFNOSUPPORT)?))
}

/// The address in a `sockaddr_storage` the kernel filled.
fn from_storage(st: &libc::sockaddr_storage) -> Option<SocketAddr> {
    let p = (st as *const libc::sockaddr_storage).cast::<u8>();
    match i32::from(st.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it holds a sockaddr_in.
            let sin = unsafe { std::ptr::read(p.cast::<libc::sockaddr_in>()) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it holds a sockaddr_in6.
            let sin6 = unsafe { std::ptr::read(p.cast::<libc::sockaddr_in6>()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::new(ip.into(), u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

/// A UDP socket `connect`ed to ADDR PORT, then `getpeername`: prints `udp-peer ok PEER`, the
/// peer the kernel reports (what a stub resolver compares replies against).
fn udp_peer(sa: SocketAddr) -> Result<(), i32> {
    let bind = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let io = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
    let s = UdpSocket::bind(bind).map_err(io)?;
    s.connect(sa).map_err(io)?;
    let peer = s.peer_addr().map_err(io)?;
    println!("udp-peer ok {peer}");
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

fn uring_open(path: &str) -> Result<(), i32> {
    uring_open_flags(path, libc::O_RDONLY)
}

fn uring_open_flags(path: &str, flags: i32) -> Result<(), i32> {
    let mut ring = io_uring::IoUring::new(4).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let p = cstr(path);
    let op = io_uring::opcode::OpenAt::new(io_uring::types::Fd(libc::AT_FDCWD), p.as_ptr())
        .flags(flags | libc::O_CLOEXEC)
        .mode(0o644)
        .build();
    // SAFETY: `p` outlives the submission, which completes before we return.
    unsafe { ring.submission().push(&op).map_err(|_| libc::EBUSY)? };
    ring.submit_and_wait(1).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let res = ring.completion().next().ok_or(libc::EIO)?.result();
    if res < 0 {
        return Err(-res);
    }
    // SAFETY: fd returned by the kernel.
    drop(unsafe { OwnedFd::from_raw_fd(res) });
    Ok(())
}

fn uring_connect(sa: SocketAddr) -> Result<(), i32> {
    let domain = if sa.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2).
    let s = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(errno());
    }
    // SAFETY: fd just created.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let (storage, len) = to_storage(sa);
    let mut ring = io_uring::IoUring::new(4).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let op = io_uring::opcode::Connect::new(
        io_uring::types::Fd(sock.as_raw_fd()),
        (&storage as *const libc::sockaddr_storage).cast(),
        len,
    )
    .build();
    // SAFETY: `storage` and `sock` outlive the submission.
    unsafe { ring.submission().push(&op).map_err(|_| libc::EBUSY)? };
    ring.submit_and_wait(1).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let res = ring.completion().next().ok_or(libc::EIO)?.result();
    if res < 0 { Err(-res) } else { Ok(()) }
}

fn to_storage(sa: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: zeroed sockaddr_storage is valid; we fill the right variant.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match sa {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin) };
            (st, size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast(), sin6) };
            (st, size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// Why `memfd-exec` did not run the program.
enum ExecError {
    /// Preparing the anonymous file failed.
    Setup(i32),
    /// `execveat` itself failed.
    Refused(i32),
}

fn memfd_exec(path: &str) -> Result<(), ExecError> {
    let setup = |e: std::io::Error| ExecError::Setup(e.raw_os_error().unwrap_or(0));
    let bytes = std::fs::read(path).map_err(setup)?;
    // SAFETY: valid name; fd checked.
    let fd = unsafe { libc::memfd_create(cstr("anon").as_ptr(), 0) };
    if fd < 0 {
        return Err(ExecError::Setup(errno()));
    }
    // SAFETY: fd just created; the file owns it from here.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(&bytes).map_err(setup)?;
    let name = cstr("anon");
    let empty = cstr("");
    let argv: [*const libc::c_char; 2] = [name.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: valid fd, argv/envp NULL-terminated; AT_EMPTY_PATH executes the fd itself.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            f.as_raw_fd(),
            empty.as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    Err(ExecError::Refused(errno()))
}

/// PTRACE_ATTACH; when it works, waits (at most 5 s) for the stop and detaches again, so a
/// build that lets it through fails the test instead of leaving the target stopped.
fn ptrace_attach(pid: i32) -> Result<(), i32> {
    // SAFETY: ptrace(2)/waitpid(2) on a pid; nothing is read or written in the target.
    unsafe {
        if libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) != 0 {
            return Err(errno());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut st = 0;
        while libc::waitpid(pid, &mut st, libc::__WALL | libc::WNOHANG) == 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
    }
    Ok(())
}

/// perf_event_open(2) of a software clock counter on another process.
fn perf_open(pid: i32) -> Result<(), i32> {
    // struct perf_event_attr, version 0 layout is enough (size 64): type, size, config, ...
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes()); // size
    attr[8..16].copy_from_slice(&0u64.to_ne_bytes()); // PERF_COUNT_SW_CPU_CLOCK
    // SAFETY: the kernel reads `size` bytes of attr.
    let r = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), pid, -1, -1, 0u64) };
    if r >= 0 { Ok(()) } else { Err(errno()) }
}

/// `struct clone_args` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// clone3(CLONE_INTO_CGROUP) into the cgroup directory DIR (opened O_PATH). The child exits
/// at once; "ok" means a process was started in that cgroup.
fn clone_into(dir: &str) -> Result<(), i32> {
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let fd = open(dir, libc::O_PATH | libc::O_DIRECTORY)?;
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: fd.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM: the child is a copy that only exits.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, size_of::<CloneArgs>()) };
    if pid < 0 {
        return Err(errno());
    }
    if pid == 0 {
        // SAFETY: the child leaves at once.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
    Ok(())
}

fn uring_openat2(path: &str) -> Result<(), i32> {
    let mut ring = io_uring::IoUring::new(4).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let p = cstr(path);
    let how = io_uring::types::OpenHow::new().flags((libc::O_RDONLY | libc::O_CLOEXEC) as u64);
    let op = io_uring::opcode::OpenAt2::new(io_uring::types::Fd(libc::AT_FDCWD), p.as_ptr(), &how).build();
    // SAFETY: `p` and `how` outlive the submission, which completes before we return.
    unsafe { ring.submission().push(&op).map_err(|_| libc::EBUSY)? };
    ring.submit_and_wait(1).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let res = ring.completion().next().ok_or(libc::EIO)?.result();
    if res < 0 {
        return Err(-res);
    }
    // SAFETY: fd returned by the kernel.
    drop(unsafe { OwnedFd::from_raw_fd(res) });
    Ok(())
}

fn openat2(path: &str) -> Result<(), i32> {
    let p = cstr(path);
    // struct open_how { flags, mode, resolve }
    let how: [u64; 3] = [(libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0];
    // SAFETY: valid path and open_how of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, p.as_ptr(), how.as_ptr(), 24usize) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd returned by the kernel.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

/// `name_to_handle_at` then `open_by_handle_at`: an open that resolves no path.
fn open_by_handle(path: &str) -> Result<(), i32> {
    let p = cstr(path);
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = [0u8; 8 + 128];
    buf[0..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: i32 = 0;
    // SAFETY: buf holds a file_handle with room for 128 bytes of handle.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            p.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id,
            0,
        )
    };
    if r != 0 {
        return Err(errno());
    }
    // Any open directory of the same filesystem (not O_PATH): the grandparent.
    let gp =
        std::path::Path::new(path).parent().and_then(|p| p.parent()).and_then(|p| p.to_str()).unwrap_or("/");
    let root = open(gp, libc::O_RDONLY | libc::O_DIRECTORY)?;
    // SAFETY: buf was filled by the kernel.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            root.as_raw_fd(),
            buf.as_mut_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd returned by the kernel.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(())
}

fn pidfd_kill(pid: i32) -> Result<(), i32> {
    // SAFETY: pidfd_open/pidfd_send_signal with signal 0 only check permission.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: fd returned by the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), 0, 0usize, 0) };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// Asks for SIGIO to `pid` on a pipe and makes it readable: the signal is sent (or refused)
/// by the kernel, not by this process's own call, so the result is whether the target was
/// reached: the caller checks the target.
fn sigio(pid: i32) -> Result<(), i32> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(errno());
    }
    // SAFETY: both fds are ours.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on our own fd.
    unsafe {
        if libc::fcntl(r.as_raw_fd(), libc::F_SETOWN, pid) != 0 {
            return Err(errno());
        }
        let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
        if libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl | libc::O_ASYNC) != 0 {
            return Err(errno());
        }
        libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1);
        std::thread::sleep(std::time::Duration::from_millis(50));
        // Off again before the pipe closes, which would signal a second time (POLL_HUP).
        libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl);
    }
    Ok(())
}

fn abstract_connect(name: &str) -> Result<(), i32> {
    use std::os::linux::net::SocketAddrExt;
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| libc::EINVAL)?;
    std::os::unix::net::UnixStream::connect_addr(&addr).map(drop).map_err(|e| e.raw_os_error().unwrap_or(0))
}

fn userns_mount() -> Result<(), i32> {
    // SAFETY: unshare affects only this process.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
        return Err(errno());
    }
    let d = cstr("/tmp");
    // SAFETY: valid strings; in a new mount namespace.
    let r = unsafe {
        libc::mount(cstr("none").as_ptr(), d.as_ptr(), cstr("tmpfs").as_ptr(), 0, std::ptr::null())
    };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// getpid through the i386 entry (`int 0x80`, i386 number 20).
fn int80() -> Result<(), i32> {
    let ret: i32;
    // SAFETY: a 32-bit getpid through the compat entry touches no memory.
    unsafe { std::arch::asm!("int 0x80", inlateout("eax") 20i32 => ret, options(nostack)) };
    if ret > 0 { Ok(()) } else { Err(-ret) }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: warden-probe OP ARGS...");
            std::process::exit(2)
        })
    };
    let op = a(0);
    let r: Result<(), i32> = match op {
        "open" => open(a(1), libc::O_RDONLY).map(drop),
        "write" => open(a(1), libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT).map(drop),
        "opath-reopen" => open(a(1), libc::O_PATH)
            .and_then(|fd| open(&format!("/proc/self/fd/{}", fd.as_raw_fd()), libc::O_RDONLY))
            .map(drop),
        "uring-open" => uring_open(a(1)),
        "uring-write" => uring_open_flags(a(1), libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT),
        "connect" => {
            TcpStream::connect(sockaddr(a(1), a(2))).map(drop).map_err(|e| e.raw_os_error().unwrap_or(0))
        }
        "uring-connect" => uring_connect(sockaddr(a(1), a(2))),
        "dns" => dns(a(1), sockaddr(a(2), a(3)), a(4), a(5)),
        "udp-send" => {
            let sa = sockaddr(a(1), a(2));
            let bind = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            UdpSocket::bind(bind)
                .and_then(|s| s.send_to(b"x", sa))
                .map(drop)
                .map_err(|e| e.raw_os_error().unwrap_or(0))
        }
        "udp-peer" => udp_peer(sockaddr(a(1), a(2))),
        "udp-connect" => {
            let sa = sockaddr(a(1), a(2));
            let bind = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            UdpSocket::bind(bind)
                .and_then(|s| s.connect(sa))
                .map(drop)
                .map_err(|e| e.raw_os_error().unwrap_or(0))
        }
        "memfd-exec" => match memfd_exec(a(1)) {
            Err(ExecError::Refused(e)) => {
                println!("{op} err {e}");
                let _ = std::io::stdout().flush();
                std::process::exit(126)
            }
            Err(ExecError::Setup(e)) => Err(e),
            Ok(()) => Ok(()),
        },
        "link" => std::fs::hard_link(a(1), a(2)).map_err(|e| e.raw_os_error().unwrap_or(0)),
        "chmod" => {
            let mode = u32::from_str_radix(a(2), 8).expect("octal mode");
            // SAFETY: valid C string.
            if unsafe { libc::chmod(cstr(a(1)).as_ptr(), mode) } < 0 { Err(errno()) } else { Ok(()) }
        }
        "rename" => std::fs::rename(a(1), a(2)).map_err(|e| e.raw_os_error().unwrap_or(0)),
        "kill" => {
            // `kill PID [SIG]`: signal 0 (the default) only checks permission; a negative
            // PID is a process group.
            let sig: i32 = args.get(2).map(|s| s.parse().expect("signal")).unwrap_or(0);
            // SAFETY: kill(2).
            let r = unsafe { libc::kill(a(1).parse().expect("pid"), sig) };
            if r == 0 { Ok(()) } else { Err(errno()) }
        }
        "openat2" => openat2(a(1)),
        "uring-openat2" => uring_openat2(a(1)),
        "open-by-handle" => open_by_handle(a(1)),
        "pidfd-kill" => pidfd_kill(a(1).parse().expect("pid")),
        "sigio" => sigio(a(1).parse().expect("pid")),
        "abstract-connect" => abstract_connect(a(1)),
        "userns-mount" => userns_mount(),
        "int80" => int80(),
        "ptrace" => ptrace_attach(a(1).parse().expect("pid")),
        "prlimit" => {
            // Sets the target's RLIMIT_CORE to the value it has: a write that changes nothing,
            // and succeeds only where the target can be limited at all.
            let pid: i32 = a(1).parse().expect("pid");
            let mut cur: libc::rlimit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: prlimit(2) with valid pointers.
            let r = unsafe { libc::prlimit(pid, libc::RLIMIT_CORE, std::ptr::null(), &mut cur) };
            if r != 0 || unsafe { libc::prlimit(pid, libc::RLIMIT_CORE, &cur, std::ptr::null_mut()) } != 0 {
                Err(errno())
            } else {
                Ok(())
            }
        }
        "renice" => {
            // Sets the target's nice value to the one it has (a write that changes nothing).
            let pid: i32 = a(1).parse().expect("pid");
            // SAFETY: plain syscalls; errno is cleared first because -1 is a valid priority.
            unsafe { *libc::__errno_location() = 0 };
            let prio = unsafe { libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t) };
            if (prio == -1 && errno() != 0)
                || unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, prio) } != 0
            {
                Err(errno())
            } else {
                Ok(())
            }
        }
        "pidfd-open" => {
            // SAFETY: pidfd_open(2); the fd is closed at exit.
            let r = unsafe { libc::syscall(libc::SYS_pidfd_open, a(1).parse::<i32>().expect("pid"), 0) };
            if r >= 0 { Ok(()) } else { Err(errno()) }
        }
        "perf-open" => perf_open(a(1).parse().expect("pid")),
        "clone-into" => clone_into(a(1)),
        "tiocsti" => {
            // Pushes the bytes of ARG (with `\n` and `\x1c` for ^\ decoded) into the input of
            // the terminal on fd 0.
            let text = a(1).replace("\\n", "\n").replace("\\x1c", "\x1c");
            let mut r = Ok(());
            for b in text.bytes() {
                // SAFETY: TIOCSTI reads one byte from a valid pointer.
                if unsafe { libc::ioctl(0, libc::TIOCSTI, &b as *const u8) } != 0 {
                    r = Err(errno());
                    break;
                }
            }
            r
        }
        "vhangup" => {
            // SAFETY: vhangup(2) takes no arguments.
            if unsafe { libc::vhangup() } == 0 { Ok(()) } else { Err(errno()) }
        }
        "bpf" => {
            // SAFETY: BPF_PROG_LOAD with a NULL attr: refused or EFAULT, never loads anything.
            let r = unsafe { libc::syscall(libc::SYS_bpf, 5, 0usize, 0u32) };
            if r >= 0 { Ok(()) } else { Err(errno()) }
        }
        "mount" => {
            let dir = std::env::temp_dir().join(format!("warden-probe-mnt-{}", std::process::id()));
            let _ = std::fs::create_dir(&dir);
            let d = cstr(dir.to_str().unwrap());
            // SAFETY: valid strings.
            let r = unsafe {
                libc::mount(cstr("none").as_ptr(), d.as_ptr(), cstr("tmpfs").as_ptr(), 0, std::ptr::null())
            };
            if r == 0 {
                unsafe { libc::umount(d.as_ptr()) };
            }
            let e = errno();
            let _ = std::fs::remove_dir(&dir);
            if r == 0 { Ok(()) } else { Err(e) }
        }
        "fork" => {
            // Forks N children that sleep, reports how many forks succeeded.
            let n: usize = a(1).parse().expect("count");
            let mut ok = 0;
            let mut last_err = 0;
            let mut kids = Vec::new();
            for _ in 0..n {
                // SAFETY: the child only sleeps and exits.
                match unsafe { libc::fork() } {
                    0 => {
                        std::thread::sleep(std::time::Duration::from_secs(2));
                        unsafe { libc::_exit(0) }
                    }
                    -1 => last_err = errno(),
                    pid => {
                        ok += 1;
                        kids.push(pid);
                    }
                }
            }
            println!("forked {ok}");
            for k in kids {
                unsafe { libc::kill(k, libc::SIGKILL) };
                unsafe { libc::waitpid(k, std::ptr::null_mut(), 0) };
            }
            if ok == n { Ok(()) } else { Err(last_err) }
        }
        _ => {
            eprintln!("warden-probe: unknown op {op}");
            std::process::exit(2)
        }
    };
    report(op, r)
}
