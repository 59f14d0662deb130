//! The scope file as written: serde types with `deny_unknown_fields`. Scalar values are
//! validated while they are parsed (newtypes with `try_from`), so an error points at the line
//! and column of the offending value.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

/// A scope file (`version: 1`). Omitted sections mean "not restricted", except the protected
/// defaults (see `docs/scope.md`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    /// Format version; must be 1.
    pub version: u32,
    /// Task name; each run gets a unique task id `<task>-<16 hex>`.
    pub task: TaskName,
    /// `enforce` (default) or `audit`.
    #[serde(default)]
    pub mode: Option<super::Mode>,
    /// The task is ended when it has run this long (`15m`, `1h`, ...).
    #[serde(default)]
    pub ttl: Option<Ttl>,
    /// Which executables may run.
    #[serde(default)]
    pub exec: Option<RawExec>,
    /// Which files may be read and written.
    #[serde(default)]
    pub files: Option<RawFiles>,
    /// Secrets and the tools that may open them.
    #[serde(default)]
    pub secrets: Vec<RawSecret>,
    /// Where the task may connect.
    #[serde(default)]
    pub network: Option<RawNetwork>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// Protected defaults this task is explicitly granted.
    #[serde(default)]
    pub grant: Vec<Grant>,
    /// What to do when the task's evidence has a gap.
    #[serde(default)]
    pub evidence: Option<RawEvidence>,
    /// Capabilities the task's processes keep (default: none). Names as in capabilities(7),
    /// lower case, without `cap_`: `net_bind_service`, `chown`, ...
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Run the task's processes as this user instead of root.
    #[serde(default)]
    pub user: Option<RawUser>,
}

/// `user:` — the uid (and gid) the task's processes run as.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub uid: u32,
    /// Default: the same number as `uid`.
    #[serde(default)]
    pub gid: Option<u32>,
}

/// `CAP_NET_RAW`.
pub const CAP_NET_RAW: u32 = 13;

/// Capabilities a scope may grant, with their numbers (capabilities(7)).
pub const CAPABILITIES: &[(&str, u32)] = &[
    ("chown", 0),
    ("dac_override", 1),
    ("fowner", 3),
    ("fsetid", 4),
    ("kill", 5),
    ("setgid", 6),
    ("setuid", 7),
    ("linux_immutable", 9),
    ("net_bind_service", 10),
    ("net_broadcast", 11),
    ("net_raw", 13),
    ("ipc_lock", 14),
    ("ipc_owner", 15),
    ("sys_chroot", 18),
    ("sys_nice", 23),
    ("sys_resource", 24),
    ("sys_tty_config", 26),
    ("lease", 28),
    ("audit_write", 29),
    ("wake_alarm", 35),
    ("block_suspend", 36),
];

/// Capabilities no scope may grant, and why: each reaches past the sandbox.
pub const REFUSED_CAPABILITIES: &[(&str, &str)] = &[
    ("dac_read_search", "open_by_handle_at reaches files past the task's mount namespace"),
    ("setpcap", "it changes capability sets"),
    ("sys_module", "it loads kernel code"),
    ("sys_rawio", "it reaches raw devices and I/O ports"),
    ("sys_ptrace", "it traces the sandbox's own init"),
    ("sys_pacct", "it switches node-wide process accounting"),
    ("sys_admin", "it administers the node (mounts, namespaces, devices)"),
    ("sys_boot", "it reboots the node"),
    ("sys_time", "it sets the node's clock"),
    ("mknod", "device nodes reach raw disks and memory"),
    ("net_admin", "it reconfigures the node's network"),
    ("audit_control", "it changes the node's audit rules"),
    ("audit_read", "it reads every task's audit records"),
    ("setfcap", "it plants file capabilities for programs outside the task"),
    ("mac_override", "it overrides the node's MAC policy"),
    ("mac_admin", "it changes the node's MAC policy"),
    ("syslog", "it reads and clears the node's kernel log"),
    ("perfmon", "it samples other processes"),
    ("bpf", "it loads BPF programs and reads maps"),
    ("checkpoint_restore", "it restores processes with chosen ids"),
];

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawEvidence {
    /// `continue` (default: record a `gap` and go on) or `end` (fail closed: end the task).
    #[serde(default)]
    pub on_gap: OnGap,
    /// `text` (default: `call_start.intent` carries the intent's text and digest) or `digest`
    /// (the digest only).
    #[serde(default)]
    pub intent: IntentMode,
    /// Longest intent text kept in `call_start.intent.text`, in bytes (default 4096).
    #[serde(default)]
    pub intent_max: Option<IntentMax>,
}

/// What `call_start.intent` keeps of a call's intent.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IntentMode {
    #[default]
    Text,
    Digest,
}

/// `evidence.intent_max`: 1 byte to 1 MiB.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "u64")]
pub struct IntentMax(pub usize);
impl TryFrom<u64> for IntentMax {
    type Error = String;
    fn try_from(n: u64) -> Result<Self, String> {
        if (1..=1 << 20).contains(&n) {
            Ok(IntentMax(n as usize))
        } else {
            Err(format!("intent_max {n} must be from 1 to 1048576 (bytes)"))
        }
    }
}

/// Policy for evidence gaps.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnGap {
    #[default]
    Continue,
    End,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    /// Executable files (symlinks are resolved when the task starts; identity is the file,
    /// not the name).
    pub allow: Vec<AbsPath>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    /// Allowlist of files and subtrees that may be read; omitted = anything but protected paths.
    #[serde(default)]
    pub read: Option<Vec<AbsPath>>,
    /// Allowlist of files and subtrees that may be written or created; omitted = anything but
    /// protected paths.
    #[serde(default)]
    pub write: Option<Vec<AbsPath>>,
    /// Always denied (read, write, execute); wins over everything.
    #[serde(default)]
    pub deny: Vec<AbsPath>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// An existing secret file to guard. Either `path`, or `name` + `from` (issued).
    #[serde(default)]
    pub path: Option<AbsPath>,
    /// Issue a per-task copy under this name (the node daemon materialises it on a per-task
    /// tmpfs and destroys it at task end).
    #[serde(default)]
    pub name: Option<SecretName>,
    /// Where an issued secret's value comes from: `file:/abs/path` (a per-task copy, never
    /// revoked), `exec:/abs/issuer ARGS...` (a command run at task start; argv split like
    /// words, no shell) or `token` (a JWT Warden signs with the node key).
    #[serde(default)]
    pub from: Option<SecretSource>,
    /// The environment variable that tells the task where an issued `file:` secret is
    /// (default `WARDEN_SECRET_<NAME>`, upper-cased, `-` and `.` as `_`).
    #[serde(default)]
    pub env: Option<EnvName>,
    /// `exec:` only: the command that revokes what the mint issued, run at task end;
    /// `{id}` is replaced by the id the mint printed.
    #[serde(default)]
    pub revoke: Option<CommandLine>,
    /// `token` only: the token's `aud`.
    #[serde(default)]
    pub audience: Option<Audience>,
    /// `exec:` and `token`: how long one credential lives (default 1h; never past the
    /// task's ttl).
    #[serde(default)]
    pub ttl: Option<Ttl>,
    /// `exec:` and `token`: reissue this often during the task; the old credential is
    /// revoked after a grace period.
    #[serde(default)]
    pub rotate: Option<Ttl>,
    /// Only these executables may open it, and only during the task.
    pub tools: Vec<AbsPath>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// Allowed destinations; anything else is refused.
    #[serde(default)]
    pub egress: Vec<RawEgress>,
    /// How names of `host` rules are resolved (egress by name).
    #[serde(default)]
    pub dns: Option<RawDns>,
}

/// `network.dns`: Warden's resolver for the task.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Where queries for granted names are forwarded (`127.0.0.53`, `[::1]:5353`); default:
    /// the `nameserver` lines of the node's `/etc/resolv.conf`.
    #[serde(default)]
    pub upstream: Vec<Upstream>,
    /// Answers in these private, loopback, link-local or metadata ranges are kept; all other
    /// such answers are dropped (DNS rebinding). Keeping an answer grants nothing by itself.
    #[serde(default)]
    pub accept_private: Vec<Cidr>,
    /// A resolved address stays granted at least this long (default 30s).
    #[serde(default)]
    pub min_ttl: Option<Ttl>,
    /// ... and at most this long (default 1h), whatever the record's TTL says.
    #[serde(default)]
    pub max_ttl: Option<Ttl>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    /// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address. Either `to` or `host`.
    #[serde(default)]
    pub to: Option<Cidr>,
    /// A host name (`api.github.com`) or `*.` and a domain (`*.pythonhosted.org`: one or more
    /// labels under it, not the domain itself). Either `to` or `host`.
    #[serde(default)]
    pub host: Option<HostPattern>,
    /// Ports or ranges (`443`, `"8000-8100"`); omitted = all ports.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// `tcp`, `udp` or `any` (default).
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    #[default]
    Any,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// At most this many processes in the sandbox at once.
    #[serde(default)]
    pub processes: Option<ProcessLimit>,
    /// At most this much memory for the sandbox's processes together (`"512MiB"`).
    #[serde(default)]
    pub memory: Option<MemoryLimit>,
}

/// Protected defaults a scope can grant back.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Grant {
    /// Let the task use io_uring (`io_uring_setup`).
    IoUring,
    /// Let the task use ptrace inside its own sandbox.
    Ptrace,
    /// Let the task read the well-known credential locations (`~/.ssh`, `~/.aws`, ...).
    Credentials,
    /// Let the task open raw IP and ICMP sockets (and any other IPv4/IPv6 socket type or
    /// protocol beyond TCP and UDP). They pass no egress hook: `network.egress` does not judge them.
    /// Implies the `net_raw` capability (raw sockets need it).
    NetRaw,
    /// Let the task open `AF_PACKET` sockets (send and sniff link-layer frames).
    NetPacket,
    /// Let the task open netlink sockets of every protocol (`NETLINK_ROUTE` is always allowed).
    NetNetlink,
    /// Let the task open sockets of every other address family (`AF_VSOCK`, `AF_KEY`, `AF_ALG`, ...).
    NetOther,
    /// Let the task use `perf_event_open`.
    PerfEvents,
    /// Let the task manage keys (`add_key`, `request_key`, `keyctl`).
    Keyring,
    /// Let the task create user namespaces (`unshare`/`clone` with `CLONE_NEWUSER`, and
    /// `clone3`): sandboxes of its own (bubblewrap, Chromium's sandbox, rootless containers).
    /// Inside one a process holds every capability over the namespaces it creates there,
    /// which reaches kernel code (network configuration, mounts) a task cannot otherwise.
    Userns,
    /// Let the task open node devices (`/dev` beyond the pseudo-devices, terminals and shared
    /// memory every program uses): disks, input devices, `/dev/kmsg`, ...
    Devices,
    /// Let the task write the node's programs, libraries, configuration and state (`/usr`,
    /// `/etc`, `/boot`, `/var/lib`, `/var/spool`, `/var/log`, ...) and its users' login
    /// files: installing packages on the node. What it writes there outlives the task and
    /// runs outside its sandbox.
    System,
    /// Let the task connect to the node's service control sockets (container runtimes, the
    /// init's private socket, the system and user message buses, ...): through them a root
    /// client starts processes outside every sandbox.
    NodeServices,
}

macro_rules! string_newtype {
    ($name:ident, $inner:ty, $parse:expr) => {
        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                let f: fn(&str) -> Result<$inner, String> = $parse;
                f(&s).map($name)
            }
        }
    };
}

/// A task name: 1-64 of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct TaskName(pub String);
string_newtype!(TaskName, String, |s| {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("task name {s:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"))
    }
});

/// An absolute path without `..` components.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "String")]
pub struct AbsPath(pub PathBuf);
string_newtype!(AbsPath, PathBuf, |s| {
    if !s.starts_with('/') {
        return Err(format!("{s:?} is not an absolute path; write it from the root, e.g. /usr/bin/git"));
    }
    if s.split('/').any(|c| c == "..") {
        return Err(format!("{s:?} contains `..`; write the path it means"));
    }
    if s.contains('\0') {
        return Err("a path cannot contain NUL".into());
    }
    Ok(PathBuf::from(s))
});

/// A network: CIDR or single address.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct Cidr(pub IpNet);
string_newtype!(Cidr, IpNet, |s| {
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!("{s:?} has host bits set; did you mean {}?", net.trunc()));
        }
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!("{s:?} is not a CIDR or an IP address; write e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32"))
});

/// A host name or a wildcard `*.domain`, lower-cased, without a trailing dot.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "String")]
pub struct HostPattern(pub String);
string_newtype!(HostPattern, String, |s| {
    let lower = s.trim_end_matches('.').to_ascii_lowercase();
    let (wild, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if name.len() > 253 || name.is_empty() {
        return Err(format!("host {s:?} must be a name of 1 to 253 characters, e.g. api.github.com"));
    }
    for label in name.split('.') {
        if label.contains('*') {
            return Err(format!(
                "host {s:?}: `*` may only be the whole first label (`*.example.org`: one or more labels under \
                 example.org); write the names out, or the wildcard first"
            ));
        }
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "host {s:?}: label {label:?} must be 1-63 letters, digits, '-' or '_', not starting or ending \
                 with '-'"
            ));
        }
    }
    if wild && !name.contains('.') {
        return Err(format!(
            "host {s:?} would grant every name under a top-level domain; name a domain (`*.example.org`)"
        ));
    }
    Ok(lower.clone())
});

/// A resolver address, with an optional port (default 53): `127.0.0.53`, `10.0.0.2:5353`,
/// `::1`, `[::1]:5353`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct Upstream(pub std::net::SocketAddr);
string_newtype!(Upstream, std::net::SocketAddr, |s| {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    s.parse::<std::net::SocketAddr>().map_err(|_| {
        format!("{s:?} is not a resolver address; write e.g. 127.0.0.53, 10.0.0.2:5353 or [::1]:5353")
    })
});

/// An inclusive port range.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "PortSpec")]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// A port as written: a number or a `"lo-hi"` string.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Num(u64),
    Str(String),
}

impl TryFrom<PortSpec> for PortRange {
    type Error = String;
    fn try_from(p: PortSpec) -> Result<Self, String> {
        let port = |v: &str| -> Result<u16, String> {
            match v.trim().parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                _ => Err(format!("port {v:?} must be a number from 1 to 65535")),
            }
        };
        match p {
            PortSpec::Num(n) => {
                let v = port(&n.to_string())?;
                Ok(PortRange { lo: v, hi: v })
            }
            PortSpec::Str(s) => {
                let (lo, hi) = match s.split_once('-') {
                    Some((a, b)) => (port(a)?, port(b)?),
                    None => {
                        let v = port(&s)?;
                        (v, v)
                    }
                };
                if lo > hi {
                    return Err(format!("port range {s:?} is reversed; write \"{hi}-{lo}\""));
                }
                Ok(PortRange { lo, hi })
            }
        }
    }
}

/// A time to live.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct Ttl(pub Duration);
string_newtype!(Ttl, Duration, |s| {
    let d = crate::util::parse_duration(s)?;
    if d.is_zero() { Err("ttl must be longer than 0".into()) } else { Ok(d) }
});

/// A process limit (at least 1).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "u64")]
pub struct ProcessLimit(pub u32);
impl TryFrom<u64> for ProcessLimit {
    type Error = String;
    fn try_from(v: u64) -> Result<Self, String> {
        if (1..=1_000_000).contains(&v) {
            Ok(ProcessLimit(v as u32))
        } else {
            Err(format!("limits.processes {v} must be from 1 to 1000000"))
        }
    }
}

/// A memory limit in bytes, written as a whole number of `KiB`, `MiB`, `GiB` or `TiB`
/// (`"512MiB"`): nothing else (no `M`, `MB`, fractions or bare numbers, whose unit a reader
/// would have to guess), from 16 MiB (less cannot start an interpreter) to 1024 TiB.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct MemoryLimit(pub u64);
string_newtype!(MemoryLimit, u64, |s| {
    const MIN: u64 = 16 << 20;
    const MAX: u64 = 1 << 50;
    let bad =
        || format!("limits.memory {s:?} must be a whole number of KiB, MiB, GiB or TiB, e.g. \"512MiB\"");
    let (num, shift) = [("KiB", 10), ("MiB", 20), ("GiB", 30), ("TiB", 40)]
        .iter()
        .find_map(|(u, sh)| s.strip_suffix(u).map(|n| (n, *sh)))
        .ok_or_else(bad)?;
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) || (num.len() > 1 && num.starts_with('0')) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    match n.checked_shl(shift).filter(|v| v >> shift == n) {
        Some(v) if (MIN..=MAX).contains(&v) => Ok(v),
        _ => Err(format!("limits.memory {s:?} must be from 16MiB to 1024TiB")),
    }
});

/// A secret's name: 1-64 of `[A-Za-z0-9._-]`, not starting with `.`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct SecretName(pub String);
string_newtype!(SecretName, String, |s| {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "secret name {s:?} must be 1-64 characters of letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
});

/// Where an issued secret comes from.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum SecretSource {
    /// `file:/abs/path`: the value is copied from this file.
    File(PathBuf),
    /// `exec:/abs/cmd ARGS...`: the issuer command's argv.
    Exec(Vec<String>),
    /// `token`: a JWT minted and signed by Warden.
    Token,
}
impl TryFrom<String> for SecretSource {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("file:") {
            return AbsPath::try_from(p.to_string()).map(|a| SecretSource::File(a.0));
        }
        if let Some(c) = s.strip_prefix("exec:") {
            return CommandLine::try_from(c.to_string()).map(|c| SecretSource::Exec(c.0));
        }
        if s == "token" {
            return Ok(SecretSource::Token);
        }
        Err(format!(
            "{s:?} is not a secret source; write file:/path/to/value, exec:/path/to/issuer ARGS... or token"
        ))
    }
}

/// A command line: an absolute program and its arguments, split like shell words (quotes
/// respected), never run by a shell.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct CommandLine(pub Vec<String>);
string_newtype!(CommandLine, Vec<String>, |s| {
    let argv = shlex::split(s).ok_or_else(|| format!("{s:?}: unbalanced quotes or a trailing backslash"))?;
    match argv.first() {
        Some(p) if p.starts_with('/') => Ok(argv),
        Some(p) => Err(format!("{p:?} must be an absolute path (commands are not looked up in PATH)")),
        None => Err("the command is empty; write /path/to/program ARGS...".into()),
    }
});

/// A token audience: 1-512 printable ASCII characters.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct Audience(pub String);
string_newtype!(Audience, String, |s| {
    if !s.is_empty() && s.len() <= 512 && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        Err(format!("audience {s:?} must be 1-512 printable characters without spaces"))
    }
});

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct EnvName(pub String);
string_newtype!(EnvName, String, |s| {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not an environment variable name; use letters, digits and '_'"))
    }
});

/// A capability name from `capabilities:`, validated against [`CAPABILITIES`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(try_from = "String")]
pub struct Capability(pub u32);
string_newtype!(Capability, u32, |s| {
    let name = s.to_ascii_lowercase();
    let name = name.strip_prefix("cap_").unwrap_or(&name);
    if let Some((_, nr)) = CAPABILITIES.iter().find(|(n, _)| *n == name) {
        return Ok(*nr);
    }
    if let Some((_, why)) = REFUSED_CAPABILITIES.iter().find(|(n, _)| *n == name) {
        return Err(format!("capability {name} cannot be granted to a task: {why}"));
    }
    let known: Vec<&str> = CAPABILITIES.iter().map(|(n, _)| *n).collect();
    Err(format!("{s:?} is not a capability a task may hold; write one of {}", known.join(", ")))
});
