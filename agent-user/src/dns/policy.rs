//! What the resolver decides, without sockets or maps: which names a task may resolve, which
//! answers it keeps (CNAME chains, DNS rebinding), for how long an address is granted, and how
//! a granted address's port rules merge into its egress-trie value. Pure, unit-tested.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use agent_common::maps::{EGRESS_PORT_RULES, EgressRules, PortRule};
use hickory_proto::{
    op::Message,
    rr::{RData, RecordType},
};
use ipnet::IpNet;

use crate::scope::{DnsSettings, HostRule, raw::Protocol};

/// Why an answer was dropped (`dropped` in `dns` records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Owned by a name outside the question's CNAME chain.
    OutOfChain,
    Loopback,
    /// RFC 1918, CGNAT (100.64.0.0/10).
    Private,
    LinkLocal,
    UniqueLocal,
    /// Cloud instance metadata (169.254.169.254, fd00:ec2::254, 100.100.100.200).
    Metadata,
    /// Unspecified, multicast, broadcast, reserved.
    Reserved,
    /// The task's egress table for the address already holds the most port rules it can.
    TableFull,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::OutOfChain => "out-of-chain",
            DropReason::Loopback => "loopback",
            DropReason::Private => "private",
            DropReason::LinkLocal => "link-local",
            DropReason::UniqueLocal => "unique-local",
            DropReason::Metadata => "metadata",
            DropReason::Reserved => "reserved",
            DropReason::TableFull => "table-full",
        }
    }
}

/// The range class of an address that must not be reached through a public name unless the
/// scope accepts it (`network.dns.accept_private`), or `None` for an ordinary address.
/// IPv4-mapped IPv6 is judged as its IPv4 address.
pub fn special_range(ip: IpAddr) -> Option<DropReason> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => special_v4(v4),
            None => special_v6(v6),
        },
    }
}

fn special_v4(a: Ipv4Addr) -> Option<DropReason> {
    let o = a.octets();
    if a == Ipv4Addr::new(169, 254, 169, 254) || a == Ipv4Addr::new(100, 100, 100, 200) {
        Some(DropReason::Metadata)
    } else if a.is_loopback() {
        Some(DropReason::Loopback)
    } else if a.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
        Some(DropReason::Private)
    } else if a.is_link_local() {
        Some(DropReason::LinkLocal)
    } else if a.is_unspecified() || a.is_multicast() || a.is_broadcast() || o[0] == 0 || o[0] >= 240 {
        Some(DropReason::Reserved)
    } else {
        None
    }
}

fn special_v6(a: Ipv6Addr) -> Option<DropReason> {
    let s = a.segments();
    if a == "fd00:ec2::254".parse::<Ipv6Addr>().expect("constant") {
        Some(DropReason::Metadata)
    } else if a.is_loopback() {
        Some(DropReason::Loopback)
    } else if (s[0] & 0xfe00) == 0xfc00 {
        Some(DropReason::UniqueLocal)
    } else if (s[0] & 0xffc0) == 0xfe80 {
        Some(DropReason::LinkLocal)
    } else if a.is_unspecified() || a.is_multicast() {
        Some(DropReason::Reserved)
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64: judge the IPv4 address it carries.
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        special_v4(v4)
    } else {
        None
    }
}

/// Whether `ip` lies in one of the accepted ranges (IPv4-mapped judged as IPv4).
fn accepted(ip: IpAddr, accept: &[IpNet]) -> bool {
    let v4 = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        v4 => Some(v4),
    };
    accept.iter().any(|n| n.contains(&ip) || v4.is_some_and(|a| n.contains(&a)))
}

/// The first rule granting `name`, if any.
pub fn rule_for<'a>(hosts: &'a [HostRule], name: &str) -> Option<&'a HostRule> {
    hosts.iter().find(|h| h.matches(name))
}

/// An address kept in an answer: granted for `ttl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub ip: IpAddr,
    pub ttl: Duration,
}

/// What [`filter_answer`] did to a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filtered {
    pub kept: Vec<Kept>,
    pub dropped: Vec<(IpAddr, DropReason)>,
}

/// The lower-cased name without its trailing dot.
pub fn norm_name(name: &hickory_proto::rr::Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// Filters a response to a query for `qname`, in place: A/AAAA records outside the question's
/// CNAME chain and addresses in special ranges the scope does not accept are removed (from
/// the answer and additional sections); TTLs of what is kept are capped at `max_ttl` so no
/// client caches an address longer than it stays granted. Returns what was kept, with the
/// lifetime of its grant (the record's TTL bounded by `min_ttl`/`max_ttl`), and what was
/// dropped.
pub fn filter_answer(msg: &mut Message, qname: &str, settings: &DnsSettings) -> Filtered {
    // The CNAME chain from the question, followed in any order (bounded: no loops).
    let mut chain = vec![qname.to_string()];
    for _ in 0..16 {
        let mut grew = false;
        for r in &msg.answers {
            if let RData::CNAME(target) = &r.data
                && chain.contains(&norm_name(&r.name))
            {
                let t = norm_name(&target.0);
                if !chain.contains(&t) {
                    chain.push(t);
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    let max_ttl = u32::try_from(settings.max_ttl.as_secs()).unwrap_or(u32::MAX);
    let mut out = Filtered::default();
    msg.answers.retain_mut(|r| {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => {
                r.ttl = r.ttl.min(max_ttl);
                return true;
            }
        };
        if !chain.contains(&norm_name(&r.name)) {
            out.dropped.push((ip, DropReason::OutOfChain));
            return false;
        }
        if let Some(reason) = special_range(ip)
            && !accepted(ip, &settings.accept_private)
        {
            out.dropped.push((ip, reason));
            return false;
        }
        let ttl = Duration::from_secs(u64::from(r.ttl)).clamp(settings.min_ttl, settings.max_ttl);
        r.ttl = r.ttl.min(max_ttl);
        out.kept.push(Kept { ip, ttl });
        true
    });
    // Addresses in the additional section are never granted: don't hand them out either.
    msg.additionals.retain(|r| !matches!(r.record_type(), RecordType::A | RecordType::AAAA));
    out
}

/// The port rules a host rule grants, expiring at `expires_ns` (boot time).
pub fn port_rules(rule: &HostRule, expires_ns: u64) -> Vec<PortRule> {
    let protocol = match rule.protocol {
        Protocol::Any => 0,
        Protocol::Tcp => libc::IPPROTO_TCP as u8,
        Protocol::Udp => libc::IPPROTO_UDP as u8,
    };
    if rule.ports.is_empty() {
        vec![PortRule { lo: 0, hi: u16::MAX, protocol, expires_ns, ..Default::default() }]
    } else {
        rule.ports
            .iter()
            .map(|p| PortRule { lo: p.lo, hi: p.hi, protocol, expires_ns, ..Default::default() })
            .collect()
    }
}

/// Merges `add` into the value that currently decides for an address (`current`: the longest
/// match, which already folds in the CIDR rules covering it), dropping resolved rules that
/// expired by `now_ns`. A rule already present keeps the later expiry (0, a CIDR rule, never
/// expires). When the value is full, the resolved rule expiring first gives way; `None` when
/// every slot holds a permanent rule.
pub fn merge_rules(current: Option<&EgressRules>, add: &[PortRule], now_ns: u64) -> Option<EgressRules> {
    let mut rules: Vec<PortRule> =
        current.map(|c| c.rules[..(c.count as usize).min(EGRESS_PORT_RULES)].to_vec()).unwrap_or_default();
    rules.retain(|r| r.expires_ns == 0 || r.expires_ns > now_ns);
    for a in add {
        match rules.iter_mut().find(|r| r.lo == a.lo && r.hi == a.hi && r.protocol == a.protocol) {
            Some(r) if r.expires_ns == 0 => {}
            Some(r) => r.expires_ns = r.expires_ns.max(a.expires_ns),
            None => {
                if rules.len() == EGRESS_PORT_RULES {
                    let (i, _) = rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.expires_ns != 0)
                        .min_by_key(|(_, r)| r.expires_ns)?;
                    rules.remove(i);
                }
                rules.push(*a);
            }
        }
    }
    let mut v = EgressRules { count: rules.len() as u32, ..Default::default() };
    v.rules[..rules.len()].copy_from_slice(&rules);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::raw::PortRange;
    use hickory_proto::{
        op::{Message, MessageType, OpCode},
        rr::{
            Name, Record,
            rdata::{A, AAAA, CNAME},
        },
    };

    fn settings(accept: &[&str]) -> DnsSettings {
        DnsSettings {
            upstream: Vec::new(),
            accept_private: accept.iter().map(|a| a.parse().unwrap()).collect(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(600),
        }
    }

    fn rec(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, data)
    }

    fn a(ip: &str) -> RData {
        RData::A(A(ip.parse().unwrap()))
    }

    #[test]
    fn special_ranges_cover_rebinding_targets() {
        let cls = |s: &str| special_range(s.parse().unwrap());
        assert_eq!(cls("127.0.0.1"), Some(DropReason::Loopback));
        assert_eq!(cls("10.1.2.3"), Some(DropReason::Private));
        assert_eq!(cls("172.20.0.1"), Some(DropReason::Private));
        assert_eq!(cls("192.168.1.1"), Some(DropReason::Private));
        assert_eq!(cls("100.64.0.1"), Some(DropReason::Private));
        assert_eq!(cls("169.254.169.254"), Some(DropReason::Metadata));
        assert_eq!(cls("169.254.1.1"), Some(DropReason::LinkLocal));
        assert_eq!(cls("fd00:ec2::254"), Some(DropReason::Metadata));
        assert_eq!(cls("fd12::1"), Some(DropReason::UniqueLocal));
        assert_eq!(cls("fe80::1"), Some(DropReason::LinkLocal));
        assert_eq!(cls("::1"), Some(DropReason::Loopback));
        assert_eq!(cls("::ffff:10.0.0.1"), Some(DropReason::Private), "mapped judged as IPv4");
        assert_eq!(cls("64:ff9b::a9fe:a9fe"), Some(DropReason::Metadata), "NAT64 judged as IPv4");
        assert_eq!(cls("0.0.0.0"), Some(DropReason::Reserved));
        assert_eq!(cls("224.0.0.1"), Some(DropReason::Reserved));
        assert_eq!(cls("140.82.112.3"), None);
        assert_eq!(cls("2606:4700::1"), None);
    }

    #[test]
    fn answers_follow_the_cname_chain_and_drop_rebinding() {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_answer(rec("api.example.", 300, RData::CNAME(CNAME(Name::from_ascii("edge.cdn.").unwrap()))));
        m.add_answer(rec("edge.cdn.", 1, a("140.82.112.3")));
        m.add_answer(rec("edge.cdn.", 9000, RData::AAAA(AAAA("2606:4700::1".parse().unwrap()))));
        m.add_answer(rec("edge.cdn.", 60, a("10.0.0.5")));
        m.add_answer(rec("edge.cdn.", 60, a("127.0.0.9")));
        m.add_answer(rec("unrelated.example.", 60, a("140.82.112.4")));
        m.add_additional(rec("ns.example.", 60, a("140.82.112.5")));
        let f = filter_answer(&mut m, "api.example", &settings(&["127.0.0.0/8"]));
        let kept: Vec<String> = f.kept.iter().map(|k| k.ip.to_string()).collect();
        assert_eq!(kept, ["140.82.112.3", "2606:4700::1", "127.0.0.9"]);
        assert_eq!(f.kept[0].ttl, Duration::from_secs(5), "TTL raised to min_ttl");
        assert_eq!(f.kept[1].ttl, Duration::from_secs(600), "TTL capped at max_ttl");
        assert_eq!(
            f.dropped,
            vec![
                ("10.0.0.5".parse().unwrap(), DropReason::Private),
                ("140.82.112.4".parse().unwrap(), DropReason::OutOfChain)
            ]
        );
        assert_eq!(m.answers.len(), 4, "CNAME + the three kept addresses");
        assert!(m.answers.iter().all(|r| r.ttl <= 600), "no client caches past the grant");
        assert!(m.additionals.is_empty());
    }

    fn host(ports: &[(u16, u16)], protocol: Protocol) -> HostRule {
        HostRule {
            pattern: "x.example".into(),
            ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            protocol,
        }
    }

    #[test]
    fn merging_keeps_cidr_rules_and_the_later_expiry() {
        let cidr = PortRule { lo: 22, hi: 22, protocol: 6, ..Default::default() };
        let mut cur = EgressRules { count: 1, ..Default::default() };
        cur.rules[0] = cidr;
        let add = port_rules(&host(&[(443, 443)], Protocol::Tcp), 100);
        let v = merge_rules(Some(&cur), &add, 50).unwrap();
        assert_eq!(v.count, 2);
        assert_eq!(v.rules[0], cidr);
        assert_eq!((v.rules[1].lo, v.rules[1].expires_ns), (443, 100));
        // Again, with a later expiry: one rule, extended.
        let v2 = merge_rules(Some(&v), &port_rules(&host(&[(443, 443)], Protocol::Tcp), 200), 60).unwrap();
        assert_eq!((v2.count, v2.rules[1].expires_ns), (2, 200));
        // Expired resolved rules go; CIDR rules stay.
        let v3 = merge_rules(Some(&v2), &port_rules(&host(&[], Protocol::Any), 900), 500).unwrap();
        assert_eq!(v3.count, 2);
        assert_eq!(v3.rules[0], cidr);
        assert_eq!((v3.rules[1].lo, v3.rules[1].hi, v3.rules[1].protocol), (0, u16::MAX, 0));
        // Full of permanent rules: nothing can be added.
        let mut full = EgressRules { count: EGRESS_PORT_RULES as u32, ..Default::default() };
        for (i, r) in full.rules.iter_mut().enumerate() {
            *r = PortRule { lo: i as u16 + 1, hi: i as u16 + 1, ..Default::default() };
        }
        assert!(merge_rules(Some(&full), &add, 0).is_none());
    }
}
