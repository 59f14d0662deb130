//! Calls' scopes are never wider than their parent's: the check, section by section, made
//! when a call starts (`docs/scope.md`, *Calls*). Pure: it compares two validated scopes as
//! written; the kernel then enforces the call's scope on the call's cgroup (its own slot), and
//! on the fallback engine the call's Landlock domain is nested in whatever domain its starter
//! already had (Landlock can only narrow).
//!
//! What "no wider" means per section (`None` = the section is absent = not restricted):
//! - `mode`: an enforcing parent's call enforces.
//! - `exec.allow`, `files.read`, `files.write`: a restricted parent's call is restricted too,
//!   each of its entries equal to or below one of the parent's (an `exec.allow` entry below a
//!   parent's entry is allowed when that entry is a directory, which is what the kernel
//!   grants).
//! - `files.deny`: every path the parent denies is denied to the call (by the same entry or an
//!   ancestor of it).
//! - `secrets`: every secret the parent guards is guarded in the call with no other tools; a
//!   call issues no secrets of its own (the task's issued secrets are the call's, under the
//!   same tools).
//! - `network.egress`: a restricted parent's call is restricted, each rule inside one of the
//!   parent's (address range, ports, protocol); each `host` rule inside one of the parent's
//!   (`api.x.com` inside `*.x.com`, `*.a.x.com` inside `*.x.com`); `network.dns.accept_private`
//!   inside the parent's.
//! - `limits.processes`, `limits.memory`: at most the parent's (absent: the parent's limit
//!   holds, the call's cgroup is inside the parent's).
//! - `ttl`: checked against the parent's *remaining* time when the call starts (not here).
//! - `grant`, `capabilities`: subsets of the parent's. `user`: the parent's, if it has one.
//! - `evidence.on_gap: end` and `evidence.intent: digest` of the parent hold for the call.
use std::path::{Path, PathBuf};

use super::{EgressRule, HostRule, Mode, Scope, raw::OnGap, raw::PortRange, raw::Protocol};

/// A call scope wider than its parent's: the scope field and what widens it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("call scope widens {field}: {what}")]
pub struct Widening {
    /// The scope field, e.g. `exec.allow`, `network.egress`.
    pub field: &'static str,
    pub what: String,
}

fn widen(field: &'static str, what: impl Into<String>) -> Result<(), Widening> {
    Err(Widening { field, what: what.into() })
}

/// Whether `p` is `base` or below it (component-wise).
fn under(p: &Path, base: &Path) -> bool {
    p.starts_with(base)
}

/// A path list section: a restricted parent needs a restricted child, each entry inside.
fn paths(
    field: &'static str,
    parent: &Option<Vec<PathBuf>>,
    child: &Option<Vec<PathBuf>>,
) -> Result<(), Widening> {
    let Some(pp) = parent else { return Ok(()) };
    let Some(cc) = child else {
        return widen(
            field,
            "the parent restricts it and the call does not (write the parent's list or a part of it)",
        );
    };
    for c in cc {
        if !pp.iter().any(|p| under(c, p)) {
            return widen(field, format!("{} is not allowed by the parent", c.display()));
        }
    }
    Ok(())
}

fn ports_within(child: &[PortRange], parent: &[PortRange]) -> bool {
    if parent.is_empty() {
        return true;
    }
    if child.is_empty() {
        return false;
    }
    child.iter().all(|c| parent.iter().any(|p| p.lo <= c.lo && c.hi <= p.hi))
}

fn proto_within(child: Protocol, parent: Protocol) -> bool {
    parent == Protocol::Any || child == parent
}

fn rule_within(c: &EgressRule, p: &EgressRule) -> bool {
    p.net.contains(&c.net) && ports_within(&c.ports, &p.ports) && proto_within(c.protocol, p.protocol)
}

/// Whether every name `child` matches is matched by `parent`.
fn pattern_within(child: &str, parent: &str) -> bool {
    let child = child.to_ascii_lowercase();
    let parent = parent.to_ascii_lowercase();
    match (child.strip_prefix("*."), parent.strip_prefix("*.")) {
        (None, None) => child == parent,
        (None, Some(pd)) => child.len() > pd.len() + 1 && child.ends_with(&format!(".{pd}")),
        // `*.x.com` inside `*.x.com`, `*.a.x.com` inside `*.x.com`.
        (Some(cd), Some(pd)) => cd == pd || cd.ends_with(&format!(".{pd}")),
        (Some(_), None) => false,
    }
}

fn host_within(c: &HostRule, p: &HostRule) -> bool {
    pattern_within(&c.pattern, &p.pattern)
        && ports_within(&c.ports, &p.ports)
        && proto_within(c.protocol, p.protocol)
}

fn fmt_ports(ports: &[PortRange]) -> String {
    if ports.is_empty() {
        return "all ports".into();
    }
    let v: Vec<String> = ports
        .iter()
        .map(|p| if p.lo == p.hi { p.lo.to_string() } else { format!("{}-{}", p.lo, p.hi) })
        .collect();
    format!("port {}", v.join(","))
}

/// Checks that `child` (a call's scope) is no wider than `parent` (its task's or parent
/// call's scope), section by section; the first widening found is the error.
pub fn check(parent: &Scope, child: &Scope) -> Result<(), Widening> {
    if parent.mode == Mode::Enforce && child.mode != Mode::Enforce {
        return widen("mode", "the parent enforces; a call of it cannot only audit");
    }
    paths("exec.allow", &parent.exec_allow, &child.exec_allow)?;
    paths("files.read", &parent.read, &child.read)?;
    paths("files.write", &parent.write, &child.write)?;
    for d in &parent.deny {
        if !child.deny.iter().any(|c| under(d, c)) {
            return widen(
                "files.deny",
                format!("{} is denied by the parent and not by the call", d.display()),
            );
        }
    }
    for s in &child.secrets {
        if let Some(i) = &s.issue {
            return widen(
                "secrets",
                format!(
                    "{:?} is issued by the call; a call issues no secrets (the task's are in its reach under the \
                     task's tools)",
                    i.name
                ),
            );
        }
    }
    for ps in parent.secrets.iter().filter(|s| s.issue.is_none()) {
        let Some(cs) = child.secrets.iter().find(|c| c.issue.is_none() && c.path == ps.path) else {
            return widen(
                "secrets",
                format!("{} is guarded by the parent and not by the call", ps.path.display()),
            );
        };
        if let Some(t) = cs.tools.iter().find(|t| !ps.tools.contains(t)) {
            return widen(
                "secrets",
                format!("{} may open {} in the call, not in the parent", t.display(), ps.path.display()),
            );
        }
    }
    if let Some(pe) = &parent.egress {
        let Some(ce) = &child.egress else {
            return widen("network.egress", "the parent restricts egress and the call does not");
        };
        for c in ce {
            if !pe.iter().any(|p| rule_within(c, p)) {
                return widen(
                    "network.egress",
                    format!(
                        "{} ({}, {:?}) is not allowed by the parent",
                        c.net,
                        fmt_ports(&c.ports),
                        c.protocol
                    )
                    .to_lowercase(),
                );
            }
        }
        for c in &child.hosts {
            if !parent.hosts.iter().any(|p| host_within(c, p)) {
                return widen(
                    "network.egress",
                    format!("host {} ({}) is not allowed by the parent", c.pattern, fmt_ports(&c.ports)),
                );
            }
        }
    }
    if let (Some(pd), Some(cd)) = (&parent.dns, &child.dns) {
        for n in &cd.accept_private {
            if !pd.accept_private.iter().any(|p| p.contains(n)) {
                return widen("network.dns.accept_private", format!("{n} is not accepted by the parent"));
            }
        }
    }
    if let (Some(p), Some(c)) = (parent.process_limit, child.process_limit)
        && c > p
    {
        return widen("limits.processes", format!("{c} is more than the parent's {p}"));
    }
    if let (Some(p), Some(c)) = (parent.memory_limit, child.memory_limit)
        && c > p
    {
        return widen("limits.memory", format!("{c} bytes is more than the parent's {p}"));
    }
    if let Some(g) = child.grants.iter().find(|g| !parent.grants.contains(g)) {
        return widen("grant", format!("{g:?} is not granted to the parent"));
    }
    let extra = child.capabilities & !parent.capabilities;
    if extra != 0 {
        return widen("capabilities", format!("capability {} is not the parent's", extra.trailing_zeros()));
    }
    if let Some(pu) = parent.user
        && child.user != Some(pu)
    {
        return widen("user", format!("the parent runs as uid {}; the call must too", pu.0));
    }
    if parent.on_gap == OnGap::End && child.on_gap != OnGap::End {
        return widen("evidence.on_gap", "the parent ends on an evidence gap; the call must too");
    }
    if parent.intent_digest && !child.intent_digest {
        return widen("evidence.intent", "the parent records intents as digests only; the call must too");
    }
    Ok(())
}

/// A call's ttl: at most what is left of its parent's. `remaining`: the parent's time left
/// (`None`: no ttl). Returns the ttl the call gets.
pub fn ttl(
    remaining: Option<std::time::Duration>,
    asked: Option<std::time::Duration>,
) -> Result<Option<std::time::Duration>, Widening> {
    match (remaining, asked) {
        (Some(r), Some(a)) if a > r => Err(Widening {
            field: "ttl",
            what: format!("{}s is more than the {}s the parent has left", a.as_secs(), r.as_secs()),
        }),
        (Some(r), None) => Ok(Some(r)),
        (_, a) => Ok(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scope(body: &str) -> Scope {
        Scope::parse(&format!("version: 1\ntask: t\n{body}"), Path::new("s.yaml")).unwrap()
    }

    fn field(parent: &str, child: &str) -> Option<&'static str> {
        check(&scope(parent), &scope(child)).err().map(|w| w.field)
    }

    #[test]
    fn each_section_refuses_a_wider_call_and_names_the_field() {
        let p = "exec:\n  allow: [/usr/bin/sh, /usr/lib]\nfiles:\n  read: [/etc, /work]\n  write: [/work/out]\n  deny: [/work/secret]\nnetwork:\n  egress:\n    - {to: 10.0.0.0/8, ports: [443]}\n    - {host: '*.example.com', ports: [443]}\nlimits:\n  processes: 20\n  memory: 1GiB\ngrant: [ptrace]\ncapabilities: [net_bind_service]\nevidence:\n  on_gap: end\n  intent: digest\n";
        // The same scope is no wider.
        assert_eq!(field(p, p), None);
        let cases: &[(&str, &str)] = &[
            ("exec.allow", "/usr/bin/sh, /usr/bin/curl"),
            ("files.read", "/etc, /home"),
            ("files.write", "/work"),
            ("files.deny", ""),
            ("network.egress", "to: 10.0.0.0/7"),
            ("network.egress", "ports: [444]"),
            ("network.egress", "host: api.other.com"),
            ("limits.processes", "processes: 21"),
            ("limits.memory", "memory: 1025MiB"),
            ("grant", "grant: [ptrace, io-uring]"),
            ("capabilities", "capabilities: [net_bind_service, chown]"),
            ("evidence.on_gap", "on_gap: continue"),
            ("evidence.intent", "intent: text"),
        ];
        for (want, change) in cases {
            let child = match *want {
                "exec.allow" => p.replace("/usr/bin/sh, /usr/lib", change),
                "files.read" => p.replace("/etc, /work]", &format!("{change}]")),
                "files.write" => p.replace("write: [/work/out]", &format!("write: [{change}]")),
                "files.deny" => p.replace("  deny: [/work/secret]\n", ""),
                "network.egress" if change.starts_with("to:") => p.replace("to: 10.0.0.0/8", change),
                "network.egress" if change.starts_with("ports") => {
                    p.replace("ports: [443]}\n    - {host", "ports: [444]}\n    - {host")
                }
                "network.egress" => p.replace("host: '*.example.com'", change),
                "limits.processes" => p.replace("processes: 20", change),
                "limits.memory" => p.replace("memory: 1GiB", change),
                "grant" => p.replace("grant: [ptrace]", change),
                "capabilities" => p.replace("capabilities: [net_bind_service]", change),
                "evidence.on_gap" => p.replace("on_gap: end", change),
                _ => p.replace("intent: digest", change),
            };
            assert_ne!(child, p, "{want}: the test's edit did not apply");
            assert_eq!(field(p, &child), Some(*want), "{want} {change}:\n{child}");
        }
        // Removing a restriction the parent has widens too.
        assert_eq!(field(p, &p.replace("exec:\n  allow: [/usr/bin/sh, /usr/lib]\n", "")), Some("exec.allow"));
        assert_eq!(field("mode: enforce\n", "mode: audit\n"), Some("mode"));
        assert_eq!(field("user: {uid: 1000}\n", ""), Some("user"));
        // A smaller memory limit narrows; none keeps the parent's.
        assert_eq!(field(p, &p.replace("memory: 1GiB", "memory: 1024MiB")), None);
        assert_eq!(field(p, &p.replace("memory: 1GiB", "memory: 64MiB")), None);
        assert_eq!(field(p, &p.replace("  memory: 1GiB\n", "")), None);
    }

    #[test]
    fn narrower_calls_pass() {
        let p = "exec:\n  allow: [/usr/bin/sh, /usr/lib]\nfiles:\n  read: [/etc, /work]\nnetwork:\n  egress:\n    - {to: 10.0.0.0/8}\n    - {host: '*.example.com'}\n";
        let c = "exec:\n  allow: [/usr/bin/sh, /usr/lib/x/tool]\nfiles:\n  read: [/work/in]\n  write: [/work/in/out]\n  deny: [/work/in/private]\nnetwork:\n  egress:\n    - {to: 10.1.2.0/24, ports: [443], protocol: tcp}\n    - {host: api.example.com, ports: [443]}\n    - {host: '*.cdn.example.com'}\nlimits:\n  processes: 3\nmode: enforce\n";
        assert_eq!(check(&scope(p), &scope(c)), Ok(()));
        // An unrestricted parent takes any call scope.
        assert_eq!(check(&scope(""), &scope(c)), Ok(()));
        let w = check(&scope(p), &scope(&c.replace("/usr/lib/x/tool", "/usr/bin/curl"))).unwrap_err();
        assert_eq!(w.to_string(), "call scope widens exec.allow: /usr/bin/curl is not allowed by the parent");
    }

    #[test]
    fn ttls_nest() {
        use std::time::Duration as D;
        assert_eq!(ttl(None, None), Ok(None));
        assert_eq!(ttl(None, Some(D::from_secs(5))), Ok(Some(D::from_secs(5))));
        assert_eq!(ttl(Some(D::from_secs(9)), None), Ok(Some(D::from_secs(9))));
        assert_eq!(ttl(Some(D::from_secs(9)), Some(D::from_secs(3))), Ok(Some(D::from_secs(3))));
        assert_eq!(ttl(Some(D::from_secs(9)), Some(D::from_secs(10))).unwrap_err().field, "ttl");
    }

    #[test]
    fn host_patterns_nest() {
        assert!(pattern_within("api.x.com", "*.x.com"));
        assert!(pattern_within("*.a.x.com", "*.x.com"));
        assert!(pattern_within("API.X.com", "api.x.com"));
        assert!(!pattern_within("x.com", "*.x.com"));
        assert!(!pattern_within("*.x.com", "api.x.com"));
        assert!(!pattern_within("evilx.com", "*.x.com"));
        assert!(!pattern_within("*.evilx.com", "*.x.com"));
    }

    fn arb_paths() -> impl Strategy<Value = Option<Vec<PathBuf>>> {
        let seg = prop::sample::select(vec!["a", "b", "c"]);
        let path = prop::collection::vec(seg, 1..4).prop_map(|v| PathBuf::from(format!("/{}", v.join("/"))));
        prop::option::of(prop::collection::vec(path, 0..4))
    }

    proptest! {
        /// Whatever the lists, a call that passes grants no path its parent does not, and
        /// narrowing is transitive (a chain of passing calls passes against the task).
        #[test]
        fn passing_calls_grant_nothing_new(p in arb_paths(), c in arb_paths(), g in arb_paths(), probe in arb_paths()) {
            let allowed = |l: &Option<Vec<PathBuf>>, x: &Path| l.as_ref().is_none_or(|v| v.iter().any(|e| x.starts_with(e)));
            if paths("files.read", &p, &c).is_ok() {
                for x in probe.iter().flatten() {
                    prop_assert!(!allowed(&c, x) || allowed(&p, x), "{x:?} allowed by {c:?}, not by {p:?}");
                }
                if paths("files.read", &c, &g).is_ok() {
                    prop_assert!(paths("files.read", &p, &g).is_ok());
                }
            }
            prop_assert!(paths("files.read", &p, &p).is_ok());
        }

        #[test]
        fn passing_egress_rules_reach_nothing_new(
            pn in 0u8..=32, cn in 0u8..=32, a in any::<u32>(), b in any::<u32>(), probe in any::<u32>(),
            plo in 1u16..100, phi in 100u16..200, clo in 1u16..200, cw in 0u16..50, port in 1u16..300,
        ) {
            let rule = |addr: u32, len: u8, ports: Vec<PortRange>| EgressRule {
                net: ipnet::IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(addr), len).unwrap().trunc()),
                ports,
                protocol: Protocol::Any,
            };
            let p = rule(a, pn, vec![PortRange { lo: plo, hi: phi }]);
            let c = rule(b, cn, vec![PortRange { lo: clo, hi: clo.saturating_add(cw) }]);
            if rule_within(&c, &p) {
                let ip = ipnet::IpNet::V4(ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(probe), 32).unwrap());
                let reaches = |r: &EgressRule| r.net.contains(&ip) && r.ports.iter().any(|pr| pr.lo <= port && port <= pr.hi);
                prop_assert!(!reaches(&c) || reaches(&p));
            }
        }
    }
}
