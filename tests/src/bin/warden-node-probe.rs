//! `warden-node-probe OP ARGS...`: one real attempt at the node (machine-wide calls, sockets
//! outside the egress hooks, unix sockets), printed as `OP ok` or `OP err <errno>`; exit
//! status 0 on success, 1 when refused, 2 on bad usage. Each attempt is chosen so that it
//! changes nothing on the node even when it is not refused (an invalid argument the kernel
//! checks only after the permission, a no-op, or a read), yet shows which check answered:
//! a refusal is `EPERM`, any other errno means the call reached the kernel's own checks.
use std::{ffi::CString, io::Write, os::fd::FromRawFd, os::fd::OwnedFd};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn report(op: &str, r: Result<(), i32>) -> ! {
    match r {
        Ok(()) => println!("{op} ok"),
        Err(e) => println!("{op} err {e}"),
    }
    let _ = std::io::stdout().flush();
    std::process::exit(if r.is_ok() { 0 } else { 1 })
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// A raw syscall's result: `Ok` for >= 0.
fn sys(r: libc::c_long) -> Result<libc::c_long, i32> {
    if r < 0 { Err(errno()) } else { Ok(r) }
}

fn close(fd: libc::c_long) {
    // SAFETY: an fd the kernel just returned.
    drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
}

fn socket(family: i32, ty: i32, proto: i32) -> Result<(), i32> {
    // SAFETY: plain socket(2).
    sys(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) } as libc::c_long).map(close)
}

/// An ICMP echo to 127.0.0.1 over a raw socket, waiting for the reply: raw IP egress.
fn raw_ping() -> Result<(), i32> {
    // SAFETY: plain socket calls on a local buffer.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP);
        if s < 0 {
            return Err(errno());
        }
        let fd = OwnedFd::from_raw_fd(s);
        // type 8 (echo request), code 0, checksum, id, seq.
        let mut pkt = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
        let sum = pkt.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum::<u32>();
        let ck = !((sum & 0xffff) + (sum >> 16)) as u16;
        pkt[2..4].copy_from_slice(&ck.to_be_bytes());
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
            sin_zero: [0; 8],
        };
        let n = libc::sendto(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as u32,
        );
        if n < 0 {
            return Err(errno());
        }
        Ok(())
    }
}

/// perf_event_open of a software clock on `pid` (or every process, `-1`, on CPU 0).
fn perf(pid: i32) -> Result<(), i32> {
    // struct perf_event_attr, version 0 layout (64 bytes) zero-filled: type, size, config.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&1u32.to_ne_bytes()); // PERF_TYPE_SOFTWARE
    attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
    // config 0: PERF_COUNT_SW_CPU_CLOCK
    let cpu = if pid == -1 { 0 } else { -1 };
    // SAFETY: attr is a valid buffer of the size it declares.
    sys(unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), pid, cpu, -1, 0) }).map(close)
}

/// The i386 `reboot` (88) through `int 0x80`, with an invalid magic: EINVAL if it reaches the
/// kernel's reboot code, EPERM if refused, and a filter that does not check the ABI would let
/// it through.
fn int80_reboot() -> Result<(), i32> {
    let ret: i64;
    // SAFETY: a syscall through the i386 gate with an invalid magic changes nothing; rbx is
    // saved and restored around it (LLVM reserves it).
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "int 0x80",
            "xchg {b}, rbx",
            b = inout(reg) 0u64 => _,
            inlateout("rax") 88i64 => ret,
            in("rcx") 0u64,
            in("rdx") 0u64,
            in("rsi") 0u64,
        );
    }
    if ret < 0 { Err(-ret as i32) } else { Ok(()) }
}

/// Connects to the unix socket at `path` and reads one line from it.
fn unix_connect(path: &str) -> Result<(), i32> {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    let mut b = [0u8; 16];
    s.read(&mut b).map_err(|e| e.raw_os_error().unwrap_or(0))?;
    Ok(())
}

/// Sends one datagram to the unix datagram socket at `path` from an unbound socket.
fn unix_send(path: &str) -> Result<(), i32> {
    let s = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.raw_os_error().unwrap_or(0))?;
    s.send_to(b"x", path).map(drop).map_err(|e| e.raw_os_error().unwrap_or(0))
}

/// Reads the payload of a `user` key in the caller's user keyring.
fn read_user_key(desc: &str) -> Result<(), i32> {
    let ty = cstr("user");
    let d = cstr(desc);
    // SAFETY: valid strings; KEY_SPEC_USER_KEYRING is -4.
    let id = sys(unsafe {
        libc::syscall(libc::SYS_keyctl, 10 /* SEARCH */, -4, ty.as_ptr(), d.as_ptr(), 0)
    })?;
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    sys(unsafe {
        libc::syscall(libc::SYS_keyctl, 11 /* READ */, id, buf.as_mut_ptr(), buf.len())
    })
    .map(drop)
}

/// `mount_setattr` clearing `MOUNT_ATTR_RDONLY` on the mount at `path`.
fn mount_setattr_rw(path: &str) -> Result<(), i32> {
    // struct mount_attr { attr_set, attr_clr, propagation, userns_fd }
    let attr: [u64; 4] = [0, 1 /* MOUNT_ATTR_RDONLY */, 0, 0];
    let p = cstr(path);
    // SAFETY: valid path and attr of the size given.
    sys(unsafe { libc::syscall(libc::SYS_mount_setattr, libc::AT_FDCWD, p.as_ptr(), 0, attr.as_ptr(), 32) })
        .map(drop)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| {
        args.get(i).map(String::as_str).unwrap_or_else(|| {
            eprintln!("usage: warden-node-probe OP ARGS...");
            std::process::exit(2)
        })
    };
    let op = a(0);
    let p = |s: &str| cstr(s);
    // SAFETY: (every arm) raw syscalls with valid pointers to locals; see each comment for why
    // the attempt changes nothing when it is let through.
    let r: Result<(), i32> = unsafe {
        match op {
            // Invalid magic: EINVAL past the permission check.
            "reboot" => sys(libc::syscall(libc::SYS_reboot, 0, 0, 0, 0)).map(drop),
            "reboot-i386" => int80_reboot(),
            // The x32 number of getpid (39): ENOSYS on kernels without x32, EPERM when refused.
            "x32-getpid" => sys(libc::syscall(0x4000_0000 | libc::SYS_getpid)).map(drop),
            // NULL segments: EFAULT/EINVAL past the permission check (and lockdown refuses it).
            "kexec-load" => sys(libc::syscall(libc::SYS_kexec_load, 0, 0, 0, 0)).map(drop),
            "mount-setattr" => mount_setattr_rw(a(1)),
            // A superblock context of the filesystem at PATH (for fsconfig reconfiguration).
            "fspick" => sys(libc::syscall(libc::SYS_fspick, libc::AT_FDCWD, p(a(1)).as_ptr(), 0)).map(close),
            // A file without a swap signature: EINVAL past the permission check.
            "swapon" => sys(libc::syscall(libc::SYS_swapon, p(a(1)).as_ptr(), 0)).map(drop),
            // A path that does not exist: ENOENT past the permission check.
            "acct" => sys(libc::syscall(libc::SYS_acct, p("/nonexistent/warden-acct").as_ptr())).map(drop),
            // Neither time nor zone given: a no-op after the CAP_SYS_TIME check.
            "settimeofday" => sys(libc::syscall(libc::SYS_settimeofday, 0, 0)).map(drop),
            // CLOCK_MONOTONIC cannot be set: EINVAL past the permission check.
            "clock-settime" => {
                let ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                sys(libc::syscall(libc::SYS_clock_settime, libc::CLOCK_MONOTONIC, &ts)).map(drop)
            }
            // Lowering the I/O privilege level to 0 (it is 0): a no-op.
            "iopl" => sys(libc::syscall(libc::SYS_iopl, 0)).map(drop),
            // SYSLOG_ACTION_SIZE_BUFFER: reads the kernel log's size.
            "syslog" => sys(libc::syscall(libc::SYS_syslog, 10, 0, 0)).map(drop),
            // A name longer than any host name: EINVAL past the permission check.
            "sethostname" => {
                let long = [b'x'; 100];
                sys(libc::syscall(libc::SYS_sethostname, long.as_ptr(), long.len())).map(drop)
            }
            // A module name that is not loaded: ENOENT past the permission check.
            "delete-module" => {
                sys(libc::syscall(libc::SYS_delete_module, p("warden_no_such_module").as_ptr(), 0)).map(drop)
            }
            "perf-system" => perf(-1),
            "perf-pid" => perf(a(1).parse().expect("pid")),
            "read-user-key" => read_user_key(a(1)),
            "raw-ping" => raw_ping(),
            "icmp-dgram" => socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
            "packet" => socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32),
            "netlink-diag" => socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_SOCK_DIAG),
            "netlink-route" => socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
            "sctp" => socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP),
            "vsock" => socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0),
            "tcp" => socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0),
            "udp" => socket(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDP),
            // A real signal (the caller means it): `signal PID SIGNUM`.
            "signal" => {
                sys(libc::kill(a(1).parse().expect("pid"), a(2).parse().expect("signal")) as libc::c_long)
                    .map(drop)
            }
            "unix-connect" => unix_connect(a(1)),
            "unix-send" => unix_send(a(1)),
            _ => {
                eprintln!("warden-node-probe: unknown op {op}");
                std::process::exit(2)
            }
        }
    };
    report(op, r)
}
