//! What a scope granted beside what the task used: every grant marked used or not, from the
//! records, so unused grants show up as least-privilege hints.
//!
//! What a log can show depends on the record kinds: every exec and every connect/sendmsg is
//! recorded, so `exec.allow` and `network.egress` grants are judged exactly. Allowed file opens
//! are not recorded (`docs/events.md`), so a file root or secret without a recorded use is
//! "no recorded use", a weaker hint than "unused".
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::{
    loader::user_dev_to_kernel,
    scope::{EgressRule, Scope, raw::Protocol},
};

/// Whether a grant was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// This many records used it.
    Used(usize),
    /// Every use would have been recorded, and none was.
    Unused,
    /// No record shows a use, but allowed uses of this kind are not recorded.
    NoRecordedUse,
}

/// One grant of the scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The scope field: `exec.allow`, `network.egress`, `files.read`, `files.write`, `secrets`.
    pub section: &'static str,
    /// The entry as written (an egress rule as `net ports proto`).
    pub entry: String,
    pub used: Use,
    /// Refused or audited attempts attributed to this grant's subject (secrets).
    pub refused: usize,
}

/// How paths are resolved on this machine (tests substitute their own).
pub trait Resolve {
    /// `(st_dev, inode)` of the file a path names now.
    fn identity(&self, path: &Path) -> Option<(u64, u64)>;
    /// The path with symlinks resolved.
    fn canonical(&self, path: &Path) -> Option<PathBuf>;
}

/// The real file system.
pub struct Filesystem;

impl Resolve for Filesystem {
    fn identity(&self, path: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path).ok()?;
        Some((md.dev(), md.ino()))
    }
    fn canonical(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
}

fn str_of<'a>(r: &'a Value, k: &str) -> Option<&'a str> {
    r.get(k).and_then(Value::as_str)
}

/// Records whose action took place (allowed, or audited: it went through in audit mode).
fn went_through(r: &Value) -> bool {
    matches!(str_of(r, "decision"), Some("allow" | "audit"))
}

fn under(path: &str, roots: &[PathBuf]) -> bool {
    let p = Path::new(path);
    roots.iter().any(|root| p.starts_with(root))
}

/// The root as written and as resolved here (a symlinked root matches either spelling).
fn spellings(root: &Path, fs: &dyn Resolve) -> Vec<PathBuf> {
    let mut v = vec![root.to_path_buf()];
    if let Some(c) = fs.canonical(root)
        && c != root
    {
        v.push(c);
    }
    v
}

fn egress_label(r: &EgressRule) -> String {
    let ports = if r.ports.is_empty() {
        "all ports".to_string()
    } else {
        let p: Vec<String> = r
            .ports
            .iter()
            .map(|p| if p.lo == p.hi { p.lo.to_string() } else { format!("{}-{}", p.lo, p.hi) })
            .collect();
        format!("ports {}", p.join(","))
    };
    let proto = match r.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Any => "any protocol",
    };
    format!("{} {ports} {proto}", r.net)
}

fn egress_matches(r: &EgressRule, addr: IpAddr, port: u16, proto: &str) -> bool {
    let proto_ok = match r.protocol {
        Protocol::Any => true,
        Protocol::Tcp => proto == "tcp",
        Protocol::Udp => proto == "udp",
    };
    // An IPv4-mapped IPv6 address is matched by IPv4 rules too, as in the kernel's trie.
    let v4 = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    let in_net = r.net.contains(&addr) || v4.is_some_and(|a| r.net.contains(&a));
    proto_ok && in_net && (r.ports.is_empty() || r.ports.iter().any(|p| p.lo <= port && port <= p.hi))
}

/// Every grant of `scope`, marked from `records`.
pub fn scope_usage(scope: &Scope, records: &[Value], fs: &dyn Resolve) -> Vec<Grant> {
    let mut c = UsageCounter::new(scope, fs);
    for r in records {
        c.observe(r);
    }
    c.finish()
}

/// An `exec.allow` entry being counted: its (st_dev, inode) here, its spellings, its uses.
type ExecEntry = (Option<(u64, u64)>, Vec<PathBuf>, usize);

/// The grants of a scope, marked one record at a time (a log is read once, in order, and
/// not kept).
pub struct UsageCounter<'a> {
    scope: &'a Scope,
    /// Per `exec.allow` entry: its identity here, its spellings, the execs that used it.
    exec: Vec<ExecEntry>,
    /// Per egress rule: the connects/datagrams it decided.
    egress: Vec<usize>,
    /// Per `files.read` and `files.write` root: its spellings, the recorded uses under it.
    files: [Vec<(Vec<PathBuf>, usize)>; 2],
    /// Per secret: its spellings, allowed opens, refused or audited opens.
    secrets: Vec<(Vec<PathBuf>, usize, usize)>,
}

impl<'a> UsageCounter<'a> {
    /// Resolves the scope's paths with `fs` once.
    pub fn new(scope: &'a Scope, fs: &dyn Resolve) -> Self {
        let exec = scope
            .exec_allow
            .iter()
            .flatten()
            .map(|entry| (fs.identity(entry), spellings(entry, fs), 0))
            .collect();
        let roots = |r: &Option<Vec<PathBuf>>| -> Vec<(Vec<PathBuf>, usize)> {
            r.iter().flatten().map(|root| (spellings(root, fs), 0)).collect()
        };
        UsageCounter {
            scope,
            exec,
            egress: vec![0; scope.egress.as_ref().map_or(0, Vec::len)],
            files: [roots(&scope.read), roots(&scope.write)],
            secrets: scope.secrets.iter().map(|s| (spellings(&s.path, fs), 0, 0)).collect(),
        }
    }

    /// Marks what one record used.
    pub fn observe(&mut self, r: &Value) {
        let kind = str_of(r, "kind");
        if kind == Some("exec") && went_through(r) {
            for (id, names, count) in &mut self.exec {
                let by_id = match (*id, r["dev"].as_u64(), r["ino"].as_u64()) {
                    (Some((dev, ino)), Some(rdev), Some(rino)) => {
                        ino == rino && user_dev_to_kernel(dev) == user_dev_to_kernel(rdev)
                    }
                    _ => false,
                };
                if by_id
                    || ["path", "exe"]
                        .iter()
                        .filter_map(|k| str_of(r, k))
                        .any(|p| names.iter().any(|n| Path::new(p) == n))
                {
                    *count += 1;
                }
            }
        }
        if let Some(rules) = &self.scope.egress
            && matches!(kind, Some("connect" | "sendmsg"))
            && went_through(r)
            && let (Some(addr), Some(port), Some(proto)) = (
                str_of(r, "addr").and_then(|a| a.parse::<IpAddr>().ok()),
                r["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
                str_of(r, "protocol"),
            )
            // The kernel decides by the longest matching prefix: credit that rule.
            && let Some((i, _)) = rules
                .iter()
                .enumerate()
                .filter(|(_, rule)| egress_matches(rule, addr, port, proto))
                .max_by_key(|(_, rule)| rule.net.prefix_len())
        {
            self.egress[i] += 1;
        }
        // Files: exec'd and mapped files are recorded; allowed opens are not.
        if went_through(r)
            && let Some(path) = str_of(r, "path")
        {
            for (write, roots) in [false, true].into_iter().zip(&mut self.files) {
                let counts = match kind {
                    Some("exec" | "mmap") => !write,
                    // f_mode: FMODE_READ 0x1, FMODE_WRITE 0x2.
                    Some("open") => r["arg"].as_u64().is_some_and(|m| m & if write { 2 } else { 1 } != 0),
                    _ => false,
                };
                if counts {
                    for (names, count) in roots.iter_mut() {
                        if under(path, names) {
                            *count += 1;
                        }
                    }
                }
            }
        }
        if kind == Some("open")
            && let Some(path) = str_of(r, "path")
        {
            for (names, used, refused) in &mut self.secrets {
                if names.iter().any(|n| Path::new(path) == n) {
                    match str_of(r, "decision") {
                        Some("allow") => *used += 1,
                        Some("deny" | "audit") => *refused += 1,
                        _ => {}
                    }
                }
            }
        }
    }

    /// Every grant of the scope, marked.
    pub fn finish(self) -> Vec<Grant> {
        let scope = self.scope;
        let mut out = Vec::new();
        for (entry, (_, _, count)) in scope.exec_allow.iter().flatten().zip(self.exec) {
            out.push(Grant {
                section: "exec.allow",
                entry: entry.display().to_string(),
                used: if count > 0 { Use::Used(count) } else { Use::Unused },
                refused: 0,
            });
        }
        for (rule, count) in scope.egress.iter().flatten().zip(self.egress) {
            out.push(Grant {
                section: "network.egress",
                entry: egress_label(rule),
                used: if count > 0 { Use::Used(count) } else { Use::Unused },
                refused: 0,
            });
        }
        let [read, write] = self.files;
        for (section, roots, counts) in
            [("files.read", &scope.read, read), ("files.write", &scope.write, write)]
        {
            for (root, (_, count)) in roots.iter().flatten().zip(counts) {
                out.push(Grant {
                    section,
                    entry: root.display().to_string(),
                    used: if count > 0 { Use::Used(count) } else { Use::NoRecordedUse },
                    refused: 0,
                });
            }
        }
        for (secret, (_, used, refused)) in scope.secrets.iter().zip(self.secrets) {
            let tools: Vec<String> = secret.tools.iter().map(|t| t.display().to_string()).collect();
            out.push(Grant {
                section: "secrets",
                entry: format!("{} (tools: {})", secret.path.display(), tools.join(", ")),
                used: if used > 0 { Use::Used(used) } else { Use::NoRecordedUse },
                refused,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fake;
    impl Resolve for Fake {
        fn identity(&self, path: &Path) -> Option<(u64, u64)> {
            match path.to_str()? {
                "/bin/sh" | "/usr/bin/dash" => Some((2049, 10)),
                "/usr/bin/true" => Some((2049, 11)),
                _ => None,
            }
        }
        fn canonical(&self, path: &Path) -> Option<PathBuf> {
            Some(match path.to_str()? {
                "/bin/sh" => PathBuf::from("/usr/bin/dash"),
                "/lib" => PathBuf::from("/usr/lib"),
                p => PathBuf::from(p),
            })
        }
    }

    const SCOPE: &str = "\
version: 1
task: t
exec:
  allow: [/bin/sh, /usr/bin/true, /usr/bin/curl]
files:
  read: [/lib, /workspace]
  write: [/workspace/out]
secrets:
  - path: /run/secrets/gh
    tools: [/usr/bin/curl]
network:
  egress:
    - to: 10.0.0.0/8
      ports: [443]
      protocol: tcp
    - to: 10.1.0.0/16
    - to: 192.168.0.0/16
";

    #[test]
    fn marks_each_grant_used_or_not() {
        let scope = Scope::parse(SCOPE, Path::new("s.yaml")).unwrap();
        let records = vec![
            // Identity, not name: exec'd as /usr/bin/sh, same file as /bin/sh.
            json!({"kind": "exec", "decision": "allow", "path": "/usr/bin/sh", "dev": 2049, "ino": 10}),
            json!({"kind": "exec", "decision": "allow", "path": "/usr/bin/true", "dev": 2049, "ino": 11}),
            json!({"kind": "exec", "decision": "deny", "path": "/usr/bin/curl"}),
            json!({"kind": "mmap", "decision": "allow", "path": "/usr/lib/x86_64-linux-gnu/libc.so.6"}),
            json!({"kind": "connect", "decision": "allow", "addr": "10.1.2.3", "port": 443, "protocol": "tcp"}),
            json!({"kind": "connect", "decision": "deny", "addr": "192.168.1.1", "port": 80, "protocol": "tcp"}),
            json!({"kind": "open", "decision": "deny", "path": "/run/secrets/gh", "arg": 1}),
        ];
        let g = scope_usage(&scope, &records, &Fake);
        let find = |section: &str, entry: &str| {
            g.iter().find(|x| x.section == section && x.entry.starts_with(entry)).unwrap().clone()
        };
        assert_eq!(find("exec.allow", "/bin/sh").used, Use::Used(1));
        assert_eq!(find("exec.allow", "/usr/bin/true").used, Use::Used(1));
        assert_eq!(find("exec.allow", "/usr/bin/curl").used, Use::Unused, "a refused exec is no use");
        // Longest prefix wins: 10.1.0.0/16 decided, not 10.0.0.0/8.
        assert_eq!(find("network.egress", "10.0.0.0/8").used, Use::Unused);
        assert_eq!(find("network.egress", "10.1.0.0/16").used, Use::Used(1));
        assert_eq!(find("network.egress", "192.168.0.0/16").used, Use::Unused, "refused");
        assert_eq!(find("network.egress", "10.0.0.0/8").entry, "10.0.0.0/8 ports 443 tcp");
        assert_eq!(find("files.read", "/lib").used, Use::Used(1), "through the symlinked root");
        assert_eq!(find("files.read", "/workspace").used, Use::NoRecordedUse);
        assert_eq!(find("files.write", "/workspace/out").used, Use::NoRecordedUse);
        let s = find("secrets", "/run/secrets/gh");
        assert_eq!((s.used, s.refused), (Use::NoRecordedUse, 1));
        assert_eq!(s.entry, "/run/secrets/gh (tools: /usr/bin/curl)");
        assert_eq!(g.len(), 3 + 3 + 2 + 1 + 1);
    }

    #[test]
    fn an_unrestricted_scope_has_no_grants_to_mark() {
        let scope = Scope::parse("version: 1\ntask: t\n", Path::new("s.yaml")).unwrap();
        assert!(scope_usage(&scope, &[json!({"kind": "exec", "decision": "allow"})], &Fake).is_empty());
    }
}
