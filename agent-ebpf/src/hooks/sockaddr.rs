//! Egress: cgroup `connect4/6` and `sendmsg4/6` programs, attached to each sandbox cgroup.
//!
//! They run inside `connect(2)`/`sendmsg(2)` — including when io_uring issues them — before the
//! packet leaves, and refuse with EPERM by returning 0. IPv4 destinations are judged as
//! IPv4-mapped IPv6, so `::ffff:a.b.c.d` gets exactly the verdict of `a.b.c.d`.
use agent_common::{
    abi::{ConnectRecord, action, kind, op, rule},
    maps::{EGRESS_FULL_PREFIX, EGRESS_PORT_RULES, EgressAddr, Sandbox, sandbox_flags},
};
use aya_ebpf::{macros::cgroup_sock_addr, maps::lpm_trie::Key, programs::SockAddrContext};

use crate::{
    emit::{Verdict, count_lost_denial, current_proc, header, reserve, set_verdict},
    maps::{EGRESS, current_sandbox},
    offsets::OFFSETS,
};

/// Allowed by the sandbox's egress rules?
#[inline(always)]
fn allowed(sandbox: &Sandbox, addr: &[u8; 16], port: u16, protocol: u8) -> bool {
    let key = Key::new(EGRESS_FULL_PREFIX, EgressAddr { slot_be: sandbox.slot.to_be_bytes(), addr: *addr });
    // SAFETY: the value is read-only here and copied field by field.
    let Some(rules) = EGRESS.get(&key) else {
        return false;
    };
    let n = rules.count as usize;
    let mut i = 0;
    while i < EGRESS_PORT_RULES {
        if i >= n {
            break;
        }
        let r = &rules.rules[i];
        if (r.protocol == 0 || r.protocol == protocol) && port >= r.lo && port <= r.hi {
            return true;
        }
        i += 1;
    }
    false
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
    if sandbox.flags & sandbox_flags::NET_RESTRICTED != 0 && !allowed(&sandbox, &addr, port, protocol) {
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
