//! The sandbox's seccomp filter, built here as a classic BPF program so that it can judge
//! what a plain syscall list cannot: the ABI a call is made through (an `int 0x80` i386 call
//! or an x32 number must not slip past a table of x86-64 numbers) and the arguments of
//! `socket`/`socketpair` (address family, type, protocol).
//!
//! The program, in order: a foreign architecture kills the process (its syscall numbers mean
//! other calls; the kernel logs the kill); an x32 number (bit 30) is refused; each denied
//! number is refused; `socket`/`socketpair` are judged by [`SocketPolicy`]; everything else
//! is allowed. Refusals return `EPERM`.
use seccompiler::sock_filter;

/// `AUDIT_ARCH_X86_64`.
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x32 syscalls are x86-64 numbers with this bit set (same `AUDIT_ARCH_X86_64`).
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes (linux/bpf_common.h): class | size/op | source.
/// `BPF_LD | BPF_W | BPF_ABS`.
const LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE_K: u16 = 0x35;
/// `BPF_JMP | BPF_JA`.
const JA: u16 = 0x05;
/// `BPF_ALU | BPF_AND | BPF_K`.
const AND_K: u16 = 0x54;
/// `BPF_RET | BPF_K`.
const RET_K: u16 = 0x06;

// struct seccomp_data offsets.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// `SOCK_TYPE_MASK`: the type without `SOCK_NONBLOCK`/`SOCK_CLOEXEC`.
const SOCK_TYPE_MASK: u32 = 0xf;

/// Which sockets a task may create beyond Unix, TCP and UDP (and `NETLINK_ROUTE`, which
/// glibc's `getaddrinfo(AI_ADDRCONFIG)` and `ip addr` open). Sockets of these kinds pass no
/// cgroup egress hook, so they are refused unless the scope grants them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketPolicy {
    /// `AF_INET`/`AF_INET6` of any type and protocol: raw IP, ICMP (ping), SCTP, `SOCK_PACKET`.
    pub raw: bool,
    /// `AF_PACKET`.
    pub packet: bool,
    /// Every netlink protocol, not only `NETLINK_ROUTE`.
    pub netlink: bool,
    /// Every other address family (`AF_VSOCK`, `AF_KEY`, `AF_ALG`, `AF_BLUETOOTH`, ...).
    pub other: bool,
}

/// A program under construction, with symbolic jump targets resolved at the end.
struct Asm {
    code: Vec<(sock_filter, Option<(usize, usize)>)>,
    labels: Vec<Option<usize>>,
}

#[derive(Clone, Copy)]
struct Label(usize);

impl Asm {
    fn new() -> Self {
        Self { code: Vec::new(), labels: Vec::new() }
    }
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }
    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.code.len());
    }
    fn stmt(&mut self, code: u16, k: u32) {
        self.code.push((sock_filter { code, jt: 0, jf: 0, k }, None));
    }
    fn ret(&mut self, k: u32) {
        self.stmt(RET_K, k);
    }
    fn load(&mut self, off: u32) {
        self.stmt(LD_W_ABS, off);
    }
    /// `if A <op> k goto t else goto f`.
    fn jump(&mut self, code: u16, k: u32, t: Label, f: Label) {
        self.code.push((sock_filter { code, jt: 0, jf: 0, k }, Some((t.0, f.0))));
    }
    /// `goto l` (32-bit offset).
    fn goto(&mut self, l: Label) {
        self.code.push((sock_filter { code: JA, jt: 0, jf: 0, k: 0 }, Some((l.0, l.0))));
    }
    /// Call `nr`: answered `refuse` when its argument `arg` (low 32 bits) has any of `bits`,
    /// allowed otherwise.
    fn refuse_with_bits(&mut self, nr: i64, arg: u32, bits: u32, refuse: u32) {
        let (hit, next, r, ok) = (self.label(), self.label(), self.label(), self.label());
        self.jump(JEQ_K, nr as u32, hit, next);
        self.bind(hit);
        self.load(arg_lo(arg));
        self.stmt(AND_K, bits);
        self.jump(JEQ_K, 0, ok, r);
        self.bind(r);
        self.ret(refuse);
        self.bind(ok);
        self.ret(RET_ALLOW);
        self.bind(next);
    }
    fn finish(self) -> Vec<sock_filter> {
        let labels = self.labels;
        self.code
            .into_iter()
            .enumerate()
            .map(|(i, (mut ins, targets))| {
                if let Some((t, f)) = targets {
                    let at = |l: usize| labels[l].expect("every label is bound") - (i + 1);
                    if ins.code == JA {
                        ins.k = at(t) as u32;
                    } else {
                        ins.jt = u8::try_from(at(t)).expect("conditional jumps stay short");
                        ins.jf = u8::try_from(at(f)).expect("conditional jumps stay short");
                    }
                }
                ins
            })
            .collect()
    }
}

/// Builds the filter: `deny` numbers refused with `EPERM`, sockets judged by `sockets`,
/// user namespaces allowed.
pub fn build(deny: &[i64], sockets: SocketPolicy) -> Vec<sock_filter> {
    build_with(deny, ProcessPolicy { no_clone3: false, userns: true, setid: true }, sockets)
}

/// What the filter lets a task's processes do to other processes and namespaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessPolicy {
    /// `clone3` answers `ENOSYS` (libc falls back to `clone(2)`, whose flags seccomp can
    /// read): a call's processes must not create children in another cgroup
    /// (`CLONE_INTO_CGROUP` with a descriptor of their parent's cgroup handed to them), and
    /// a task without `userns` must not create a user namespace through it.
    pub no_clone3: bool,
    /// User namespaces may be created (`unshare`/`clone` with `CLONE_NEWUSER`; the `userns`
    /// grant). Without it they are refused: a user namespace hands its creator every
    /// capability over namespaces it then creates — a network namespace's netlink
    /// configuration (traffic control, interfaces), a mount namespace — kernel code a task
    /// without capabilities never reaches otherwise.
    pub userns: bool,
    /// Files may be made setuid (`chmod` with `S_ISUID`; the `system` grant, for installing
    /// packages). Without it those calls are refused: a task's write roots are mounted
    /// `nosuid`, so the only files where the bit would work are the node's own, where it makes
    /// a program run as root for every user of the node. `S_ISGID` is left alone: directories
    /// shared by a group carry it, and `tar`, `cp -a` and `install` set it as ordinary work
    /// (seccomp cannot tell a directory from a program).
    pub setid: bool,
}

/// `S_ISUID`.
const SETID_BITS: u32 = 0o4000;
/// `fchmodat2` (Linux 6.6; not in every libc crate's table).
const SYS_FCHMODAT2: i64 = 452;

/// The one process outside the sandbox that a task sees: PID 1 of its PID namespace,
/// Warden's init. Calls that change another process's limits or scheduling by pid answer
/// only to uid checks (no LSM hook Landlock uses), so same-uid tasks could cap the init's CPU
/// time (`prlimit`) or starve it; they are refused for pid 1.
pub const INIT_PID: u32 = 1;

/// `PRIO_PROCESS`, `PRIO_USER` (setpriority), `IOPRIO_WHO_PROCESS`, `IOPRIO_WHO_USER`.
const PRIO_PROCESS: u32 = 0;
const PRIO_USER: u32 = 2;
const IOPRIO_WHO_PROCESS: u32 = 1;
const IOPRIO_WHO_USER: u32 = 3;

impl ProcessPolicy {
    /// Whether `clone3` answers `ENOSYS` ([`build_no_clone3`]).
    pub fn no_clone3(&self) -> bool {
        self.no_clone3 || !self.userns
    }
}

/// A second, unlogged filter: `clone3` answers `ENOSYS`, as on a kernel without it, and libc
/// falls back to `clone(2)` (every thread glibc starts tries `clone3` first). Apart from the
/// logged filter because the kernel's audit record of a refused call carries the action
/// (`code=0x50000`), not the errno: from the logged filter, each thread would be a refusal
/// record. The kernel logs a call's action only when the filter that decided it asked to.
pub fn build_no_clone3() -> Vec<sock_filter> {
    let mut a = Asm::new();
    let (native, kill, hit, allow) = (a.label(), a.label(), a.label(), a.label());
    a.load(ARCH);
    a.jump(JEQ_K, AUDIT_ARCH_X86_64, native, kill);
    a.bind(kill);
    a.ret(RET_KILL_PROCESS);
    a.bind(native);
    a.load(NR);
    a.jump(JEQ_K, libc::SYS_clone3 as u32, hit, allow);
    a.bind(hit);
    a.ret(RET_ERRNO | libc::ENOSYS as u32);
    a.bind(allow);
    a.ret(RET_ALLOW);
    a.finish()
}

/// [`build`] with a [`ProcessPolicy`] (its `clone3` refusal is [`build_no_clone3`]'s).
pub fn build_with(deny: &[i64], process: ProcessPolicy, sockets: SocketPolicy) -> Vec<sock_filter> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let mut a = Asm::new();
    let (native, refuse, allow, sock) = (a.label(), a.label(), a.label(), a.label());
    a.load(ARCH);
    let kill = a.label();
    a.jump(JEQ_K, AUDIT_ARCH_X86_64, native, kill);
    a.bind(kill);
    a.ret(RET_KILL_PROCESS);
    a.bind(native);
    a.load(NR);
    let (x32, not_x32) = (a.label(), a.label());
    a.jump(JGE_K, X32_SYSCALL_BIT, x32, not_x32);
    a.bind(x32);
    a.ret(eperm);
    a.bind(not_x32);
    for &nr in deny {
        let next = a.label();
        let hit = a.label();
        a.jump(JEQ_K, nr as u32, hit, next);
        a.bind(hit);
        a.ret(eperm);
        a.bind(next);
    }
    // Calls judged by their arguments, each ending in its own returns (A is clobbered).
    let by_pid_arg0 = [
        libc::SYS_prlimit64,
        libc::SYS_sched_setaffinity,
        libc::SYS_sched_setscheduler,
        libc::SYS_sched_setparam,
        libc::SYS_sched_setattr,
    ];
    for nr in by_pid_arg0 {
        let (hit, next, r, ok) = (a.label(), a.label(), a.label(), a.label());
        a.jump(JEQ_K, nr as u32, hit, next);
        a.bind(hit);
        a.load(arg_lo(0));
        a.jump(JEQ_K, INIT_PID, r, ok);
        a.bind(r);
        a.ret(eperm);
        a.bind(ok);
        a.ret(RET_ALLOW);
        a.bind(next);
    }
    // setpriority(which, who) and ioprio_set(which, who): by pid 1, or for every process of
    // a uid (the init's among them).
    for (nr, by_pid, by_user) in [
        (libc::SYS_setpriority, PRIO_PROCESS, PRIO_USER),
        (libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, IOPRIO_WHO_USER),
    ] {
        let (hit, next, r, ok, w2, pid) = (a.label(), a.label(), a.label(), a.label(), a.label(), a.label());
        a.jump(JEQ_K, nr as u32, hit, next);
        a.bind(hit);
        a.load(arg_lo(0));
        a.jump(JEQ_K, by_user, r, w2);
        a.bind(w2);
        a.jump(JEQ_K, by_pid, pid, ok);
        a.bind(pid);
        a.load(arg_lo(1));
        a.jump(JEQ_K, INIT_PID, r, ok);
        a.bind(r);
        a.ret(eperm);
        a.bind(ok);
        a.ret(RET_ALLOW);
        a.bind(next);
    }
    if !process.setid {
        // chmod(path, mode), fchmod(fd, mode); fchmodat(dir, path, mode), fchmodat2(dir, path,
        // mode, flags).
        for (nr, mode_arg) in
            [(libc::SYS_chmod, 1), (libc::SYS_fchmod, 1), (libc::SYS_fchmodat, 2), (SYS_FCHMODAT2, 2)]
        {
            a.refuse_with_bits(nr, mode_arg, SETID_BITS, eperm);
        }
    }
    if !process.userns {
        // unshare(flags) and clone(flags, ...): CLONE_NEWUSER in the first argument.
        for nr in [libc::SYS_unshare, libc::SYS_clone] {
            a.refuse_with_bits(nr, 0, libc::CLONE_NEWUSER as u32, eperm);
        }
    }
    let restrict_sockets = !(sockets.raw && sockets.packet && sockets.netlink && sockets.other);
    if restrict_sockets {
        for nr in [libc::SYS_socket, libc::SYS_socketpair] {
            let (hit, next) = (a.label(), a.label());
            a.jump(JEQ_K, nr as u32, hit, next);
            a.bind(hit);
            a.goto(sock);
            a.bind(next);
        }
    }
    a.ret(RET_ALLOW);
    if restrict_sockets {
        let (inet, netlink, packet, other) = (a.label(), a.label(), a.label(), a.label());
        let (c1, c2, c3, c4) = (a.label(), a.label(), a.label(), a.label());
        a.bind(sock);
        a.load(arg_lo(0));
        a.jump(JEQ_K, libc::AF_UNIX as u32, allow, c1);
        a.bind(c1);
        a.jump(JEQ_K, libc::AF_INET as u32, inet, c2);
        a.bind(c2);
        a.jump(JEQ_K, libc::AF_INET6 as u32, inet, c3);
        a.bind(c3);
        a.jump(JEQ_K, libc::AF_NETLINK as u32, netlink, c4);
        a.bind(c4);
        a.jump(JEQ_K, libc::AF_PACKET as u32, packet, other);

        a.bind(other);
        a.goto(if sockets.other { allow } else { refuse });
        a.bind(packet);
        a.goto(if sockets.packet { allow } else { refuse });

        a.bind(netlink);
        if sockets.netlink {
            a.goto(allow);
        } else {
            a.load(arg_lo(2));
            a.jump(JEQ_K, libc::NETLINK_ROUTE as u32, allow, refuse);
        }

        a.bind(inet);
        if sockets.raw {
            a.goto(allow);
        } else {
            let (proto, t2, p2, p3) = (a.label(), a.label(), a.label(), a.label());
            a.load(arg_lo(1));
            a.stmt(AND_K, SOCK_TYPE_MASK);
            a.jump(JEQ_K, libc::SOCK_STREAM as u32, proto, t2);
            a.bind(t2);
            a.jump(JEQ_K, libc::SOCK_DGRAM as u32, proto, refuse);
            a.bind(proto);
            a.load(arg_lo(2));
            a.jump(JEQ_K, 0, allow, p2);
            a.bind(p2);
            a.jump(JEQ_K, libc::IPPROTO_TCP as u32, allow, p3);
            a.bind(p3);
            a.jump(JEQ_K, libc::IPPROTO_UDP as u32, allow, refuse);
        }
    }
    // Shared exits, last: classic BPF jumps only forward.
    a.bind(refuse);
    a.ret(eperm);
    a.bind(allow);
    a.ret(RET_ALLOW);
    a.finish()
}

/// Runs a filter over one call, as the kernel would (the subset of classic BPF [`build`]
/// emits). For tests and for `warden scope check`'s explanations.
pub fn evaluate(prog: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            NR => nr,
            ARCH => arch,
            o if (16..64).contains(&o) => {
                let i = ((o - 16) / 8) as usize;
                if (o - 16) % 8 == 0 { args[i] as u32 } else { (args[i] >> 32) as u32 }
            }
            _ => 0,
        }
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    while let Some(ins) = prog.get(pc) {
        pc += 1;
        match ins.code {
            LD_W_ABS => acc = word(ins.k),
            AND_K => acc &= ins.k,
            JA => pc += ins.k as usize,
            JEQ_K => pc += usize::from(if acc == ins.k { ins.jt } else { ins.jf }),
            JGE_K => pc += usize::from(if acc >= ins.k { ins.jt } else { ins.jf }),
            RET_K => return ins.k,
            other => panic!("opcode {other:#x} is not emitted by build()"),
        }
    }
    panic!("filter fell off its end")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const X86: u32 = AUDIT_ARCH_X86_64;
    const I386: u32 = 0x4000_0003;
    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    fn sock(p: &[sock_filter], family: i32, ty: i32, proto: i32) -> u32 {
        evaluate(p, X86, libc::SYS_socket as u32, [family as u64, ty as u64, proto as u64, 0, 0, 0])
    }

    #[test]
    fn denied_numbers_and_foreign_abis_are_refused() {
        let p = build(&[libc::SYS_reboot, libc::SYS_mount_setattr], SocketPolicy::default());
        assert_eq!(evaluate(&p, X86, libc::SYS_reboot as u32, [0; 6]), EPERM);
        assert_eq!(evaluate(&p, X86, libc::SYS_mount_setattr as u32, [0; 6]), EPERM);
        assert_eq!(evaluate(&p, X86, libc::SYS_read as u32, [0; 6]), RET_ALLOW);
        // x32 numbering of an allowed and of a denied call.
        assert_eq!(evaluate(&p, X86, X32_SYSCALL_BIT | libc::SYS_read as u32, [0; 6]), EPERM);
        assert_eq!(evaluate(&p, X86, X32_SYSCALL_BIT | libc::SYS_reboot as u32, [0; 6]), EPERM);
        // i386 reboot (88) through int 0x80: the process dies, whatever the number.
        assert_eq!(evaluate(&p, I386, 88, [0; 6]), RET_KILL_PROCESS);
        assert_eq!(evaluate(&p, I386, 3, [0; 6]), RET_KILL_PROCESS);
    }

    #[test]
    fn the_init_and_user_namespaces_are_out_of_reach() {
        let p = build_with(&[], ProcessPolicy::default(), SocketPolicy::default());
        let call = |nr: i64, a0: u64, a1: u64| evaluate(&p, X86, nr as u32, [a0, a1, 0, 0, 0, 0]);
        for nr in [libc::SYS_prlimit64, libc::SYS_sched_setaffinity, libc::SYS_sched_setattr] {
            assert_eq!(call(nr, 1, 0), EPERM, "{nr} on the init");
            assert_eq!(call(nr, 0, 0), RET_ALLOW, "{nr} on itself");
            assert_eq!(call(nr, 7, 0), RET_ALLOW, "{nr} on a process of the task");
        }
        assert_eq!(call(libc::SYS_setpriority, 0, 1), EPERM, "PRIO_PROCESS of the init");
        assert_eq!(call(libc::SYS_setpriority, 0, 0), RET_ALLOW, "itself");
        assert_eq!(call(libc::SYS_setpriority, 1, 1), RET_ALLOW, "PRIO_PGRP: the init's is not visible");
        assert_eq!(call(libc::SYS_setpriority, 2, 0), EPERM, "PRIO_USER reaches the init");
        assert_eq!(call(libc::SYS_ioprio_set, 1, 1), EPERM);
        assert_eq!(call(libc::SYS_ioprio_set, 3, 0), EPERM);
        assert_eq!(call(libc::SYS_ioprio_set, 1, 0), RET_ALLOW);
        let newuser = libc::CLONE_NEWUSER as u64;
        assert_eq!(call(libc::SYS_unshare, newuser | libc::CLONE_NEWNS as u64, 0), EPERM);
        assert_eq!(call(libc::SYS_unshare, libc::CLONE_FILES as u64, 0), RET_ALLOW);
        assert_eq!(call(libc::SYS_clone, newuser | libc::SIGCHLD as u64, 0), EPERM);
        assert_eq!(call(libc::SYS_clone, 0x3d0f00, 0), RET_ALLOW, "a thread");
        assert!(ProcessPolicy::default().no_clone3(), "clone3 could create a user namespace");
        let q = build_no_clone3();
        assert_eq!(evaluate(&q, X86, libc::SYS_clone3 as u32, [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(evaluate(&q, X86, libc::SYS_clone as u32, [0; 6]), RET_ALLOW);
        assert_eq!(evaluate(&q, I386, 120, [0; 6]), RET_KILL_PROCESS);
        let granted = build_with(
            &[],
            ProcessPolicy { no_clone3: false, userns: true, setid: false },
            SocketPolicy::default(),
        );
        assert_eq!(evaluate(&granted, X86, libc::SYS_unshare as u32, [newuser, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert!(!ProcessPolicy { no_clone3: false, userns: true, setid: false }.no_clone3());
        assert!(ProcessPolicy { no_clone3: true, userns: true, setid: false }.no_clone3(), "a call");
        assert_eq!(
            evaluate(&granted, X86, libc::SYS_prlimit64 as u32, [1, 0, 0, 0, 0, 0]),
            EPERM,
            "the init stays out of reach"
        );
    }

    #[test]
    fn setuid_modes_are_refused_unless_granted() {
        let p = build_with(&[], ProcessPolicy::default(), SocketPolicy::default());
        let call = |p: &[sock_filter], nr: i64, args: [u64; 6]| evaluate(p, X86, nr as u32, args);
        for (nr, at) in
            [(libc::SYS_chmod, 1), (libc::SYS_fchmod, 1), (libc::SYS_fchmodat, 2), (SYS_FCHMODAT2, 2)]
        {
            let with = |mode: u64| {
                let mut a = [0u64; 6];
                a[at] = mode;
                a
            };
            assert_eq!(call(&p, nr, with(0o4755)), EPERM, "{nr}: setuid");
            assert_eq!(call(&p, nr, with(0o6755)), EPERM, "{nr}: setuid and setgid");
            assert_eq!(call(&p, nr, with(0o2775)), RET_ALLOW, "{nr}: a group's shared directory");
            assert_eq!(call(&p, nr, with(0o755)), RET_ALLOW, "{nr}: chmod +x");
            assert_eq!(call(&p, nr, with(0o1777)), RET_ALLOW, "{nr}: sticky");
            let granted = build_with(
                &[],
                ProcessPolicy { no_clone3: false, userns: false, setid: true },
                SocketPolicy::default(),
            );
            assert_eq!(call(&granted, nr, with(0o4755)), RET_ALLOW, "{nr}: granted");
        }
        // The mode is judged in its own argument only.
        assert_eq!(call(&p, libc::SYS_fchmodat, [0o4755, 0o4755, 0o644, 0, 0, 0]), RET_ALLOW);
    }

    #[test]
    fn ordinary_sockets_pass_and_the_rest_is_refused() {
        let p = build(&[], SocketPolicy::default());
        assert_eq!(evaluate(&p, AUDIT_ARCH_X86_64, libc::SYS_clone3 as u32, [0; 6]), RET_ALLOW);
        let nb = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        assert_eq!(sock(&p, libc::AF_INET, libc::SOCK_STREAM | nb, 0), RET_ALLOW);
        assert_eq!(sock(&p, libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_UDP), RET_ALLOW);
        assert_eq!(sock(&p, libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_TCP), RET_ALLOW);
        assert_eq!(sock(&p, libc::AF_UNIX, libc::SOCK_SEQPACKET, 0), RET_ALLOW);
        assert_eq!(sock(&p, libc::AF_NETLINK, libc::SOCK_RAW | nb, libc::NETLINK_ROUTE), RET_ALLOW);
        assert_eq!(sock(&p, libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP), EPERM);
        assert_eq!(sock(&p, libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP), EPERM, "ping");
        assert_eq!(sock(&p, libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6), EPERM);
        assert_eq!(sock(&p, libc::AF_INET, 10 /* SOCK_PACKET */, 0), EPERM);
        assert_eq!(sock(&p, libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP), EPERM);
        assert_eq!(sock(&p, libc::AF_PACKET, libc::SOCK_RAW, 0x300), EPERM);
        assert_eq!(sock(&p, libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT), EPERM);
        assert_eq!(sock(&p, libc::AF_VSOCK, libc::SOCK_STREAM, 0), EPERM);
        assert_eq!(sock(&p, libc::AF_KEY, libc::SOCK_RAW, 2), EPERM);
        // socketpair is judged the same way.
        let sp = |f: i32| evaluate(&p, X86, libc::SYS_socketpair as u32, [f as u64, 1, 0, 0, 0, 0]);
        assert_eq!(sp(libc::AF_UNIX), RET_ALLOW);
        assert_eq!(sp(libc::AF_TIPC), EPERM);
    }

    #[test]
    fn grants_lift_each_class_alone() {
        let raw = build(&[], SocketPolicy { raw: true, ..Default::default() });
        assert_eq!(sock(&raw, libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP), RET_ALLOW);
        assert_eq!(sock(&raw, libc::AF_PACKET, libc::SOCK_RAW, 0), EPERM);
        let packet = build(&[], SocketPolicy { packet: true, ..Default::default() });
        assert_eq!(sock(&packet, libc::AF_PACKET, libc::SOCK_RAW, 0), RET_ALLOW);
        assert_eq!(sock(&packet, libc::AF_INET, libc::SOCK_RAW, 1), EPERM);
        let nl = build(&[], SocketPolicy { netlink: true, ..Default::default() });
        assert_eq!(sock(&nl, libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT), RET_ALLOW);
        assert_eq!(sock(&nl, libc::AF_VSOCK, libc::SOCK_STREAM, 0), EPERM);
        let other = build(&[], SocketPolicy { other: true, ..Default::default() });
        assert_eq!(sock(&other, libc::AF_VSOCK, libc::SOCK_STREAM, 0), RET_ALLOW);
        assert_eq!(sock(&other, libc::AF_PACKET, libc::SOCK_RAW, 0), EPERM);
    }

    proptest! {
        /// Against a plain reference: whatever the list and the call, the filter decides as
        /// the policy says (the high halves of socket arguments are ignored, as the kernel's
        /// `int` parameters do).
        #[test]
        fn filter_equals_reference(
            deny in proptest::collection::btree_set(0i64..460, 0..80),
            nr in 0u32..470,
            x32 in any::<bool>(),
            family in 0u64..50,
            ty in 0u64..12,
            proto in prop_oneof![Just(0u64), Just(6), Just(17), Just(1), 0u64..300],
            high in any::<u32>(),
            g in any::<[bool; 4]>(),
        ) {
            let deny: Vec<i64> = deny.into_iter().collect();
            let pol = SocketPolicy { raw: g[0], packet: g[1], netlink: g[2], other: g[3] };
            let p = build(&deny, pol);
            let call = if x32 { nr | X32_SYSCALL_BIT } else { nr };
            let h = u64::from(high) << 32;
            let got = evaluate(&p, X86, call, [family | h, ty | h, proto | h, 0, 0, 0]);
            let is_sock = nr as i64 == libc::SYS_socket || nr as i64 == libc::SYS_socketpair;
            let sock_ok = || match family as i32 {
                libc::AF_UNIX => true,
                libc::AF_INET | libc::AF_INET6 => pol.raw || (
                    (ty as i32 == libc::SOCK_STREAM || ty as i32 == libc::SOCK_DGRAM)
                        && [0, 6, 17].contains(&proto)),
                libc::AF_NETLINK => pol.netlink || proto as i32 == libc::NETLINK_ROUTE,
                libc::AF_PACKET => pol.packet,
                _ => pol.other,
            };
            let (a0, a1) = (family as u32, ty as u32);
            let on_init = match nr as i64 {
                libc::SYS_prlimit64 | libc::SYS_sched_setaffinity | libc::SYS_sched_setscheduler
                | libc::SYS_sched_setparam | libc::SYS_sched_setattr => a0 == 1,
                libc::SYS_setpriority => a0 == 2 || (a0 == 0 && a1 == 1),
                libc::SYS_ioprio_set => a0 == 3 || (a0 == 1 && a1 == 1),
                _ => false,
            };
            let want = if x32 || deny.contains(&i64::from(nr)) || on_init || (is_sock && !sock_ok()) {
                EPERM
            } else {
                RET_ALLOW
            };
            prop_assert_eq!(got, want);
        }
    }
}
