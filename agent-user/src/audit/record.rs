//! The audit record: one JSON object per line. See `docs/events.md`.
use serde::Serialize;

/// Version of the audit record schema (`v`). Bump rules: `docs/events.md`.
/// 1: first release. 2: hash chain (`prev`, `hash`), `checkpoint` and `gap` records.
pub const SCHEMA_VERSION: u32 = 2;

/// The decision recorded for an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Permitted by the scope (or not restricted).
    Allow,
    /// Refused.
    Deny,
    /// Would have been refused; the task runs in audit mode.
    Audit,
}

/// One audit record. Optional fields are omitted when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct AuditRecord {
    /// Schema version.
    pub v: u32,
    /// Sequence number within the log, from 1, without gaps.
    pub seq: u64,
    /// When it happened: RFC 3339, UTC, nanoseconds.
    pub time: String,
    /// Task id.
    pub task: String,
    /// `task_start`, `task_end`, `exec`, `fork`, `exit`, ...
    pub kind: super::Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Executable of the process (after exec, the new image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// deny: what was done about it: `refuse` (the call failed with an error) or `kill`
    /// (the process was killed before it could act).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
    /// deny/audit: the scope field that decided, e.g. `exec.allow`, `network.egress`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'static str>,
    /// deny/audit: the process's ancestors, nearest first (pids).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ancestry: Option<Vec<u32>>,
    /// File path (exec, file events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Network address (network events): IP address, IPv4-mapped IPv6 shown as IPv4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Destination port (network events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`, `udp` or the IP protocol number (network events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Executed file identity: userspace `st_dev` encoding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_truncated: Option<bool>,
    /// signal/ptrace: the process acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// The hook's argument: open: `f_mode`; ptrace: mode; bpf: command; mmap: `prot`;
    /// module: the kernel's load id. (Signals are in `signal`.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arg: Option<u32>,
    /// deny recorded from a kernel report rather than a Warden hook: the mechanism that
    /// refused (`landlock`, `seccomp`, `pids`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// syscall (seccomp): the call refused, by name (`i386:N` for a foreign ABI's number).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// Landlock: the access rights that were missing, e.g. `fs.read_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blockers: Option<String>,
    /// fork: the new process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_pid: Option<u32>,
    /// exit / task_end: exit status when the process exited normally.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// exit / task_end: the signal that ended the process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// task_start: scope file, command and sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<crate::scope::Mode>,
    /// task_start: the node (host name) the task runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// task_start: SHA-256 (hex) of the scope file's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope_hash: Option<String>,
    /// task_start: the enforcement engine (`bpf-lsm` or `fallback`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<&'static str>,
    /// task_start: controls of the scope this engine cannot enforce (see `docs/coverage.md`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unenforced: Option<Vec<String>>,
    /// task_end: why the task ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// task_end: records the kernel could not deliver for this task (ring buffer full).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops: Option<u64>,
    /// task_end: records that arrived but failed to decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_errors: Option<u64>,
    /// gap: refusals the kernel reported (or counted) that Warden did not receive; for socket
    /// overruns, the number of overruns (each lost one or more reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reports_lost: Option<u64>,
    /// task_start: refusals this engine enforces but cannot record on this kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrecorded: Option<Vec<String>>,
    /// task_end: how many actions were refused during the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denials: Option<u64>,
    /// task_end: processes still in the sandbox when it was ended, killed by Warden.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed: Option<u64>,
    /// gap: the evidence gap runs from `since` to `time` (RFC 3339), e.g. while the daemon
    /// was down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// task_start: when the scope's ttl ends the task (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// task_start: the secrets issued to the task, by name, file and SHA-256 digest (never
    /// the value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<crate::sandbox::secrets::IssuedInfo>>,
    /// task_start: brokered credentials (`name`, `provider`, `sha256`, `expires_at`,
    /// `generation` — never the value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Vec<crate::creds::CredInfo>>,
    /// secret: what happened to a brokered secret: `get` (a caller asked the broker),
    /// `rotate` (reissued), `revoke` (revoked at its issuer, or failed to).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'static str>,
    /// secret: the secret's name in the scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// secret: SHA-256 (hex) of the value concerned (never the value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// finding: the rule that fired, its severity and description, and the `seq`s of the
    /// records that made it fire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<crate::rules::Severity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<u64>>,
    /// dns: the name asked for (lower case, no trailing dot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// dns: the query type (`A`, `AAAA`, `TXT`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype: Option<String>,
    /// dns: the `host` rule that granted the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// dns: addresses kept in the answer (granted to the task when the name is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answers: Option<Vec<String>>,
    /// dns: addresses dropped from the answer, as `address (reason)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<Vec<String>>,
    /// dns: the response code the task got (`NOERROR`, `REFUSED`, `SERVFAIL`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rcode: Option<String>,
    /// dns: microseconds from the query's arrival to the answer (upstream included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// checkpoint: the signer's ed25519 public key (hex).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// checkpoint: base64 ed25519 signature of "warden-checkpoint-v1\n{task}\n{seq}\n{prev}".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
    /// The pod and container of a task bound by `warden oci-hook`: on every record of the
    /// task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<std::sync::Arc<crate::k8s::pod::PodIdentity>>,
    /// The `hash` of the previous record of this task (64 zeros for the first). Always last
    /// before `hash`, which the pipeline appends when it seals the line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

/// Converts a kernel `dev_t` (`major << 20 | minor`) to the userspace `st_dev` encoding
/// glibc's `makedev` uses.
pub fn kernel_dev_to_user(dev: u32) -> u64 {
    let major = u64::from(dev >> 20);
    let minor = u64::from(dev & 0xfffff);
    ((major & 0xffff_f000) << 32) | ((major & 0xfff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff)
}

/// Splits a wait(2) status into (exit status, terminating signal).
pub fn wait_status(status: u32) -> (Option<i32>, Option<i32>) {
    let sig = (status & 0x7f) as i32;
    if sig == 0 { (Some(((status >> 8) & 0xff) as i32), None) } else { (None, Some(sig)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_conversion_matches_libc_makedev() {
        for (maj, min) in [(0u32, 0u32), (8, 1), (253, 3), (0, 0x1234), (259, 70000)] {
            let kdev = (maj << 20) | min;
            assert_eq!(kernel_dev_to_user(kdev), libc::makedev(maj, min), "{maj}:{min}");
        }
    }

    #[test]
    fn wait_status_split() {
        assert_eq!(wait_status(3 << 8), (Some(3), None));
        assert_eq!(wait_status(9), (None, Some(9)));
    }

    #[test]
    fn serializes_required_fields_and_omits_absent_ones() {
        let r = AuditRecord {
            v: SCHEMA_VERSION,
            seq: 1,
            time: "t".into(),
            task: "x".into(),
            kind: crate::audit::Kind::Exec,
            decision: Some(Decision::Allow),
            pid: Some(5),
            ..Default::default()
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"v":2,"seq":1,"time":"t","task":"x","kind":"exec","decision":"allow","pid":5}"#);
    }
}
