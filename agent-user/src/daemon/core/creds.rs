//! Brokered credentials under the daemon: the token endpoint's state, broker answers and
//! revocation outcomes as `secret` records, rotation.
use std::sync::Arc;

use super::Core;
use crate::{
    audit::{AuditRecord, Decision},
    creds::{broker::SecretEvent, node::TokenEndpoint},
};

impl Core {
    /// The JWKS and revoked-token endpoint's state.
    pub fn token_endpoint(&self) -> TokenEndpoint {
        TokenEndpoint { jwks: Arc::new(self.creds.jwks()), queue: self.creds.queue.clone() }
    }

    /// A broker answer as a `secret` record.
    pub(super) fn record_secret(&mut self, ev: SecretEvent) {
        if !self.tasks.contains_key(&ev.task) {
            return;
        }
        if !ev.granted {
            tracing::warn!(task = %ev.task, secret = %ev.name, pid = ?ev.pid, reason = %ev.reason, "refused a secret");
        }
        let rec = AuditRecord {
            time: self.now(),
            task: ev.task,
            kind: crate::audit::Kind::Secret,
            decision: Some(if ev.granted { Decision::Allow } else { Decision::Deny }),
            pid: ev.pid,
            exe: ev.exe,
            action: (!ev.granted).then_some("refuse"),
            rule: (!ev.granted).then_some("secrets"),
            ancestry: Some(ev.ancestry),
            reason: Some(ev.reason),
            op: Some("get"),
            secret: Some(ev.name),
            sha256: ev.sha256,
            ..Default::default()
        };
        self.emit(rec);
    }

    /// Revocation outcomes of running tasks (rotations) as `secret` records; a task's own
    /// end records its final ones, and outcomes of tasks already ended are in the daemon's
    /// log (their chains are closed).
    pub(super) fn record_revocations(&mut self) {
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            for ev in self.creds.queue.take_events_of(&id) {
                let reason = ev.describe();
                let rec = AuditRecord {
                    time: self.now(),
                    task: ev.task,
                    kind: crate::audit::Kind::Secret,
                    decision: Some(if ev.error.is_none() { Decision::Allow } else { Decision::Deny }),
                    op: Some("revoke"),
                    reason: Some(reason),
                    secret: Some(ev.name),
                    ..Default::default()
                };
                self.emit(rec);
            }
        }
        // Outcomes of ended tasks: logged by the queue, not kept.
        let _ = self.creds.queue.take_events();
    }

    /// Reissues credentials whose rotation is due.
    pub(super) fn rotate_credentials(&mut self) {
        let mut records = Vec::new();
        for (id, t) in &mut self.tasks {
            let Some(h) = &t.run.task.creds else { continue };
            let rotated = self.creds.rotate(h);
            if rotated.is_empty() {
                continue;
            }
            let infos = h.infos();
            for (name, r) in rotated {
                let (decision, sha256, reason) = match r {
                    Ok(info) => (
                        Decision::Allow,
                        Some(info.sha256),
                        format!("reissued (generation {})", info.generation),
                    ),
                    Err(e) => {
                        (Decision::Deny, None, format!("reissue failed, the current credential stays: {e}"))
                    }
                };
                records.push(AuditRecord {
                    task: id.clone(),
                    kind: crate::audit::Kind::Secret,
                    decision: Some(decision),
                    op: Some("rotate"),
                    secret: Some(name),
                    sha256,
                    reason: Some(reason),
                    ..Default::default()
                });
            }
            t.run.task.credentials = infos.clone();
            t.info.credentials = infos;
        }
        for mut r in records {
            r.time = self.now();
            let id = r.task.clone();
            self.emit(r);
            self.persist(&id);
        }
    }
}
