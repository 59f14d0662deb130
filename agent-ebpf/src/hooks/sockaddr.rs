//! Egress: cgroup `connect4/6` and `sendmsg4/6` programs, attached to each sandbox cgroup.
//!
//! They run inside `connect(2)`/`sendmsg(2)` — including when io_uring issues them — before the
//! packet leaves, and refuse with EPERM by returning 0. IPv4 destinations are judged as
//! IPv4-mapped IPv6, so `::ffff:a.b.c.d` gets exactly the verdict of `a.b.c.d`.
//!
//! Egress by name: in a sandbox with `DNS_REDIRECT`, DNS (port 53 to any address, and anything
//! sent to the resolver's own port) is rewritten to go to Warden's resolver at the sandbox
//! slot's own loopback address (`DNS_CONFIG`), so the resolver knows the task from where the
//! kernel sent the query, never from what the task wrote. `recvmsg4/6` make the reply appear
//! to come from the address the task asked (`getpeername4/6` likewise). An unconnected IPv6 datagram to a native IPv6
//! address cannot be redirected (the kernel refuses a v4-mapped rewrite in `udpv6_sendmsg`)
//! and is refused instead.
use agent_common::{
    abi::{ConnectRecord, action, kind, op, rule},
    maps::{DnsOrig, EGRESS_FULL_PREFIX, EGRESS_PORT_RULES, EgressAddr, Sandbox, sandbox_flags},
};
use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_boot_ns},
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};

use crate::{
    emit::{Verdict, count_lost_denial, current_proc, header, reserve, set_verdict},
    maps::{DNS_CONFIG, DNS_ORIG, EGRESS, current_sandbox},
    offsets::OFFSETS,
};

/// The standard DNS port.
const DNS_PORT: u16 = 53;

/// `::ffff:0:0/96` as the third word of an address in network byte order.
const MAPPED_WORD: [u8; 4] = [0, 0, 0xff, 0xff];

/// Allowed by the sandbox's egress rules?
#[inline(always)]
fn allowed(sandbox: &Sandbox, addr: &[u8; 16], port: u16, protocol: u8) -> bool {
    let key = Key::new(EGRESS_FULL_PREFIX, EgressAddr { slot_be: sandbox.slot.to_be_bytes(), addr: *addr });
    // SAFETY: the value is read-only here and copied field by field.
    let Some(rules) = EGRESS.get(&key) else {
        return false;
    };
    let n = rules.count as usize;
    // Read the clock only for rules that expire (addresses the resolver answered): CIDR
    // rules cost what they always did.
    let mut now = 0u64;
    let mut i = 0;
    while i < EGRESS_PORT_RULES {
        if i >= n {
            break;
        }
        let r = &rules.rules[i];
        if (r.protocol == 0 || r.protocol == protocol) && port >= r.lo && port <= r.hi {
            if r.expires_ns == 0 {
                return true;
            }
            if now == 0 {
                // SAFETY: helper without arguments.
                now = unsafe { bpf_ktime_get_boot_ns() };
            }
            if now < r.expires_ns {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// What happened to a DNS destination of a `DNS_REDIRECT` sandbox.
enum Dns {
    /// Not DNS: judge it as any other destination.
    No,
    /// Rewritten to the resolver: let it through.
    Redirected,
    /// DNS that cannot be redirected (no resolver, slot out of range, unconnected native
    /// IPv6): refuse it.
    Refuse,
}

/// Rewrites a DNS destination to the resolver's address for this sandbox's slot.
#[inline(always)]
fn redirect_dns(ctx: &SockAddrContext, sandbox: &Sandbox, addr: &[u8; 16], port: u16, op_code: u8) -> Dns {
    let Some(cfg) = DNS_CONFIG.get(0) else {
        return Dns::No;
    };
    if port != DNS_PORT && (cfg.port == 0 || port != cfg.port) {
        return Dns::No;
    }
    if cfg.port == 0 || sandbox.slot >= cfg.slots || op_code == op::SENDMSG6 {
        return Dns::Refuse;
    }
    let ip = u32::from_ne_bytes(cfg.addr_base.wrapping_add(sandbox.slot).to_be_bytes());
    if port == cfg.port
        && addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        && addr[12..] == ip.to_ne_bytes()
    {
        // Already the resolver (a v6 socket connected to the redirect address sends through
        // the IPv4 path again): keep the destination the task asked for.
        return Dns::Redirected;
    }
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer; these fields are writable in connect/sendmsg programs.
    unsafe {
        if op_code == op::CONNECT6 {
            (*sa).user_ip6[0] = 0;
            (*sa).user_ip6[1] = 0;
            (*sa).user_ip6[2] = u32::from_ne_bytes(MAPPED_WORD);
            (*sa).user_ip6[3] = ip;
        } else {
            (*sa).user_ip4 = ip;
        }
        (*sa).user_port = u32::from(cfg.port.to_be());
    }
    // SAFETY: valid context pointer (a `bpf_sock_addr`, what the helper takes here).
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    let orig = DnsOrig { addr: *addr, port, _pad0: 0, _pad1: 0 };
    // A full LRU evicts; a failed insert only means the reply shows the resolver's address.
    let _ = DNS_ORIG.insert(cookie, orig, 0);
    Dns::Redirected
}

/// `recvmsg` (and `getpeername`) on a `DNS_REDIRECT` sandbox's socket: a reply from (a peer
/// at) the resolver's address for this slot is shown as where the query was addressed.
#[inline(always)]
fn restore_source(ctx: &SockAddrContext, v6_hook: bool) {
    let Some((_, sandbox)) = current_sandbox() else {
        return;
    };
    if sandbox.flags & sandbox_flags::DNS_REDIRECT == 0 {
        return;
    }
    let Some(cfg) = DNS_CONFIG.get(0) else {
        return;
    };
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer.
    let port = u16::from_be(unsafe { (*sa).user_port } as u16);
    if cfg.port == 0 || port != cfg.port {
        return;
    }
    let ip = u32::from_ne_bytes(cfg.addr_base.wrapping_add(sandbox.slot).to_be_bytes());
    // SAFETY: valid context pointer; user_ip4/user_ip6 readable.
    let from_resolver = unsafe {
        if v6_hook {
            (*sa).user_ip6[0] == 0
                && (*sa).user_ip6[1] == 0
                && (*sa).user_ip6[2] == u32::from_ne_bytes(MAPPED_WORD)
                && (*sa).user_ip6[3] == ip
        } else {
            (*sa).user_ip4 == ip
        }
    };
    if !from_resolver {
        return;
    }
    // SAFETY: valid context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // SAFETY: the value is copied out at once.
    let Some(orig) = (unsafe { DNS_ORIG.get(cookie) }).copied() else {
        return;
    };
    let a = orig.addr;
    let word = |i: usize| u32::from_ne_bytes([a[i * 4], a[i * 4 + 1], a[i * 4 + 2], a[i * 4 + 3]]);
    // SAFETY: valid context pointer; these fields are writable in recvmsg programs.
    unsafe {
        if v6_hook {
            (*sa).user_ip6[0] = word(0);
            (*sa).user_ip6[1] = word(1);
            (*sa).user_ip6[2] = word(2);
            (*sa).user_ip6[3] = word(3);
        } else if word(0) == 0 && word(1) == 0 && word(2) == u32::from_ne_bytes(MAPPED_WORD) {
            (*sa).user_ip4 = word(3);
        } else {
            return;
        }
        (*sa).user_port = u32::from(orig.port.to_be());
    }
}

/// Judges one destination; returns 1 to let it through, 0 to refuse (EPERM).
#[inline(always)]
fn judge(ctx: &SockAddrContext, addr: [u8; 16], op_code: u8) -> i32 {
    let Some((cgroup_id, sandbox)) = current_sandbox() else {
        return 1;
    };
    // SAFETY: the context pointer is valid for the program's run; these fields are readable.
    let (port_be, protocol) = unsafe { ((*ctx.sock_addr).user_port, (*ctx.sock_addr).protocol) };
    let port = u16::from_be(port_be as u16);
    let protocol = protocol as u8;
    let mut verdict = Verdict::ALLOW;
    if sandbox.flags & sandbox_flags::DNS_REDIRECT != 0 {
        match redirect_dns(ctx, &sandbox, &addr, port, op_code) {
            // The resolver records the query; nothing to judge here.
            Dns::Redirected => return 1,
            Dns::Refuse => verdict = Verdict::deny(&sandbox, rule::NETWORK_EGRESS, action::REFUSE),
            Dns::No => {}
        }
    }
    if verdict.decision == 0
        && sandbox.flags & sandbox_flags::NET_RESTRICTED != 0
        && !allowed(&sandbox, &addr, port, protocol)
    {
        verdict = Verdict::deny(&sandbox, rule::NETWORK_EGRESS, action::REFUSE);
    }
    match reserve::<ConnectRecord>(&sandbox, kind::CONNECT) {
        Some(mut entry) => {
            // SAFETY: reserved, exclusively owned record.
            let rec = unsafe { &mut *entry.as_mut_ptr() };
            let off = OFFSETS.load();
            header(&mut rec.hdr, kind::CONNECT, size_of::<ConnectRecord>(), cgroup_id, &sandbox);
            set_verdict(&mut rec.hdr, verdict);
            current_proc(&mut rec.proc, off.task_tgid, off.task_real_parent);
            rec.addr = addr;
            rec.port = port;
            rec.protocol = protocol;
            rec.op = op_code;
            rec._pad0 = 0;
            entry.submit(0);
        }
        None => {
            if verdict.decision != 0 {
                count_lost_denial(&sandbox);
            }
        }
    }
    if verdict.enforced() { 0 } else { 1 }
}

#[inline(always)]
fn v4(ctx: &SockAddrContext) -> [u8; 16] {
    // SAFETY: valid context pointer.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 }.to_ne_bytes();
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip[0], ip[1], ip[2], ip[3]]
}

#[inline(always)]
fn v6(ctx: &SockAddrContext) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        // SAFETY: valid context pointer; user_ip6 is readable word by word.
        let w = unsafe { (*ctx.sock_addr).user_ip6[i] }.to_ne_bytes();
        out[i * 4] = w[0];
        out[i * 4 + 1] = w[1];
        out[i * 4 + 2] = w[2];
        out[i * 4 + 3] = w[3];
        i += 1;
    }
    out
}

#[cgroup_sock_addr(connect4)]
pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, v4(&ctx), op::CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, v6(&ctx), op::CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    judge(&ctx, v4(&ctx), op::SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    judge(&ctx, v6(&ctx), op::SENDMSG6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn egress_recvmsg4(ctx: SockAddrContext) -> i32 {
    restore_source(&ctx, false);
    1
}

#[cgroup_sock_addr(recvmsg6)]
pub fn egress_recvmsg6(ctx: SockAddrContext) -> i32 {
    restore_source(&ctx, true);
    1
}

#[cgroup_sock_addr(getpeername4)]
pub fn egress_getpeername4(ctx: SockAddrContext) -> i32 {
    restore_source(&ctx, false);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn egress_getpeername6(ctx: SockAddrContext) -> i32 {
    restore_source(&ctx, true);
    1
}
