"""Attempts a hijacked task running as root makes against its boundary (tests/tests/attacks.rs).

Run inside a Warden task. Every attempt is harmless to the node if it succeeds (it names a
file the test owns, writes a value that changes nothing, or passes an argument the kernel
rejects after its permission check): a hole must fail the test, not the machine. Each attempt prints one line `NAME RESULT` where RESULT is
`ok [detail]`, `err ERRNO` (errno name), `killed SIGNAME` or `exit N` (for attempts made in a
child process). Targets come from the environment (see attacks.rs); every attempt is made
for real, once, and the test asserts each outcome with its reason.
"""
import ctypes, ctypes.util, errno, os, signal, socket, struct, sys, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
E = os.environ
BY = int(E.get("A_BYSTANDER", "0"))
WORK = E.get("A_WORK", "/tmp")
DENIED = E.get("A_DENIED", "/nonexistent")

NR = dict(
    ptrace=101, getppid=110, setpriority=141, prlimit64=302, process_vm_readv=310, kcmp=312,
    perf_event_open=298, pidfd_open=434, pidfd_getfd=438, pidfd_send_signal=424, bpf=321,
    io_uring_setup=425, userfaultfd=323, keyctl=250, add_key=248, kexec_load=246, reboot=169,
    init_module=175, finit_module=313, delete_module=176, unshare=272, setns=308, mount=165,
    umount2=166, pivot_root=155, chroot=161, open_by_handle_at=304, name_to_handle_at=303,
    fsopen=430, open_tree=428, move_mount=429, clone3=435, mknod=133, vhangup=153, syslog=103,
    swapon=167, acct=163, iopl=172, ioperm=173, settimeofday=164, sethostname=170,
    fanotify_init=300, memfd_create=319, execveat=322, setxattr=188, quotactl=179,
    landlock_create_ruleset=444, seccomp=317, personality=135, lookup_dcookie=212,
    perf=298, kexec_file_load=320, mount_setattr=442, fspick=433, process_madvise=440,
)


def out(name, res):
    print(f"{name} {res}", flush=True)


def ename(e):
    return errno.errorcode.get(e, str(e))


def sys_(name, *args):
    """Raw syscall; `ok N` or `err ENAME`."""
    ctypes.set_errno(0)
    r = libc.syscall(NR[name], *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if r < 0:
        return "err " + ename(ctypes.get_errno())
    return f"ok {r}"


def attempt(name, f):
    try:
        r = f()
        out(name, "ok" if r is None else (r if isinstance(r, str) else f"ok {r}"))
    except OSError as e:
        out(name, "err " + ename(e.errno))
    except Exception as e:  # a bug in the attempt, not a refusal
        out(name, f"bug {type(e).__name__}: {e}")


def in_child(name, f):
    """Runs f in a forked child: `exit N` or `killed SIG` (exec attempts, namespace games)."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        try:
            code = f() or 0
        except OSError as e:
            code = 100 + (e.errno % 100)
        except BaseException:
            code = 99
        os._exit(code)
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        out(name, "killed " + signal.Signals(os.WTERMSIG(st)).name)
    else:
        c = os.WEXITSTATUS(st)
        out(name, f"exit {c}" if c < 100 or c == 99 else "err " + ename(c - 100))


def read(path, n=64):
    with open(path, "rb") as f:
        return "ok " + f.read(n).hex()[:16]


def write(path, data=b"x"):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def wait_supervisor():
    p = E.get("A_SUPERVISOR_FILE")
    if not p:
        return 0
    for _ in range(200):
        try:
            s = open(p).read().strip()
            if s:
                return int(s)
        except OSError:
            pass
        time.sleep(0.05)
    return 0


# ---- 1. other processes: an ordinary process of the same uid (bystander) and warden run ----
SUP = wait_supervisor()
for who, pid in (("bystander", BY), ("supervisor", SUP)):
    if pid <= 1:
        out(f"target-{who}", "missing")
        continue
    attempt(f"kill-{who}", lambda: os.kill(pid, signal.SIGKILL))
    attempt(f"sigstop-{who}", lambda: os.kill(pid, signal.SIGSTOP))
    attempt(f"prlimit-{who}", lambda: sys_("prlimit64", pid, 1, ctypes.byref((ctypes.c_ulong * 2)(1, 1)), 0))
    attempt(f"setpriority-{who}", lambda: sys_("setpriority", 0, pid, 19))
    attempt(f"ptrace-{who}", lambda: sys_("ptrace", 16, pid, 0, 0))  # PTRACE_ATTACH
    attempt(f"ptrace-seize-{who}", lambda: sys_("ptrace", 0x4206, pid, 0, 0))
    buf = ctypes.create_string_buffer(64)
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
    riov = (ctypes.c_void_p * 2)(0x400000, 64)
    attempt(f"process_vm_readv-{who}", lambda: sys_("process_vm_readv", pid, iov, 1, riov, 1, 0))
    attempt(f"pidfd_open-{who}", lambda: sys_("pidfd_open", pid, 0))
    attempr = None
    pea = ctypes.create_string_buffer(128)
    struct.pack_into("IIQQ", pea, 0, 1, 128, 0, 0)  # PERF_TYPE_SOFTWARE, CPU_CLOCK
    attempt(f"perf_event_open-{who}", lambda: sys_("perf_event_open", pea, pid, -1, -1, 0))
    for f in ("environ", "mem", "maps", "cmdline", "stat"):
        attempt(f"proc-{f}-{who}", lambda: read(f"/proc/{pid}/{f}"))
    attempt(f"proc-root-{who}", lambda: "ok " + ",".join(os.listdir(f"/proc/{pid}/root/"))[:40])
    attempt(f"proc-cwd-{who}", lambda: "ok " + ",".join(os.listdir(f"/proc/{pid}/cwd/"))[:40])
    attempt(f"proc-fd-{who}", lambda: "ok " + ",".join(os.listdir(f"/proc/{pid}/fd/")))
    attempt(f"kcmp-{who}", lambda: sys_("kcmp", os.getpid(), pid, 0, 0, 0))
attempt("bystander-visible", lambda: f"ok {sum(1 for d in os.listdir('/proc') if d == str(BY))}")
attempt("perf_event_open-cpu-wide", lambda: sys_("perf_event_open", pea, -1, 0, -1, 0))

# ---- 2. the namespace's init (Warden's): outside the sandbox cgroup, not dumpable ----
attempt("kill-init", lambda: os.kill(1, signal.SIGKILL))
attempt("sigstop-init", lambda: os.kill(1, signal.SIGSTOP))
attempt("sigterm-init-forward-check", lambda: "ok skipped")  # SIGTERM is forwarded to us by design
for f in ("environ", "mem", "maps"):
    attempt(f"proc-{f}-init", lambda: read(f"/proc/1/{f}"))
attempt("proc-root-init", lambda: "ok " + ",".join(os.listdir("/proc/1/root/"))[:40])
attempt("proc-fd-init", lambda: "ok " + ",".join(os.listdir("/proc/1/fd/")))
attempt("proc-ns-init", lambda: "ok " + str(os.open("/proc/1/ns/mnt", os.O_RDONLY)))
attempt("prlimit-init", lambda: sys_("prlimit64", 1, 1, ctypes.byref((ctypes.c_ulong * 2)(1, 1)), 0))
attempt("ptrace-init", lambda: sys_("ptrace", 16, 1, 0, 0))


def pidfd_getfd_init():
    r = sys_("pidfd_open", 1, 0)
    if not r.startswith("ok"):
        return "pidfd " + r
    return sys_("pidfd_getfd", int(r.split()[1]), 3, 0)


attempt("pidfd_getfd-init", pidfd_getfd_init)
attempt("init-alive", lambda: f"ok {open('/proc/1/stat').read().split()[2]}")

# ---- 3. the cgroup ----
attempt("cgroup-view", lambda: "ok " + ",".join(sorted(os.listdir("/sys/fs/cgroup")))[:60] if os.path.isdir("/sys/fs/cgroup") else "err ENOENT")
CG = "/sys/fs/cgroup"
for m in open("/proc/self/mountinfo"):
    p = m.split()
    if p[p.index("-") + 1] == "cgroup2":
        CG = p[4]
        break
attempt("cgroup-procs-write", lambda: write(f"{CG}/cgroup.procs", b"1"))
attempt("cgroup-freeze-write", lambda: write(f"{CG}/cgroup.freeze", b"0"))
attempt("cgroup-kill-write", lambda: "ok skipped" if not os.path.exists(f"{CG}/cgroup.kill") else write(f"{CG}/cgroup.max.depth", b"max"))
attempt("cgroup-pids-max-write", lambda: write(f"{CG}/pids.max", b"max"))
attempt("cgroup-subtree-write", lambda: write(f"{CG}/cgroup.subtree_control", b"+pids"))
attempt("cgroup-mkdir", lambda: os.mkdir(f"{CG}/escape"))
attempt("cgroup-parent-visible", lambda: "ok " + ",".join(sorted(os.listdir(CG + "/..")))[:60])
attempt("proc-self-cgroup", lambda: "ok " + open("/proc/self/cgroup").read().strip().replace(" ", "_"))


def clone3_into(path):
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY)
    args = ctypes.create_string_buffer(88)
    # flags=CLONE_INTO_CGROUP (0x200000000), exit_signal=SIGCHLD, cgroup fd at offset 80
    struct.pack_into("QQQQQQQQQQQ", args, 0, 0x200000000, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0, fd)
    sys.stdout.flush()
    r = libc.syscall(NR["clone3"], args, ctypes.c_long(88))
    if r == 0:
        os._exit(0)
    if r < 0:
        return "err " + ename(ctypes.get_errno())
    os.waitpid(r, 0)
    return "ok child-started"


attempt("clone3-into-cgroup-root-of-view", lambda: clone3_into(CG))
attempt("clone3-into-cgroup-mount-parent", lambda: clone3_into(CG + "/.."))

# ---- 4. mounts and namespaces ----
for fs in ("cgroup2", "proc", "sysfs", "bpf", "debugfs", "tracefs", "tmpfs", "securityfs"):
    attempt(f"mount-{fs}", lambda: sys_("mount", ctypes.c_char_p(b"x"), ctypes.c_char_p(WORK.encode()), ctypes.c_char_p(fs.encode()), 0, 0))
attempt("fsopen", lambda: sys_("fsopen", ctypes.c_char_p(b"tmpfs"), 0))
attempt("open_tree", lambda: sys_("open_tree", -100, ctypes.c_char_p(b"/"), 0x80001))
attempt("umount-proc", lambda: sys_("umount2", ctypes.c_char_p(b"/proc"), 2))
attempt("pivot_root", lambda: sys_("pivot_root", ctypes.c_char_p(b"/tmp"), ctypes.c_char_p(b"/tmp")))
attempt("chroot", lambda: sys_("chroot", ctypes.c_char_p(b"/tmp")))
for ns, flag in (("mnt", 0x20000), ("pid", 0x20000000), ("net", 0x40000000), ("cgroup", 0x02000000),
                 ("uts", 0x04000000), ("ipc", 0x08000000), ("time", 0x80)):
    in_child(f"unshare-{ns}", lambda: 0 if libc.syscall(NR["unshare"], flag) == 0 else 100 + ctypes.get_errno())


def userns_then(f):
    def g():
        if libc.syscall(NR["unshare"], 0x10000000) != 0:  # CLONE_NEWUSER
            return 100 + ctypes.get_errno()
        return f()
    return g


def mount_in_userns():
    if libc.syscall(NR["unshare"], 0x20000) != 0:
        return 50
    r = libc.syscall(NR["mount"], b"none", b"/tmp", b"tmpfs", 0, 0)
    return 0 if r == 0 else 100 + ctypes.get_errno()


in_child("userns-create", userns_then(lambda: 0))
in_child("userns-mount", userns_then(mount_in_userns))
in_child("userns-chroot-escape", userns_then(lambda: 0 if libc.syscall(NR["chroot"], b"/tmp") == 0 else 100 + ctypes.get_errno()))
in_child("userns-setns-init-mnt", userns_then(lambda: 0 if libc.syscall(NR["setns"], os.open("/proc/1/ns/mnt", os.O_RDONLY), 0) == 0 else 100 + ctypes.get_errno()))
attempt("setns-init-mnt", lambda: sys_("setns", os.open("/proc/1/ns/mnt", os.O_RDONLY), 0))
attempt("setns-init-pid", lambda: sys_("setns", os.open("/proc/1/ns/pid", os.O_RDONLY), 0))
fh = ctypes.create_string_buffer(136)
struct.pack_into("I", fh, 0, 128)
mid = ctypes.c_int(0)
attempt("name_to_handle_at", lambda: sys_("name_to_handle_at", -100, ctypes.c_char_p(b"/etc/hostname"), fh, ctypes.byref(mid), 0))
attempt("open_by_handle_at", lambda: sys_("open_by_handle_at", os.open("/", os.O_RDONLY), fh, 0))

# ---- 5. files: denied and protected paths, link/rename games, devices ----
SECRET_FILE = os.path.join(DENIED, "secret")
attempt("read-denied", lambda: read(SECRET_FILE))
attempt("symlink-to-denied", lambda: (os.symlink(SECRET_FILE, f"{WORK}/sl"), read(f"{WORK}/sl"))[1])
attempt("hardlink-denied-out", lambda: os.link(SECRET_FILE, f"{WORK}/hl"))
attempt("rename-denied-out", lambda: os.rename(SECRET_FILE, f"{WORK}/mv"))
attempt("rename-denied-dir-out", lambda: os.rename(DENIED, f"{WORK}/mvdir"))
attempt("opath-reopen-denied", lambda: read(f"/proc/self/fd/{os.open(SECRET_FILE, os.O_PATH)}"))
attempt("proc-self-root-denied", lambda: read(f"/proc/self/root{SECRET_FILE}"))
attempt("read-shadow", lambda: read("/etc/shadow"))
OUTSIDE = E.get("A_OUTSIDE", "/nonexistent")  # a directory the test owns, outside the grants
attempt("write-outside-grants", lambda: open(f"{OUTSIDE}/new", "w").write("x"))
attempt("write-granted", lambda: (open(f"{WORK}/ok", "w").write("x"), None)[1])
attempt("mknod-char", lambda: os.mknod(f"{WORK}/mem", 0o600 | 0o020000, os.makedev(1, 1)))
attempt("mknod-block", lambda: os.mknod(f"{WORK}/sda", 0o600 | 0o060000, os.makedev(8, 0)))
for dev in ("mem", "kmem", "port", "kmsg", "console", "tty0", "tty1", "vcs", "vcsa", "sda", "vda",
            "nvme0n1", "loop0", "kvm", "fuse", "input/event0", "watchdog", "cpu/0/msr", "snapshot"):
    if os.path.exists("/dev/" + dev):
        attempt(f"dev-{dev.replace('/', '_')}", lambda: read("/dev/" + dev, 16))
attempt("ptmx-new-pty", lambda: f"ok {os.open('/dev/ptmx', os.O_RDWR | os.O_NOCTTY)}")
attempt("dev-pts-list", lambda: "ok " + ",".join(sorted(os.listdir("/dev/pts"))))


USER_PTS = E.get("A_USER_PTS", "")
# The device of the node's devpts, where the user's terminal is.
USER_PTS_DEV = int(E.get("A_USER_PTS_DEV", "-1"))


def open_pts(path, flags):
    # The same name in the task's own devpts instance is another terminal (the task's own
    # ptys are numbered from 0 there, e.g. ptmx-new-pty's): reaching it reaches nothing of
    # the user's. Only the node's devpts entry is the user's terminal.
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and st.st_dev != USER_PTS_DEV:
        return "err OTHERTERMINAL"
    fd = os.open(path, flags | os.O_NOCTTY)
    os.close(fd)
    return f"ok opened {path}"


attempt("user-pts-read", lambda: open_pts(USER_PTS, os.O_RDONLY))
attempt("user-pts-write", lambda: open_pts(USER_PTS, os.O_WRONLY))

# ---- 6. the terminal on fds 0-2 ----
import fcntl, termios
for fd in (0, 1, 2):
    attempt(f"tiocsti-fd{fd}", lambda: fcntl.ioctl(fd, termios.TIOCSTI, b"#") and None)
attempt("tioclinux-fd0", lambda: fcntl.ioctl(0, termios.TIOCLINUX if hasattr(termios, "TIOCLINUX") else 0x541C, b"\x0b") and None)
attempt("tiocsetd-fd0", lambda: fcntl.ioctl(0, termios.TIOCSETD, struct.pack("i", 0)) and None)
attempt("tioccons-fd0", lambda: fcntl.ioctl(0, termios.TIOCCONS) and None)
attempt("vhangup", lambda: sys_("vhangup"))
attempt("dev-tty", lambda: f"ok {os.open('/dev/tty', os.O_RDWR)}")

# ---- 7. the node ----
attempt("keyctl", lambda: sys_("keyctl", 0, -3, 0))
attempt("add_key", lambda: sys_("add_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"x"), ctypes.c_char_p(b"y"), 1, -3))
attempt("bpf", lambda: sys_("bpf", 0, ctypes.create_string_buffer(64), 64))
attempt("io_uring_setup", lambda: sys_("io_uring_setup", 4, ctypes.create_string_buffer(120)))
attempt("userfaultfd", lambda: sys_("userfaultfd", 0))
attempt("kexec_load", lambda: sys_("kexec_load", 0, 0, 0, 0xffff0000))  # bad flags: EINVAL after the check
attempt("kexec_file_load", lambda: sys_("kexec_file_load", -1, -1, 0, 0, 0))
attempt("reboot", lambda: sys_("reboot", 0xfee1dead, 1, 0x1234567, 0))  # bad magic2: EINVAL after the CAP_SYS_BOOT check
attempt("init_module", lambda: sys_("init_module", 0, 0, ctypes.c_char_p(b"")))
attempt("finit_module", lambda: sys_("finit_module", -1, ctypes.c_char_p(b""), 0))
attempt("delete_module", lambda: sys_("delete_module", ctypes.c_char_p(b"nosuchmod"), 0))
attempt("syslog-read", lambda: sys_("syslog", 3, ctypes.create_string_buffer(64), 64))
attempt("swapon", lambda: sys_("swapon", ctypes.c_char_p(b"/nonexistent"), 0))
attempt("iopl", lambda: sys_("iopl", 3))
attempt("settimeofday", lambda: sys_("settimeofday", 0, 0))
HOST = os.uname().nodename.encode()
attempt("sethostname", lambda: sys_("sethostname", ctypes.c_char_p(HOST), len(HOST)))  # the same name
attempt("acct", lambda: sys_("acct", ctypes.c_char_p(b"/nonexistent/acct")))
attempt("fanotify_init", lambda: sys_("fanotify_init", 0, 0))
attempt("personality-32bit", lambda: "ok skipped")
def same(p):
    """The file's current value (writing it back changes nothing)."""
    try:
        return open(p, "rb").read() or b"\n"
    except OSError:
        return None


# Each write is the value the file already has, or one the kernel rejects (EINVAL) when it
# gets past the permission check.
for p, v in (("/proc/sys/kernel/core_pattern", None), ("/proc/sysrq-trigger", b"\x00"),
             ("/proc/sys/kernel/seccomp/actions_logged", None), ("/proc/sys/kernel/modprobe", None),
             ("/proc/sys/kernel/printk", None), ("/sys/kernel/mm/transparent_hugepage/enabled", b"bogus"),
             ("/sys/power/state", b"bogus"), ("/sys/kernel/uevent_helper", None),
             ("/proc/self/loginuid", None), ("/proc/self/attr/current", b"")):
    if os.path.exists(p):
        v = v if v is not None else same(p)
        if v is not None:
            attempt("write-" + p.strip("/").replace("/", "_"), lambda: write(p, v))
attempt("read-bpffs", lambda: "ok " + ",".join(os.listdir("/sys/fs/bpf")))
attempt("read-kallsyms-addrs", lambda: "ok " + open("/proc/kallsyms").readline().split()[0])

# ---- 8. sockets ----
for name, fam, ty, proto in (("netlink-audit", 16, socket.SOCK_RAW, 9), ("netlink-sockdiag", 16, socket.SOCK_RAW, 4),
                             ("netlink-route", 16, socket.SOCK_RAW, 0), ("packet", 17, socket.SOCK_RAW, 0x0300),
                             ("raw-icmp", 2, socket.SOCK_RAW, 1), ("ping", 2, socket.SOCK_DGRAM, 1),
                             ("sctp", 2, socket.SOCK_STREAM, 132), ("vsock", 40, socket.SOCK_STREAM, 0),
                             ("alg", 38, socket.SOCK_SEQPACKET, 0), ("key", 15, socket.SOCK_RAW, 2)):
    attempt(f"socket-{name}", lambda: (socket.socket(fam, ty, proto).close(), None)[1])


def audit_off():
    s = socket.socket(16, socket.SOCK_RAW, 9)
    st = struct.pack("=10I", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # mask=0: changes nothing, needs CAP_AUDIT_CONTROL
    hdr = struct.pack("=IHHII", 16 + len(st), 1001, 5, 1, 0)  # AUDIT_SET, NLM_F_REQUEST|ACK
    s.sendto(hdr + st, (0, 0))
    return "ok " + s.recv(256)[16:20].hex()


attempt("audit-disable", audit_off)


def route_add():
    s = socket.socket(16, socket.SOCK_RAW, 0)
    # RTM_NEWADDR for lo with 10.99.99.1/32: needs CAP_NET_ADMIN
    ifa = struct.pack("=BBBBI", 2, 32, 0, 0, 0x7ffffff0)  # no such interface: ENODEV past the check
    rta = struct.pack("=HH4s", 8, 2, socket.inet_aton("10.99.99.1"))
    body = ifa + rta
    hdr = struct.pack("=IHHII", 16 + len(body), 20, 0x605, 1, 0)
    s.sendto(hdr + body, (0, 0))
    r = s.recv(256)
    err = struct.unpack_from("=i", r, 16)[0]
    return "ok" if err == 0 else "err " + ename(-err)


attempt("netlink-route-newaddr", route_add)

TCP_DENIED = int(E.get("A_TCP_DENIED", "0"))
TCP_ALLOWED = int(E.get("A_TCP_ALLOWED", "0"))


def tcp(addr, port, fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect((addr, port))
    s.close()


def tcp_fastopen(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    s.sendto(b"GET", 0x20000000, (addr, port))  # MSG_FASTOPEN
    s.close()


def udp(addr, port, fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.sendto(b"x", (addr, port))


def udp_sendmmsg_unconnected(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendmsg([b"x"], [], 0, (addr, port))


attempt("tcp-allowed", lambda: tcp("127.0.0.1", TCP_ALLOWED))
attempt("tcp-denied", lambda: tcp("127.0.0.1", TCP_DENIED))
attempt("tcp-denied-other-lo", lambda: tcp("127.0.0.2", TCP_DENIED))
attempt("tcp6-mapped-denied", lambda: tcp("::ffff:127.0.0.1", TCP_DENIED, socket.AF_INET6))
attempt("tcp6-lo-denied", lambda: tcp("::1", TCP_DENIED, socket.AF_INET6))
attempt("tcp-fastopen-denied", lambda: tcp_fastopen("127.0.0.1", TCP_DENIED))
attempt("udp-denied", lambda: udp("127.0.0.1", TCP_DENIED))
attempt("udp-sendmsg-denied", lambda: udp_sendmmsg_unconnected("127.0.0.1", TCP_DENIED))
attempt("udp6-mapped-denied", lambda: udp("::ffff:127.0.0.1", TCP_DENIED, socket.AF_INET6))
attempt("dns-bypass", lambda: udp("8.8.8.8", 53))
attempt("tcp-metadata", lambda: tcp("169.254.169.254", 80))
attempt("tcp-daemon-metrics", lambda: tcp("127.0.0.1", 9464))


def unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.close()


def unix_dgram(path):
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", path)


UNIX_DENIED = E.get("A_UNIX_DENIED", "")
attempt("unix-denied", lambda: unix(UNIX_DENIED))
attempt("unix-denied-relative", lambda: (os.chdir(os.path.dirname(UNIX_DENIED)), unix(os.path.basename(UNIX_DENIED)))[1])
os.chdir("/")
attempt("unix-denied-dotdot", lambda: unix(os.path.dirname(UNIX_DENIED) + "/../" + os.path.basename(os.path.dirname(UNIX_DENIED)) + "/" + os.path.basename(UNIX_DENIED)))
attempt("unix-denied-proc-root", lambda: unix("/proc/self/root" + UNIX_DENIED))
attempt("unix-denied-dgram", lambda: unix_dgram(UNIX_DENIED))
attempt("unix-abstract-outside", lambda: unix("\0" + E.get("A_ABSTRACT", "none")))


def abstract_own():
    """Ordinary work: an abstract socket the task itself creates (stream and datagram)."""
    name = "\0warden-attack-own-%d" % os.getpid()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(name)
    srv.listen(1)
    unix(name)
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    d.bind(name + "-d")
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"x", name + "-d")
    return "ok " + d.recv(1).decode()


attempt("unix-abstract-own", abstract_own)


def daemon_api(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    # Ending every task of the node would be the prize.
    s.sendall(b"GET /v1/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return "ok " + s.recv(64).split(b"\r\n")[0].decode().replace(" ", "_")


attempt("unix-daemon-api", lambda: daemon_api(E.get("A_DAEMON_SOCK", "/run/warden/warden.sock")))
attempt("unix-systemd-private", lambda: unix("/run/systemd/private"))
attempt("unix-docker", lambda: unix("/run/docker.sock"))
attempt("unix-containerd", lambda: unix("/run/containerd/containerd.sock"))

# ---- 9. privilege ----
attempt("capeff", lambda: "ok " + [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0])
attempt("capbnd", lambda: "ok " + [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapBnd")][0])
attempt("no_new_privs", lambda: "ok " + [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0])
attempt("setcap-xattr", lambda: os.setxattr(f"{WORK}/ok", "security.capability", b"\x01\x00\x00\x02" + b"\xff" * 16))
attempt("setuid-chmod", lambda: os.chmod(f"{WORK}/ok", 0o4755))
attempt("setuid-other", lambda: os.setuid(1000) if False else sys_("setpriority", 0, 0, 0) and "ok skipped")

# ---- 10. exec identity (scope: exec.allow = python3 + sh) ----
NOT_ALLOWED = E.get("A_NOT_ALLOWED", "/usr/bin/id")


def exec_plain():
    os.execv(NOT_ALLOWED, [NOT_ALLOWED])


def exec_copy():
    import shutil
    shutil.copy(NOT_ALLOWED, f"{WORK}/copy")
    os.chmod(f"{WORK}/copy", 0o755)
    os.execv(f"{WORK}/copy", ["copy"])


def exec_memfd():
    fd = libc.syscall(NR["memfd_create"], b"x", 0)
    data = open(NOT_ALLOWED, "rb").read()
    os.write(fd, data)
    r = libc.syscall(NR["execveat"], fd, b"", (ctypes.c_char_p * 2)(b"x", None), (ctypes.c_char_p * 1)(None), 0x1000)
    return 100 + ctypes.get_errno()


def exec_fd():
    fd = os.open(NOT_ALLOWED, os.O_RDONLY)
    libc.syscall(NR["execveat"], fd, b"", (ctypes.c_char_p * 2)(b"x", None), (ctypes.c_char_p * 1)(None), 0x1000)
    return 100 + ctypes.get_errno()


def exec_ldso():
    ld = "/lib64/ld-linux-x86-64.so.2"
    os.execv(ld, [ld, NOT_ALLOWED])


def exec_shebang():
    p = f"{WORK}/s.sh"
    open(p, "w").write(f"#!{NOT_ALLOWED}\n")
    os.chmod(p, 0o755)
    os.execv(p, [p])


def exec_proc_root():
    os.execv("/proc/self/root" + NOT_ALLOWED, ["id"])


def exec_symlink():
    os.symlink(NOT_ALLOWED, f"{WORK}/py-looking")
    os.execv(f"{WORK}/py-looking", ["x"])


TOOL = E.get("A_ALLOWED_TOOL", "")  # an allowed program the test owns (a copy): the only target


def write_allowed():
    fd = os.open(TOOL, os.O_WRONLY)
    os.close(fd)


def rename_over_allowed():
    open(f"{WORK}/impostor", "w").write("#!/bin/sh\n")
    os.rename(f"{WORK}/impostor", TOOL)


def unlink_allowed():
    os.unlink(TOOL)


in_child("exec-not-allowed", exec_plain)
in_child("exec-copy", exec_copy)
in_child("exec-memfd", exec_memfd)
in_child("exec-fd-execveat", exec_fd)
in_child("exec-ldso", exec_ldso)
in_child("exec-shebang", exec_shebang)
in_child("exec-proc-root", exec_proc_root)
in_child("exec-symlink", exec_symlink)
attempt("write-allowed-binary", write_allowed)
attempt("rename-over-allowed", rename_over_allowed)
attempt("unlink-allowed", unlink_allowed)
attempt("write-proc-self-exe", lambda: write("/proc/self/exe"))

# ---- 11. resources ----
LIMIT = int(E.get("A_PROCS", "0"))


def fork_bomb():
    kids, err = [], ""
    for _ in range(LIMIT + 20):
        try:
            pid = os.fork()
        except OSError as e:
            err = ename(e.errno)
            break
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        kids.append(pid)
    for k in kids:
        os.kill(k, signal.SIGKILL)
        os.waitpid(k, 0)
    return f"ok forked={len(kids)} err={err}"


attempt("fork-bomb", fork_bomb)

MEMORY = int(E.get("A_MEMORY", "0"))


def touch(n):
    """Allocates n bytes and writes every page (the kernel charges only what is touched)."""
    import mmap
    m = mmap.mmap(-1, n)
    chunk = b"\x01" * (1 << 20)
    while m.tell() < n:
        m.write(chunk[: n - m.tell()])
    return 0


# Ordinary use under the limit works; twice the limit is killed by the kernel (OOM at the
# task's memory limit), and only the allocating child: the script goes on. Harmless if the
# limit were missing: 2 x 256 MiB, freed at the child's exit.
if MEMORY:
    in_child("memory-under-limit", lambda: touch(MEMORY // 4))
    in_child("memory-2x-limit", lambda: touch(2 * MEMORY))
INF = (ctypes.c_ulong * 2)(2**64 - 1, 2**64 - 1)
attempt("raise-own-hard-limit", lambda: sys_("prlimit64", 0, 7, ctypes.byref(INF), 0))  # RLIMIT_NOFILE
attempt("oom-score-adj-lower", lambda: write("/proc/self/oom_score_adj", b"-1000"))
attempt("bystander-alive-end", lambda: "ok" if BY and os.path.exists(f"/proc/{BY}") else "err ESRCH")
out("done", "ok")
