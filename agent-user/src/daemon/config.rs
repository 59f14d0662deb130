//! `warden daemon --config warden.yaml`: every field, its default, strictly parsed.
//! Documented field by field in `docs/daemon.md`.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::loader::{EngineChoice, LoadOptions};

/// The daemon's configuration. Every field is optional; see [`DaemonConfig::default`].
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The API socket (HTTP+JSON over a unix socket, mode 0600).
    pub socket: PathBuf,
    /// Task records kept for re-adoption after a restart (a tmpfs: tasks do not survive a
    /// reboot, and neither should their records).
    pub state_dir: PathBuf,
    /// Per-task tmpfs mounts for issued secrets: `<secrets_dir>/<task>/<name>`.
    pub secrets_dir: PathBuf,
    /// Where bpffs is (mounted there if it is not).
    pub bpffs: PathBuf,
    /// Pins live under `<bpffs>/<pin_name>/<version>/`.
    pub pin_name: String,
    /// Parent of the sandboxes the daemon creates, relative to the cgroup2 mount.
    pub cgroup_parent: String,
    /// The node's ed25519 signing key (created 0600 on first start).
    pub key: PathBuf,
    /// The node audit log.
    pub log: LogConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// `auto` (BPF LSM where the kernel loads it), `bpf-lsm` or `fallback`.
    pub engine: EngineChoice,
    /// Kernel map sizes ([`LoadOptions`]). Changing any of them changes the pin version: the
    /// next start migrates.
    pub maps: LoadOptions,
    /// A directory of scope-drift rules evaluated live; findings become records.
    pub rules: Option<PathBuf>,
    /// Scopes pods may name (`warden.dev/scope: NAME` → `<scopes>/NAME.yaml`), read when a
    /// container is bound. Unset: containers cannot be bound.
    pub scopes: Option<PathBuf>,
    /// The node resolver for egress by name.
    pub dns: DnsDaemonConfig,
    /// Tokens Warden mints (`from: token` secrets): where their JWKS is served.
    pub tokens: TokensConfig,
}

/// The token endpoint: `GET /.well-known/jwks.json` and `GET /v1/revoked`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// `host:port` to serve the JWKS and the revoked token ids on (plain HTTP: both are
    /// public). `null` (default): not served.
    pub listen: Option<SocketAddr>,
    /// The tokens' `iss` (default `warden://<node name>`).
    pub issuer: Option<String>,
}

/// `dns`: where the node resolver serves the tasks whose scopes name hosts. Task slot `s` is
/// served at `addr_base + s` on `port` (UDP and TCP); the kernel redirects the task's DNS there.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsDaemonConfig {
    /// The resolver's port on every slot address (not 53: nothing else on the node may need it).
    pub port: u16,
    /// First slot address; with `maps.max_tasks` it must stay inside 127.0.0.0/8.
    pub addr_base: std::net::Ipv4Addr,
}

impl Default for DnsDaemonConfig {
    fn default() -> Self {
        Self { port: 53053, addr_base: crate::dns::DEFAULT_ADDR_BASE }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(super::api::DEFAULT_SOCKET),
            state_dir: PathBuf::from("/run/warden/state"),
            secrets_dir: PathBuf::from("/run/warden/secrets"),
            bpffs: PathBuf::from("/sys/fs/bpf"),
            pin_name: "warden".into(),
            cgroup_parent: "warden".into(),
            key: PathBuf::from(crate::audit::chain::DEFAULT_KEY_PATH),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            engine: EngineChoice::Auto,
            maps: LoadOptions::default(),
            rules: None,
            scopes: None,
            tokens: TokensConfig::default(),
            dns: DnsDaemonConfig::default(),
        }
    }
}

/// The node audit log.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// JSON Lines, appended to across restarts.
    pub path: PathBuf,
    /// Rotate past this many bytes (FILE → FILE.1 → ...); unset: never.
    pub max_bytes: Option<u64>,
    /// With `max_bytes`: keep at most this many rotated files (unset: all).
    pub keep: Option<usize>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { path: PathBuf::from("/var/log/warden/events.jsonl"), max_bytes: None, keep: None }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` for `GET /metrics` and `GET /health` (plain HTTP); keep it on loopback.
    /// `null` disables.
    pub listen: Option<SocketAddr>,
    /// Accept a `listen` address that is not loopback. Only for a daemon in its own network
    /// namespace (the Helm chart: the pod's IP is what the metrics Service and the probes
    /// reach; a NetworkPolicy keeps it to the scraper).
    pub public: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))), public: false }
    }
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read daemon config: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, field: String, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid { path: PathBuf, field: &'static str, message: String },
}

impl DaemonConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text (`path` is for messages). An empty file is all
    /// defaults.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: DaemonConfig = if text.trim().is_empty() {
            DaemonConfig::default()
        } else {
            crate::util::from_yaml(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                line: e.line,
                column: e.column,
                field: e.field,
                message: e.message,
            })?
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        let m = &self.maps;
        if m.ring_bytes < 4096 || !m.ring_bytes.is_power_of_two() {
            return Err(bad("maps.ring_bytes", format!("{} is not a power of two >= 4096", m.ring_bytes)));
        }
        if !(2..=65536).contains(&m.max_tasks) {
            return Err(bad("maps.max_tasks", format!("{} must be from 2 to 65536", m.max_tasks)));
        }
        if m.max_cgroups < m.max_tasks {
            return Err(bad("maps.max_cgroups", "must be at least maps.max_tasks".into()));
        }
        for (field, v) in [
            ("maps.max_exec", m.max_exec),
            ("maps.max_egress", m.max_egress),
            ("maps.max_file_rules", m.max_file_rules),
            ("maps.max_unix_rules", m.max_unix_rules),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1".into()));
            }
        }
        for (field, p) in [
            ("socket", &self.socket),
            ("state_dir", &self.state_dir),
            ("secrets_dir", &self.secrets_dir),
            ("bpffs", &self.bpffs),
            ("key", &self.key),
            ("log.path", &self.log.path),
        ] {
            if !p.is_absolute() {
                return Err(bad(field, format!("{} is not an absolute path", p.display())));
            }
        }
        let rel_ok = |s: &str| {
            !s.is_empty() && !s.starts_with('/') && !s.split('/').any(|c| c == ".." || c.is_empty())
        };
        if !rel_ok(&self.cgroup_parent) {
            return Err(bad("cgroup_parent", "must be a relative path without `..`, e.g. warden".into()));
        }
        if !rel_ok(&self.pin_name) || self.pin_name.contains('/') {
            return Err(bad("pin_name", "must be one directory name, e.g. warden".into()));
        }
        if let Some(d) = &self.scopes
            && !d.is_absolute()
        {
            return Err(bad("scopes", format!("{} is not an absolute path", d.display())));
        }
        if let Some(a) = self.metrics.listen
            && !a.ip().is_loopback()
            && !self.metrics.public
        {
            return Err(bad(
                "metrics.listen",
                format!(
                    "{a} is not a loopback address; metrics stay on the node (set metrics.public: true only \
                     when the daemon has its own network namespace, as in the Helm chart)"
                ),
            ));
        }
        if self.log.keep.is_some() && self.log.max_bytes.is_none() {
            return Err(bad("log.keep", "only means something with log.max_bytes".into()));
        }
        if self.dns.port == 0 || self.dns.port == 53 {
            return Err(bad(
                "dns.port",
                format!("{} cannot serve tasks; pick a free port, e.g. 53053", self.dns.port),
            ));
        }
        let last = u32::from(self.dns.addr_base).checked_add(self.maps.max_tasks);
        if !self.dns.addr_base.is_loopback()
            || !last.is_some_and(|l| std::net::Ipv4Addr::from(l).is_loopback())
        {
            return Err(bad(
                "dns.addr_base",
                format!(
                    "{} + maps.max_tasks ({}) leaves 127.0.0.0/8; lower it, e.g. 127.77.0.1",
                    self.dns.addr_base, self.maps.max_tasks
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<DaemonConfig, ConfigError> {
        DaemonConfig::parse(t, Path::new("warden.yaml"))
    }

    #[test]
    fn shipped_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let c = DaemonConfig::load(&root.join("deploy/warden.yaml")).unwrap();
        assert_eq!(c.log.keep, Some(8));
        // The plain manifests rendered from the Helm chart: the daemon's ConfigMap parses as a
        // daemon config, and every scope of the scopes ConfigMap as a scope.
        let text = std::fs::read_to_string(root.join("deploy/kubernetes/warden.yaml")).unwrap();
        let mut config = None;
        let mut scopes = 0;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = serde_json::Value::deserialize(doc).unwrap();
            match v["metadata"]["name"].as_str() {
                Some("warden-config") => {
                    let t = v["data"]["warden.yaml"].as_str().unwrap();
                    config = Some(DaemonConfig::parse(t, Path::new("warden-config")).unwrap());
                }
                Some("warden-scopes") => {
                    for (name, t) in v["data"].as_object().unwrap() {
                        crate::scope::Scope::parse(t.as_str().unwrap(), Path::new(name))
                            .unwrap_or_else(|e| panic!("{name}: {e}"));
                        scopes += 1;
                    }
                }
                _ => {}
            }
        }
        let c = config.expect("the rendered manifests have the daemon's ConfigMap");
        assert_eq!(c.rules, Some(PathBuf::from("/etc/warden/rules")));
        assert_eq!(c.scopes, Some(PathBuf::from("/etc/warden/scopes")));
        assert!(c.metrics.public && c.metrics.listen.is_some_and(|a| !a.ip().is_loopback()));
        assert!(scopes > 0, "the chart ships at least one scope");
    }

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(parse("").unwrap(), DaemonConfig::default());
        assert_eq!(parse("# nothing\n").unwrap(), DaemonConfig::default());
    }

    #[test]
    fn fields_override_defaults() {
        let c = parse(
            "socket: /tmp/w.sock\nmetrics:\n  listen: null\nmaps:\n  max_tasks: 300\nengine: fallback\nlog:\n  path: /tmp/e.jsonl\n  max_bytes: 1000\n",
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/w.sock"));
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.maps.max_tasks, 300);
        assert_eq!(c.maps.max_cgroups, LoadOptions::default().max_cgroups);
        assert_eq!(c.engine, EngineChoice::Fallback);
        assert_eq!(c.log.max_bytes, Some(1000));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_located() {
        let e = parse("sockets: /x\n").unwrap_err().to_string();
        assert!(e.starts_with("warden.yaml:1:") && e.contains("sockets"), "{e}");
        let e = parse("maps:\n  max_taks: 3\n").unwrap_err().to_string();
        assert!(e.contains("maps") && e.contains("max_taks"), "{e}");
        for (t, field) in [
            ("maps:\n  ring_bytes: 5000\n", "maps.ring_bytes"),
            ("maps:\n  max_tasks: 1\n", "maps.max_tasks"),
            ("socket: rel.sock\n", "socket"),
            ("cgroup_parent: ../x\n", "cgroup_parent"),
            ("metrics:\n  listen: 0.0.0.0:9464\n", "metrics.listen"),
            ("metrics:\n  listen: 0.0.0.0:9464\n  public: false\n", "metrics.listen"),
            ("log:\n  keep: 3\n", "log.keep"),
            ("scopes: etc/scopes\n", "scopes"),
        ] {
            let e = parse(t).unwrap_err().to_string();
            assert!(e.contains(field), "{t}: {e}");
        }
    }
}
