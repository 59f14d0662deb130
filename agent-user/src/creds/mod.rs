//! Credentials minted per task, handed only to their tool, really revoked.
//!
//! A scope's `exec:` and `token` secrets are *brokered*: Warden mints them when the task
//! starts ([`TaskCreds::mint`]), keeps the values in its own memory, and hands a value only to
//! a caller the kernel identifies as the secret's tool, through the task's broker
//! ([`broker`], caller identity in [`peer`]). When the task ends every credential is revoked:
//! an `exec:` secret by its `revoke:` command, a token by listing its `jti` as revoked
//! ([`revoke`]). A revocation that fails is persisted and retried with backoff until it lands,
//! across daemon restarts.
//!
//! Values never leave this module except to the broker's granted callers: everything else
//! (records, logs, errors, state files) carries the SHA-256 digest.
pub mod broker;
pub mod exec;
pub mod node;
pub mod peer;
pub mod revoke;
pub mod token;

use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use self::revoke::{Pending, RevokeQueue};
use crate::{
    audit::chain::NodeKey,
    scope::{IssuedSecret, Scope, SecretFrom, compile::FileId},
};

/// How long a brokered credential lives unless the scope says (`secrets[].ttl`).
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
/// How long a rotated-out credential stays valid, so a tool mid-request can finish.
pub const ROTATE_GRACE: Duration = Duration::from_secs(5);

/// A secret value: wiped from memory when dropped; its `Debug` shows only the digest.
#[derive(Clone)]
pub struct Value(Zeroizing<Vec<u8>>);

impl Value {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// SHA-256 of the value, hex: what records carry instead of it.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(&self.0[..]))
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Value(sha256:{})", self.digest())
    }
}

/// Errors minting credentials. Never carries a value (issuer output is not quoted).
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    #[error("secret `{name}`: the issuer {program} could not be run: {source}")]
    Spawn { name: String, program: String, source: std::io::Error },
    #[error(
        "secret `{name}`: the issuer {program} failed ({status}); its output is not shown because it may hold the value — see the issuer's own logs"
    )]
    Failed { name: String, program: String, status: String },
    #[error("secret `{name}`: the issuer {program} did not finish within {secs}s; it was killed")]
    Timeout { name: String, program: String, secs: u64 },
    #[error(
        "secret `{name}`: the issuer {program} printed {problem}; print the value, or JSON {{\"value\": ..., \"id\": ..., \"expires_at\": ...}}"
    )]
    Output { name: String, program: String, problem: String },
    #[error("secret `{name}`: tool {tool}: {source}")]
    Tool { name: String, tool: PathBuf, source: std::io::Error },
    #[error("secret `{name}`: {message}")]
    Other { name: String, message: String },
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Which provider minted a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Exec,
    Token,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Exec => "exec",
            Provider::Token => "token",
        }
    }
}

/// One credential, as the rest of Warden may see it (no value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredInfo {
    pub name: String,
    pub provider: Provider,
    /// SHA-256 of the value (hex).
    pub sha256: String,
    /// Unix seconds when it stops being valid at its issuer (if known).
    pub expires_at: Option<u64>,
    /// 0 for the first credential, +1 per rotation.
    pub generation: u32,
}

/// A minted credential: its value and what revokes it.
#[derive(Debug)]
pub struct Minted {
    pub info: CredInfo,
    pub value: Value,
    /// What undoes it at its issuer.
    pub revocation: Pending,
}

/// What a task's credentials are minted for.
pub struct MintCtx<'a> {
    pub task: &'a str,
    pub node: &'a str,
    pub scope_hash: &'a str,
    /// Unix seconds when the task's ttl ends it.
    pub task_expires_at: Option<u64>,
    pub key: &'a NodeKey,
    /// Where tokens say they come from (`iss`).
    pub issuer: &'a str,
}

/// One brokered secret of a task.
#[derive(Debug)]
pub struct Slot {
    pub spec: IssuedSecret,
    /// The identities of the tools it is handed to (resolved at task start).
    pub tools: Vec<FileId>,
    pub current: Minted,
    /// The current credential's held revocation in the queue.
    pub held: String,
    /// Unix seconds when it is next reissued.
    pub next_rotation: Option<u64>,
}

/// The brokered credentials of one task.
#[derive(Debug, Default)]
pub struct TaskCreds {
    pub task: String,
    pub slots: Vec<Slot>,
}

/// Mints one credential of `spec`.
pub fn mint_one(spec: &IssuedSecret, ctx: &MintCtx<'_>, generation: u32) -> Result<Minted, CredError> {
    let now = unix_now();
    let ttl = spec.ttl.unwrap_or(DEFAULT_CREDENTIAL_TTL).as_secs().max(1);
    let mut expires = now + ttl;
    if let Some(r) = spec.rotate {
        // A rotated credential lives until its successor's grace ends, no longer.
        expires = expires.min(now + r.as_secs() + ROTATE_GRACE.as_secs() + 1);
    }
    if let Some(t) = ctx.task_expires_at {
        expires = expires.min(t.max(now + 1));
    }
    match &spec.source {
        SecretFrom::Exec(argv) => exec::mint(&spec.name, argv, spec.revoke.as_deref(), ctx.task, generation),
        SecretFrom::Token => {
            let aud = spec.audience.as_deref().unwrap_or_default();
            let t = token::mint(ctx, &spec.name, aud, now, expires)?;
            Ok(Minted {
                info: CredInfo {
                    name: spec.name.clone(),
                    provider: Provider::Token,
                    sha256: t.value.digest(),
                    expires_at: Some(expires),
                    generation,
                },
                value: t.value,
                revocation: Pending::token(ctx.task, &spec.name, &t.jti, expires),
            })
        }
        SecretFrom::File(_) => Err(CredError::Other {
            name: spec.name.clone(),
            message: "file: secrets are not brokered".into(),
        }),
    }
}

impl TaskCreds {
    /// Mints every brokered secret of `scope`. On any failure, whatever was minted is
    /// revoked again (through `queue`, so a revoke that fails now is retried) and the error
    /// is returned: nothing half-minted is left.
    pub fn mint(scope: &Scope, ctx: &MintCtx<'_>, queue: &RevokeQueue) -> Result<Self, CredError> {
        let mut me = TaskCreds { task: ctx.task.to_string(), slots: Vec::new() };
        let r = (|| {
            for (spec, tools) in scope.brokered() {
                let mut ids = Vec::new();
                for t in tools {
                    ids.push(FileId::of(t).map_err(|source| CredError::Tool {
                        name: spec.name.clone(),
                        tool: t.clone(),
                        source,
                    })?);
                }
                let current = mint_one(spec, ctx, 0)?;
                let held = queue.hold(current.revocation.clone());
                let next_rotation = spec.rotate.map(|r| unix_now() + r.as_secs());
                me.slots.push(Slot { spec: spec.clone(), tools: ids, current, held, next_rotation });
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(me),
            Err(e) => {
                me.revoke_all(queue);
                Err(e)
            }
        }
    }

    /// The slot of secret `name`.
    pub fn get(&self, name: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.spec.name == name)
    }

    /// What records may say about the credentials.
    pub fn infos(&self) -> Vec<CredInfo> {
        self.slots.iter().map(|s| s.current.info.clone()).collect()
    }

    /// Reissues every credential whose rotation is due; the old one is queued for revocation
    /// after [`ROTATE_GRACE`]. Returns (rotated, failed) names; a failed reissue keeps the
    /// old credential and is tried again at the next call.
    pub fn rotate_due(
        &mut self,
        ctx: &MintCtx<'_>,
        queue: &RevokeQueue,
        now: u64,
    ) -> Vec<(String, Result<CredInfo, CredError>)> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            let (Some(at), Some(period)) = (slot.next_rotation, slot.spec.rotate) else { continue };
            if at > now {
                continue;
            }
            match mint_one(&slot.spec, ctx, slot.current.info.generation + 1) {
                Ok(new) => {
                    let held = queue.hold(new.revocation.clone());
                    slot.current = new;
                    let old = std::mem::replace(&mut slot.held, held);
                    queue.release(&old, now + ROTATE_GRACE.as_secs());
                    slot.next_rotation = Some(now + period.as_secs());
                    out.push((slot.spec.name.clone(), Ok(slot.current.info.clone())));
                }
                Err(e) => {
                    slot.next_rotation = Some(now + 1);
                    out.push((slot.spec.name.clone(), Err(e)));
                }
            }
        }
        out
    }

    /// Releases every credential's revocation (tried at once by the queue's worker) and
    /// forgets the values.
    pub fn revoke_all(&mut self, queue: &RevokeQueue) -> Vec<String> {
        let mut names = Vec::new();
        for slot in self.slots.drain(..) {
            names.push(slot.spec.name.clone());
            queue.release(&slot.held, 0);
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(text: &str) -> Result<Scope, crate::scope::ScopeError> {
        Scope::parse(text, std::path::Path::new("s.yaml"))
    }

    #[test]
    fn providers_parse_and_misuse_is_refused() {
        let s = scope(
            "version: 1\ntask: t\nsecrets:\n  - name: api\n    from: exec:/usr/bin/mint --ttl '15 m'\n    revoke: /usr/bin/revoke {id}\n    rotate: 10m\n    tools: [/usr/bin/curl]\n  - name: id\n    from: token\n    audience: https://ci.example.com\n    tools: [/usr/bin/python3]\n",
        )
        .unwrap();
        let b: Vec<_> = s.brokered().map(|(i, _)| i.clone()).collect();
        assert_eq!(b.len(), 2);
        assert_eq!(
            b[0].source,
            SecretFrom::Exec(vec!["/usr/bin/mint".into(), "--ttl".into(), "15 m".into()])
        );
        assert_eq!(b[0].revoke.as_deref(), Some(&["/usr/bin/revoke".to_string(), "{id}".into()][..]));
        assert_eq!(b[0].rotate, Some(Duration::from_secs(600)));
        assert_eq!(b[1].source, SecretFrom::Token);
        for bad in [
            // a token without an audience
            "version: 1\ntask: t\nsecrets:\n  - name: id\n    from: token\n    tools: [/bin/sh]\n",
            // revoke on a file secret
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    from: file:/x\n    revoke: /bin/true\n    tools: [/bin/sh]\n",
            // a relative issuer
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    from: exec:mint\n    tools: [/bin/sh]\n",
            // env on a brokered secret
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    from: exec:/bin/mint\n    env: A\n    tools: [/bin/sh]\n",
            // rotate on a file secret
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    from: file:/x\n    rotate: 1m\n    tools: [/bin/sh]\n",
            // unbalanced quotes
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    from: \"exec:/bin/mint 'x\"\n    tools: [/bin/sh]\n",
        ] {
            assert!(scope(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_failed_mint_revokes_what_was_minted_before_it() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("revoked");
        let key = NodeKey::load_or_create(&d.path().join("k")).unwrap();
        let text = format!(
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    from: exec:/bin/echo '{{\"value\":\"v\",\"id\":\"id-a\"}}'\n    revoke: /bin/sh -c 'echo {{id}} >> {}'\n    tools: [/bin/sh]\n  - name: b\n    from: exec:/bin/false\n    tools: [/bin/sh]\n",
            log.display()
        );
        let s = scope(&text).unwrap();
        let q = revoke::RevokeQueue::open(&d.path().join("q")).unwrap();
        let ctx = MintCtx {
            task: "t-1",
            node: "n",
            scope_hash: "h",
            task_expires_at: None,
            key: &key,
            issuer: "i",
        };
        let e = TaskCreds::mint(&s, &ctx, &q).unwrap_err();
        assert!(e.to_string().contains("secret `b`"), "{e}");
        assert!(q.wait_task("t-1", Duration::from_secs(10)));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "id-a\n");
    }

    #[test]
    fn the_broker_socket_is_writable_for_the_task_even_below_a_write_restriction() {
        let d = tempfile::tempdir().unwrap();
        let mut s = scope(
            "version: 1\ntask: t\nfiles:\n  write: [/tmp]\nsecrets:\n  - name: id\n    from: token\n    audience: a\n    tools: [/bin/sh]\n",
        )
        .unwrap();
        s.place_issued_secrets(d.path());
        let sock = d.path().join(broker::SOCKET_NAME);
        assert_eq!(s.broker.as_deref(), Some(sock.as_path()));
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let c = crate::scope::compile::CompiledScope::compile(&s).unwrap();
        assert!(c.landlock.write.contains(&sock), "{:?}", c.landlock.write);
        // Brokered secrets are no file rules and leave nothing unenforced.
        assert!(c.secrets.is_empty());
        assert!(c.unenforced(false).is_empty());
    }

    #[test]
    fn value_debug_shows_only_the_digest() {
        let v = Value::new(b"hunter2-value".to_vec());
        let d = format!("{v:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains(&v.digest()));
    }
}
