//! Task scopes: raw YAML ([`raw`]) → validated [`Scope`] → compiled kernel and sandbox
//! state ([`compile`]).
//!
//! Errors name the file, the line and column, the field and a fix; `warden scope check` and
//! `warden run` exit 2 on them.
pub mod compile;
pub mod file_rules;
pub mod narrow;
pub mod raw;
pub mod suggest;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;

use self::raw::{Grant, OnGap, PortRange, Protocol, RawScope, SecretSource};

/// Enforcement mode of a task: the scope's `mode:` (enforce when omitted), `--mode`, and what
/// records carry (`mode`, and decision `audit` for what enforce would have refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse out-of-scope actions.
    Enforce,
    /// Allow them, recording decision "audit".
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    /// The inverse of [`Mode::as_str`].
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "audit" => Ok(Mode::Audit),
            other => Err(format!("mode {other:?} is not enforce or audit")),
        }
    }
}

/// The scope file format version this build reads.
pub const SCOPE_VERSION: u32 = 1;

/// Errors reading or validating a scope file.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("{path}: cannot read scope file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, field: String, message: String },
    #[error("{path}:{line}: {field}: {message}")]
    Invalid { path: PathBuf, line: usize, field: String, message: String },
}

/// One egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    pub net: IpNet,
    /// Empty = all ports.
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
}

/// One egress rule by name: what the resolver answers for a matching name is granted on these
/// ports and protocol, for the answer's TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    /// `api.github.com`, or `*.pythonhosted.org` (one or more labels under it).
    pub pattern: String,
    /// Empty = all ports.
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
}

impl HostRule {
    /// Whether `name` (any case, with or without the trailing dot) is granted by this rule.
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self.pattern.strip_prefix("*.") {
            Some(domain) => {
                name.len() > domain.len() + 1
                    && name.as_bytes()[name.len() - domain.len() - 1] == b'.'
                    && name[name.len() - domain.len()..].eq_ignore_ascii_case(domain)
            }
            None => name.eq_ignore_ascii_case(&self.pattern),
        }
    }
}

/// Default lower bound on how long a resolved address stays granted.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(30);
/// Default upper bound.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);

/// `network.dns`, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Empty = the node's `/etc/resolv.conf` nameservers, read when the task starts.
    pub upstream: Vec<std::net::SocketAddr>,
    pub accept_private: Vec<IpNet>,
    pub min_ttl: Duration,
    pub max_ttl: Duration,
}

/// A secret and the executables that may open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The guarded file. For an issued secret, empty until [`Scope::place_issued_secrets`].
    pub path: PathBuf,
    pub tools: Vec<PathBuf>,
    /// Set when the secret is issued per task rather than guarded in place.
    pub issue: Option<IssuedSecret>,
}

/// A secret Warden issues for each task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedSecret {
    pub name: String,
    /// Where the value comes from.
    pub source: SecretFrom,
    /// `file:` secrets: the environment variable naming the issued file's path.
    pub env: String,
    /// `exec:` secrets: the revoke command (`{id}` not yet replaced).
    pub revoke: Option<Vec<String>>,
    /// `token` secrets: the audience.
    pub audience: Option<String>,
    /// How long one credential lives (brokered secrets).
    pub ttl: Option<Duration>,
    /// Reissue period (brokered secrets).
    pub rotate: Option<Duration>,
}

/// Where an issued secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFrom {
    /// Copied from a file onto the task's tmpfs; nothing revokes it at its source.
    File(PathBuf),
    /// Minted by an issuer command; served by the task's broker.
    Exec(Vec<String>),
    /// A JWT Warden signs with the node key; served by the task's broker.
    Token,
}

impl IssuedSecret {
    /// The source file of a `file:` secret.
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            SecretFrom::File(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the value is handed out only by the task's broker (not as a file).
    pub fn brokered(&self) -> bool {
        self.file().is_none()
    }
}

/// The default environment variable of an issued secret: `WARDEN_SECRET_<NAME>`.
pub fn default_secret_env(name: &str) -> String {
    let up: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("WARDEN_SECRET_{up}")
}

/// A validated scope. `None` sections are not restricted (protected defaults still apply).
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub task: String,
    /// Where it was read from.
    pub source: PathBuf,
    pub mode: Mode,
    pub ttl: Option<Duration>,
    pub exec_allow: Option<Vec<PathBuf>>,
    pub read: Option<Vec<PathBuf>>,
    pub write: Option<Vec<PathBuf>>,
    pub deny: Vec<PathBuf>,
    pub secrets: Vec<Secret>,
    pub egress: Option<Vec<EgressRule>>,
    /// Egress by name (`network.egress[].host`).
    pub hosts: Vec<HostRule>,
    /// Set when the task's DNS goes through Warden's resolver: the scope has `host` rules or
    /// a `network.dns` section.
    pub dns: Option<DnsSettings>,
    pub process_limit: Option<u32>,
    /// `limits.memory` in bytes; absent: the node's default (`sandbox::limits::default_memory`).
    pub memory_limit: Option<u64>,
    pub grants: BTreeSet<Grant>,
    /// Fail closed on evidence gaps.
    pub on_gap: OnGap,
    /// `evidence.intent: digest`: calls' intents are recorded as digests only.
    pub intent_digest: bool,
    /// `evidence.intent_max`: longest intent text recorded, in bytes.
    pub intent_max: usize,
    /// Capabilities the task's processes keep (bit `1 << nr`); 0 = none.
    pub capabilities: u64,
    /// Run as this (uid, gid) instead of root.
    pub user: Option<(u32, u32)>,
    /// The text it was parsed from (for locating errors found later, e.g. at compile time).
    pub text: String,
    /// The task's secrets broker socket, once placed ([`Scope::place_issued_secrets`]): the
    /// task may connect to it although it lies below a protected directory.
    pub broker: Option<PathBuf>,
}

/// The 1-based line of the first occurrence of `needle` in `text` (0 if absent).
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map_or(0, |i| i + 1)
}

impl Scope {
    /// Reads and validates a scope file.
    pub fn load(path: &Path) -> Result<Self, ScopeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScopeError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates scope text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ScopeError> {
        let raw: RawScope = crate::util::from_yaml(text).map_err(|e| ScopeError::Parse {
            path: path.to_path_buf(),
            line: e.line,
            column: e.column,
            field: e.field,
            message: e.message,
        })?;
        let invalid = |needle: &str, field: &str, message: String| ScopeError::Invalid {
            path: path.to_path_buf(),
            line: line_of(text, needle),
            field: field.to_string(),
            message,
        };
        if raw.version != SCOPE_VERSION {
            return Err(invalid(
                "version",
                "version",
                format!("version {} is not supported; write `version: {SCOPE_VERSION}`", raw.version),
            ));
        }
        let exec_allow = raw.exec.map(|e| e.allow.into_iter().map(|p| p.0).collect::<Vec<_>>());
        if let Some(allow) = &exec_allow {
            for p in allow {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if name.starts_with("ld-linux") || name.starts_with("ld.so") || name.starts_with("ld-musl") {
                    return Err(invalid(
                        &p.display().to_string(),
                        "exec.allow",
                        format!(
                            "{} is the dynamic loader: allowing it would let `{} PROGRAM` run any readable file; \
                             remove it (allowed programs load it without being granted it)",
                            p.display(),
                            p.display()
                        ),
                    ));
                }
            }
        }
        let mut secrets: Vec<Secret> = Vec::new();
        for (i, s) in raw.secrets.into_iter().enumerate() {
            let tools: Vec<PathBuf> = s.tools.into_iter().map(|t| t.0).collect();
            let needle = s.name.as_ref().map(|n| n.0.clone()).unwrap_or_else(|| "secrets".into());
            let secret = match (s.path, s.name, s.from) {
                (Some(p), None, None) => {
                    if let Some(env) = &s.env {
                        return Err(invalid(
                            &env.0,
                            &format!("secrets[{i}].env"),
                            "`env` is for issued secrets (`name` + `from`); a guarded `path` is already known to the task".into(),
                        ));
                    }
                    Secret { path: p.0, tools, issue: None }
                }
                (None, Some(name), Some(from)) => {
                    let field = |f: &str| format!("secrets[{i}].{f}");
                    let source = match from {
                        SecretSource::File(p) => SecretFrom::File(p),
                        SecretSource::Exec(argv) => SecretFrom::Exec(argv),
                        SecretSource::Token => SecretFrom::Token,
                    };
                    let is_file = matches!(source, SecretFrom::File(_));
                    if !is_file && let Some(env) = &s.env {
                        return Err(invalid(
                            &env.0,
                            &field("env"),
                            format!(
                                "`env` names the file of a `file:` secret; `{}` is served by the task's broker: \
                                 tools fetch it with `warden secret get {}`",
                                name.0, name.0
                            ),
                        ));
                    }
                    if s.revoke.is_some() && !matches!(source, SecretFrom::Exec(_)) {
                        return Err(invalid(
                            "revoke",
                            &field("revoke"),
                            "`revoke` goes with `from: exec:...`; file: secrets are not revoked and \
                             tokens are revoked by Warden"
                                .into(),
                        ));
                    }
                    match (&source, &s.audience) {
                        (SecretFrom::Token, None) => {
                            return Err(invalid(
                                &name.0,
                                &field("audience"),
                                "a token needs an `audience:` (the service that will check it)".into(),
                            ));
                        }
                        (SecretFrom::Token, Some(_)) | (_, None) => {}
                        (_, Some(a)) => {
                            return Err(invalid(
                                &a.0,
                                &field("audience"),
                                "`audience` goes with `from: token`".into(),
                            ));
                        }
                    }
                    if is_file && (s.rotate.is_some() || s.ttl.is_some()) {
                        return Err(invalid(
                            &name.0,
                            &field("rotate"),
                            "`ttl` and `rotate` go with `exec:` and `token` secrets; a file: copy lives as long \
                             as the task"
                                .into(),
                        ));
                    }
                    Secret {
                        path: PathBuf::new(),
                        tools,
                        issue: Some(IssuedSecret {
                            env: s.env.map(|e| e.0).unwrap_or_else(|| default_secret_env(&name.0)),
                            name: name.0,
                            source,
                            revoke: s.revoke.map(|c| c.0),
                            audience: s.audience.map(|a| a.0),
                            ttl: s.ttl.map(|t| t.0),
                            rotate: s.rotate.map(|t| t.0),
                        }),
                    }
                }
                _ => {
                    return Err(invalid(
                        &needle,
                        &format!("secrets[{i}]"),
                        "write either `path:` (guard an existing file) or `name:` and `from: file:/...` \
                         (issue a per-task copy), not both and not neither"
                            .into(),
                    ));
                }
            };
            if secrets.iter().any(|o: &Secret| {
                o.issue
                    .as_ref()
                    .zip(secret.issue.as_ref())
                    .is_some_and(|(a, b)| a.name == b.name || a.env == b.env)
            }) {
                return Err(invalid(
                    &needle,
                    &format!("secrets[{i}].name"),
                    "two issued secrets share a name or env variable; rename one".into(),
                ));
            }
            secrets.push(secret);
        }
        for (i, s) in secrets.iter().enumerate() {
            if s.tools.is_empty() {
                return Err(invalid(
                    &s.path.display().to_string(),
                    &format!("secrets[{i}].tools"),
                    "list at least one executable that may open this secret".into(),
                ));
            }
            if let Some(allow) = &exec_allow {
                for t in &s.tools {
                    if !allow.contains(t) {
                        return Err(invalid(
                            &t.display().to_string(),
                            &format!("secrets[{i}].tools"),
                            format!("{} may not run (it is not in exec.allow); add it there", t.display()),
                        ));
                    }
                }
            }
        }
        let mut hosts = Vec::new();
        let mut dns = None;
        let egress = match raw.network {
            None => None,
            Some(n) => {
                let mut cidrs = Vec::new();
                for (i, e) in n.egress.into_iter().enumerate() {
                    let field = format!("network.egress[{i}]");
                    match (e.to, e.host) {
                        (Some(to), None) => {
                            cidrs.push(EgressRule { net: to.0, ports: e.ports, protocol: e.protocol })
                        }
                        (None, Some(h)) => {
                            hosts.push(HostRule { pattern: h.0, ports: e.ports, protocol: e.protocol })
                        }
                        (Some(_), Some(h)) => {
                            return Err(invalid(
                                &h.0,
                                &field,
                                "a rule names either addresses (`to:`) or a host (`host:`), not both; \
                                 split it into two rules"
                                    .into(),
                            ));
                        }
                        (None, None) => {
                            return Err(invalid(
                                "egress",
                                &field,
                                "say where: `to: 10.0.0.0/8` (addresses) or `host: api.github.com` (a name)"
                                    .into(),
                            ));
                        }
                    }
                }
                if !hosts.is_empty() || n.dns.is_some() {
                    let d = n.dns.unwrap_or(raw::RawDns {
                        upstream: Vec::new(),
                        accept_private: Vec::new(),
                        min_ttl: None,
                        max_ttl: None,
                    });
                    let settings = DnsSettings {
                        upstream: d.upstream.into_iter().map(|u| u.0).collect(),
                        accept_private: d.accept_private.into_iter().map(|c| c.0).collect(),
                        min_ttl: d.min_ttl.map_or(DEFAULT_MIN_TTL, |t| t.0),
                        max_ttl: d.max_ttl.map_or(DEFAULT_MAX_TTL, |t| t.0),
                    };
                    if settings.min_ttl > settings.max_ttl {
                        return Err(invalid(
                            "min_ttl",
                            "network.dns.min_ttl",
                            format!(
                                "min_ttl {:?} is longer than max_ttl {:?}; lower min_ttl or raise max_ttl",
                                settings.min_ttl, settings.max_ttl
                            ),
                        ));
                    }
                    dns = Some(settings);
                }
                Some(cidrs)
            }
        };
        if let Some(rules) = &egress
            && let Err(e) = compile::egress_entries(rules, 0)
        {
            return Err(invalid("egress", "network.egress", e));
        }
        let files = raw.files;
        let mut capabilities = raw.capabilities.iter().fold(0u64, |m, c| m | (1u64 << c.0));
        // Raw and packet sockets are created only with CAP_NET_RAW: granting them grants it.
        if raw.grant.iter().any(|g| matches!(g, Grant::NetRaw | Grant::NetPacket)) {
            capabilities |= 1u64 << raw::CAP_NET_RAW;
        }
        Ok(Scope {
            task: raw.task.0,
            source: path.to_path_buf(),
            mode: raw.mode.unwrap_or(Mode::Enforce),
            ttl: raw.ttl.map(|t| t.0),
            exec_allow,
            read: files.as_ref().and_then(|f| f.read.clone()).map(|v| v.into_iter().map(|p| p.0).collect()),
            write: files.as_ref().and_then(|f| f.write.clone()).map(|v| v.into_iter().map(|p| p.0).collect()),
            deny: files.map(|f| f.deny.into_iter().map(|p| p.0).collect()).unwrap_or_default(),
            secrets,
            egress,
            hosts,
            dns,
            process_limit: raw.limits.as_ref().and_then(|l| l.processes).map(|p| p.0),
            memory_limit: raw.limits.as_ref().and_then(|l| l.memory).map(|m| m.0),
            grants: raw.grant.into_iter().collect(),
            on_gap: raw.evidence.as_ref().map(|e| e.on_gap).unwrap_or_default(),
            intent_digest: raw.evidence.as_ref().is_some_and(|e| e.intent == raw::IntentMode::Digest),
            intent_max: raw
                .evidence
                .as_ref()
                .and_then(|e| e.intent_max)
                .map_or(crate::audit::INTENT_MAX_DEFAULT, |m| m.0),
            capabilities,
            user: raw.user.map(|u| (u.uid, u.gid.unwrap_or(u.uid))),
            text: text.to_string(),
            broker: None,
        })
    }

    /// Whether the scope asks for secrets issued per task (any provider).
    pub fn has_issued_secrets(&self) -> bool {
        self.secrets.iter().any(|s| s.issue.is_some())
    }

    /// Whether the scope has secrets served by a broker (`exec:`, `token`).
    pub fn has_brokered_secrets(&self) -> bool {
        self.brokered().next().is_some()
    }

    /// The brokered secrets, with their tools.
    pub fn brokered(&self) -> impl Iterator<Item = (&IssuedSecret, &[PathBuf])> {
        self.secrets
            .iter()
            .filter_map(|s| s.issue.as_ref().filter(|i| i.brokered()).map(|i| (i, s.tools.as_slice())))
    }

    /// Gives each issued `file:` secret its per-task path, `<dir>/<name>`, and brokered
    /// secrets their broker, `<dir>/broker.sock`.
    pub fn place_issued_secrets(&mut self, dir: &Path) {
        if self.has_brokered_secrets() {
            self.broker = Some(dir.join(crate::creds::broker::SOCKET_NAME));
        }
        for s in &mut self.secrets {
            if let Some(i) = &s.issue
                && !i.brokered()
            {
                s.path = dir.join(&i.name);
            }
        }
    }

    /// A copy whose issued `file:` secrets point at their source files: compiling it checks
    /// everything a task start would (the sources must exist), without issuing anything.
    pub fn for_validation(&self) -> Scope {
        let mut s = self.clone();
        for sec in &mut s.secrets {
            if let Some(p) = sec.issue.as_ref().and_then(|i| i.file()) {
                sec.path = p.to_path_buf();
            }
        }
        s
    }

    /// An error about this scope at the line where `needle` appears.
    pub fn error(&self, needle: &str, field: &str, message: String) -> ScopeError {
        ScopeError::Invalid {
            path: self.source.clone(),
            line: line_of(&self.text, needle),
            field: field.to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Scope, ScopeError> {
        Scope::parse(t, Path::new("s.yaml"))
    }

    const FULL: &str = "\
version: 1
task: build-report
mode: enforce
ttl: 15m
exec:
  allow: [/usr/bin/python3, /usr/bin/git, /bin/sh]
files:
  read:  [/workspace, /usr, /lib, /etc]
  write: [/workspace/out, /dev/null]
  deny:  [/run/secrets, /home/agent/.aws]
secrets:
  - path: /run/secrets/gh-token
    tools: [/usr/bin/git]
network:
  egress:
    - to: 10.0.0.0/8
      ports: [443, \"8000-8100\"]
      protocol: tcp
limits:
  processes: 64
  memory: 2GiB
grant: [io-uring]
";

    #[test]
    fn accepts_the_documented_example() {
        let s = parse(FULL).unwrap();
        assert_eq!(s.task, "build-report");
        assert_eq!(s.mode, Mode::Enforce);
        assert_eq!(s.ttl, Some(Duration::from_secs(900)));
        assert_eq!(s.exec_allow.as_ref().unwrap().len(), 3);
        assert_eq!(s.write.as_ref().unwrap()[1], PathBuf::from("/dev/null"));
        assert_eq!(s.secrets[0].tools, [PathBuf::from("/usr/bin/git")]);
        let e = &s.egress.as_ref().unwrap()[0];
        assert_eq!(e.ports, [PortRange { lo: 443, hi: 443 }, PortRange { lo: 8000, hi: 8100 }]);
        assert_eq!(e.protocol, Protocol::Tcp);
        assert_eq!(s.process_limit, Some(64));
        assert_eq!(s.memory_limit, Some(2 << 30));
        assert!(s.grants.contains(&Grant::IoUring));
    }

    #[test]
    fn accepts_minimal_scope_with_everything_unrestricted() {
        let s = parse("version: 1\ntask: t\n").unwrap();
        assert!(s.exec_allow.is_none() && s.read.is_none() && s.write.is_none() && s.egress.is_none());
        assert_eq!(s.mode, Mode::Enforce);
    }

    fn err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_are_rejected_with_line_and_field() {
        let e = err("version: 1\ntask: a\nexecc: []\n");
        assert!(e.starts_with("s.yaml:3:"), "{e}");
        assert!(e.contains("execc"), "{e}");
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - to: 10.0.0.0/8\n      prots: [1]\n");
        assert!(e.starts_with("s.yaml:6:"), "{e}");
        assert!(e.contains("network.egress[0]"), "{e}");
    }

    #[test]
    fn bad_values_point_at_the_value() {
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - to: 10.0.0.0/33\n");
        assert!(e.starts_with("s.yaml:5:"), "{e}");
        assert!(e.contains("network.egress[0].to"), "{e}");
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - to: 10.0.0.1/8\n");
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - to: ::1\n      ports: [\"9-3\"]\n");
        assert!(e.contains("reversed"), "{e}");
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - to: ::1\n      ports: [0]\n");
        assert!(e.contains("1 to 65535"), "{e}");
        let e = err("version: 1\ntask: a\nexec:\n  allow: [usr/bin/git]\n");
        assert!(e.starts_with("s.yaml:4:") && e.contains("absolute"), "{e}");
        let e = err("version: 1\ntask: a\nttl: 5 minutes\n");
        assert!(e.contains("ttl"), "{e}");
        let e = err("version: 1\ntask: a\nmode: permissive\n");
        assert!(e.contains("mode"), "{e}");
        let e = err("version: 1\ntask: a\ngrant: [root]\n");
        assert!(e.contains("grant"), "{e}");
    }

    #[test]
    fn memory_limits_are_parsed_strictly() {
        let mem = |v: &str| {
            parse(&format!("version: 1\ntask: a\nlimits:\n  memory: {v}\n")).map(|s| s.memory_limit)
        };
        assert_eq!(mem("512MiB").unwrap(), Some(512 << 20));
        assert_eq!(mem("16384KiB").unwrap(), Some(16 << 20));
        assert_eq!(mem("\"3GiB\"").unwrap(), Some(3 << 30));
        assert_eq!(mem("1TiB").unwrap(), Some(1 << 40));
        for bad in [
            "512M", "512MB", "512mib", "1.5GiB", "0x10MiB", "-1GiB", "512", "512 MiB", " 512MiB", "0512MiB",
            "GiB", "1e3MiB",
        ] {
            let e = mem(&format!("{bad:?}")).unwrap_err().to_string();
            assert!(e.contains("limits.memory") && e.contains("e.g. \"512MiB\""), "{bad}: {e}");
            assert!(e.starts_with("s.yaml:4:"), "{e}");
        }
        for small_or_huge in ["15MiB", "0GiB", "1025TiB", "99999999999999999999TiB", "17592186044416MiB"] {
            let e = mem(small_or_huge).unwrap_err().to_string();
            assert!(
                e.contains("from 16MiB to 1024TiB") || e.contains("whole number"),
                "{small_or_huge}: {e}"
            );
        }
        let e = mem("512").unwrap_err().to_string();
        assert!(e.contains("limits.memory"), "a bare YAML number is refused too: {e}");
        assert_eq!(parse("version: 1\ntask: a\n").unwrap().memory_limit, None);
    }

    #[test]
    fn semantic_errors_name_line_and_fix() {
        let e = err("version: 2\ntask: a\n");
        assert_eq!(e, "s.yaml:1: version: version 2 is not supported; write `version: 1`");
        let e = err("version: 1\ntask: a\nexec:\n  allow: [/bin/sh, /lib64/ld-linux-x86-64.so.2]\n");
        assert!(e.starts_with("s.yaml:4: exec.allow:") && e.contains("dynamic loader"), "{e}");
        let e = err(
            "version: 1\ntask: a\nexec:\n  allow: [/bin/sh]\nsecrets:\n  - path: /run/s\n    tools: [/usr/bin/git]\n",
        );
        assert!(e.starts_with("s.yaml:7: secrets[0].tools:") && e.contains("exec.allow"), "{e}");
    }

    #[test]
    fn capabilities_and_user_are_validated() {
        let s =
            parse("version: 1\ntask: a\ncapabilities: [net_bind_service, CAP_CHOWN]\nuser: {uid: 1000}\n")
                .unwrap();
        assert_eq!(s.capabilities, (1 << 10) | 1);
        assert_eq!(s.user, Some((1000, 1000)));
        let s = parse("version: 1\ntask: a\n").unwrap();
        assert_eq!((s.capabilities, s.user), (0, None), "no capabilities, root, unless granted");
        let s = parse("version: 1\ntask: a\ngrant: [net-packet]\n").unwrap();
        assert_eq!(s.capabilities, 1 << 13, "packet sockets need net_raw");
        let e = err("version: 1\ntask: a\ncapabilities: [sys_admin]\n");
        assert!(
            e.starts_with("s.yaml:3:") && e.contains("cannot be granted") && e.contains("administers"),
            "{e}"
        );
        let e = err("version: 1\ntask: a\ncapabilities: [net_bind]\n");
        assert!(e.contains("net_bind_service"), "the message lists the names: {e}");
        let e = err("version: 1\ntask: a\nuser: {uid: 1000, group: 5}\n");
        assert!(e.contains("group"), "{e}");
    }

    #[test]
    fn host_rules_and_dns_settings() {
        let s = parse(
            "version: 1\ntask: a\nnetwork:\n  egress:\n    - host: API.GitHub.com.\n      ports: [443]\n    - host: \"*.pythonhosted.org\"\n      protocol: tcp\n    - to: 10.0.0.0/8\n  dns:\n    upstream: [127.0.0.53, \"[::1]:5353\"]\n    accept_private: [127.0.0.0/8]\n    min_ttl: 1s\n",
        )
        .unwrap();
        assert_eq!(s.hosts.len(), 2);
        assert_eq!(s.hosts[0].pattern, "api.github.com");
        assert_eq!(s.egress.as_ref().unwrap().len(), 1, "CIDR rules stay as they are");
        let d = s.dns.as_ref().unwrap();
        assert_eq!(d.upstream[0], "127.0.0.53:53".parse().unwrap());
        assert_eq!(d.upstream[1], "[::1]:5353".parse().unwrap());
        assert_eq!((d.min_ttl, d.max_ttl), (Duration::from_secs(1), DEFAULT_MAX_TTL));
        let exact = &s.hosts[0];
        assert!(exact.matches("api.github.com") && exact.matches("API.GITHUB.COM."));
        assert!(!exact.matches("x.api.github.com") && !exact.matches("github.com"));
        let wild = &s.hosts[1];
        assert!(wild.matches("files.pythonhosted.org") && wild.matches("a.b.pythonhosted.org"));
        assert!(!wild.matches("pythonhosted.org"), "the domain itself is not under it");
        assert!(!wild.matches("evilpythonhosted.org") && !wild.matches("pythonhosted.org.evil.com"));
        // No host rule and no dns section: no resolver.
        assert!(parse("version: 1\ntask: a\nnetwork:\n  egress:\n    - to: ::1\n").unwrap().dns.is_none());
    }

    #[test]
    fn bad_host_rules_name_line_and_fix() {
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - host: \"api.*.com\"\n");
        assert!(
            e.starts_with("s.yaml:5:") && e.contains("network.egress[0].host") && e.contains("first label"),
            "{e}"
        );
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - host: \"*.com\"\n");
        assert!(e.contains("top-level"), "{e}");
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - host: \"bad_-.x.-y\"\n");
        assert!(e.contains("label"), "{e}");
        let e =
            err("version: 1\ntask: a\nnetwork:\n  egress:\n    - to: 10.0.0.0/8\n      host: a.example\n");
        assert!(e.starts_with("s.yaml:6: network.egress[0]:") && e.contains("not both"), "{e}");
        let e = err("version: 1\ntask: a\nnetwork:\n  egress:\n    - ports: [443]\n");
        assert!(e.contains("network.egress[0]") && e.contains("host:"), "{e}");
        let e = err("version: 1\ntask: a\nnetwork:\n  dns:\n    upstream: [resolver.local]\n");
        assert!(e.starts_with("s.yaml:5:") && e.contains("network.dns.upstream"), "{e}");
        let e = err("version: 1\ntask: a\nnetwork:\n  dns:\n    min_ttl: 2h\n");
        assert!(e.contains("min_ttl") && e.contains("max_ttl"), "{e}");
    }

    #[test]
    fn too_many_overlapping_port_rules_is_an_error() {
        let mut t = String::from("version: 1\ntask: a\nnetwork:\n  egress:\n");
        for p in 1..=17 {
            t.push_str(&format!("    - to: 10.0.0.0/8\n      ports: [{p}]\n"));
        }
        assert!(err(&t).contains("network.egress"));
    }
}
