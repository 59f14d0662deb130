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
    /// The call (tool call, pipeline stage) the process belongs to, by its cgroup: on every
    /// record of a process inside a call, and on `call_start`/`call_end`. Absent outside calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<std::sync::Arc<str>>,
    /// The call's name (`--name`/`--call`), beside `call`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_name: Option<std::sync::Arc<str>>,
    /// call_start: the task id (a call directly under the task) or the parent call's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// call_start: nesting depth, 1 for a call directly under its task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
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
    /// call_start: the working directory the call's command starts in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// call_start: why the call was made, as its caller stated it (digest, and the text
    /// unless the scope sets `evidence.intent: digest`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
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
    /// task_end / call_end: how many actions were refused during the task (the call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denials: Option<u64>,
    /// call_end: wall-clock milliseconds from `call_start` to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// call_end: how many records were written for the call's processes (this one excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
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

/// A call's stated intent (`call_start.intent`). The digest always; the text up to a size
/// limit unless the scope keeps digests only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Intent {
    /// SHA-256 (hex) of the whole intent as given (bytes).
    pub sha256: String,
    /// The intent's text (lossy UTF-8), cut to the limit at a character boundary; omitted
    /// when the scope sets `evidence.intent: digest`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    /// `text` is shorter than the intent (cut at the limit). False when `text` is omitted.
    pub truncated: bool,
}

/// Default limit of `call_start.intent.text`, in bytes (`evidence.intent_max`).
pub const INTENT_MAX_DEFAULT: usize = 4096;

impl Intent {
    /// The record of `bytes` as an intent: its digest, and with `keep_text` its text cut to
    /// at most `max` bytes (never inside a character).
    pub fn new(bytes: &[u8], keep_text: bool, max: usize) -> Intent {
        let sha256 = super::chain::sha256_hex(bytes);
        if !keep_text {
            return Intent { sha256, text: None, truncated: false };
        }
        let full = String::from_utf8_lossy(bytes);
        let mut end = full.len().min(max);
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        Intent { sha256, text: Some(full[..end].to_string()), truncated: end < full.len() }
    }
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
    fn call_records_serialize_with_the_documented_names() {
        let start = AuditRecord {
            v: SCHEMA_VERSION,
            seq: 7,
            time: "t".into(),
            task: "job-1".into(),
            kind: crate::audit::Kind::CallStart,
            call: Some("job-1/c2".into()),
            call_name: Some("fetch".into()),
            parent: Some("job-1/c1".into()),
            depth: Some(2),
            cmd: Some(vec!["curl".into(), "x".into()]),
            cwd: Some("/work".into()),
            scope_hash: Some("ab".into()),
            intent: Some(Intent::new(b"get the page", true, 4096)),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&start).unwrap();
        assert_eq!(v["kind"], "call_start");
        assert_eq!(v["call"], "job-1/c2");
        assert_eq!(v["call_name"], "fetch");
        assert_eq!(v["parent"], "job-1/c1");
        assert_eq!(v["depth"], 2);
        assert_eq!(v["cwd"], "/work");
        assert_eq!(v["cmd"][0], "curl");
        assert_eq!(v["scope_hash"], "ab");
        assert_eq!(v["intent"]["text"], "get the page");
        assert_eq!(v["intent"]["truncated"], false);
        assert_eq!(v["intent"]["sha256"], crate::audit::chain::sha256_hex(b"get the page"));
        // The call fields sit right after `kind`, in this order.
        let s = serde_json::to_string(&start).unwrap();
        assert!(
            s.contains(
                r#""kind":"call_start","call":"job-1/c2","call_name":"fetch","parent":"job-1/c1","depth":2"#
            ),
            "{s}"
        );

        let end = AuditRecord {
            kind: crate::audit::Kind::CallEnd,
            call: Some("job-1/c2".into()),
            call_name: Some("fetch".into()),
            exit_status: Some(0),
            duration_ms: Some(12),
            events: Some(5),
            denials: Some(1),
            drops: Some(0),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&end).unwrap();
        for f in ["exit_status", "duration_ms", "events", "denials", "drops"] {
            assert!(v[f].is_u64() || v[f].is_i64(), "{f} missing: {v}");
        }
        assert!(v.get("signal").is_none() && v.get("intent").is_none() && v.get("parent").is_none());
        // Outside calls the fields are absent.
        let plain = serde_json::to_value(AuditRecord::default()).unwrap();
        assert!(plain.get("call").is_none() && plain.get("call_name").is_none());
    }

    #[test]
    fn intent_digest_text_and_truncation() {
        let d = Intent::new(b"secret plan", false, 4096);
        assert_eq!(d.text, None);
        assert!(!d.truncated);
        assert_eq!(d.sha256, crate::audit::chain::sha256_hex(b"secret plan"));
        let v = serde_json::to_value(&d).unwrap();
        assert!(v.get("text").is_none(), "digest mode omits the text: {v}");
        // Cut at the limit, never inside a character; the digest is of the whole intent.
        let t = Intent::new("aé".repeat(3).as_bytes(), true, 4);
        assert_eq!(t.text.as_deref(), Some("aéa"));
        assert!(t.truncated);
        assert_eq!(t.sha256, crate::audit::chain::sha256_hex("aé".repeat(3).as_bytes()));
        let exact = Intent::new(b"abcd", true, 4);
        assert_eq!((exact.text.as_deref(), exact.truncated), (Some("abcd"), false));
        // Not UTF-8: shown lossily, digested as given.
        let raw = Intent::new(&[0xff, b'a'], true, 4096);
        assert_eq!(raw.text.as_deref(), Some("\u{fffd}a"));
        assert_eq!(raw.sha256, crate::audit::chain::sha256_hex(&[0xff, b'a']));
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
