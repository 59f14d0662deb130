//! Revocation as persisted state: every credential to revoke is a file in
//! `<state_dir>/revocations/` until its revocation has landed, so a revoke that fails (the
//! issuer is down) is retried with backoff — also by the next daemon after a crash.
//!
//! Tokens are revoked by listing their `jti` ([`RevokeQueue::revoked_jtis`], served with the
//! JWKS) until they expire; that list is persisted too (`revoked-jti.json`).
use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{exec, unix_now};

/// First retry delay; doubled per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What undoes a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    /// Run this command (the scope's `revoke:` with `{id}` replaced).
    Exec { argv: Vec<String> },
    /// List this token id as revoked until it expires.
    Token { jti: String, exp: u64 },
    /// The scope gives no way to revoke it (an `exec:` secret without `revoke:`).
    Nothing,
}

/// One revocation, pending until it lands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub task: String,
    pub name: String,
    pub action: Action,
    /// Not before this Unix second (a rotated-out credential's grace period).
    #[serde(default)]
    pub not_before: u64,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// Next attempt, Unix milliseconds.
    #[serde(default)]
    pub next_at_ms: u64,
    /// Why the last attempt failed (never command output).
    #[serde(default)]
    pub last_error: Option<String>,
    /// Held: the credential is live; written at mint so that a daemon that dies still
    /// knows what to revoke. Released at task end (or rotation), then tried.
    #[serde(default)]
    pub held: bool,
}

impl Pending {
    fn new(task: &str, name: &str, action: Action) -> Self {
        Self {
            task: task.into(),
            name: name.into(),
            action,
            not_before: 0,
            attempts: 0,
            next_at_ms: 0,
            last_error: None,
            held: false,
        }
    }
    pub fn exec(task: &str, name: &str, argv: Vec<String>) -> Self {
        Self::new(task, name, Action::Exec { argv })
    }
    pub fn token(task: &str, name: &str, jti: &str, exp: u64) -> Self {
        Self::new(task, name, Action::Token { jti: jti.into(), exp })
    }
    pub fn nothing(task: &str, name: &str) -> Self {
        Self::new(task, name, Action::Nothing)
    }
    /// The same revocation, not before Unix second `t`.
    pub fn not_before(mut self, t: u64) -> Self {
        self.not_before = t;
        self
    }
}

/// What became of a revocation (for records and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeEvent {
    pub task: String,
    pub name: String,
    /// `None`: landed. `Some(why)`: failed, retried after `retry_in`.
    pub error: Option<String>,
    pub attempts: u32,
    pub retry_in: Option<Duration>,
}

impl RevokeEvent {
    /// The outcome in words, for the `secret` record's `reason`.
    pub fn describe(&self) -> String {
        match (&self.error, self.retry_in) {
            (None, _) => format!("revoked (attempt {})", self.attempts),
            (Some(e), Some(d)) => {
                format!("revocation failed (attempt {}): {e}; retried in {}ms", self.attempts, d.as_millis())
            }
            (Some(e), None) => e.clone(),
        }
    }
}

#[derive(Default)]
struct Inner {
    /// File stem → pending exec revocation.
    pending: BTreeMap<String, Pending>,
    /// Which stems a worker is running right now.
    running: Vec<String>,
    /// jti → exp.
    revoked: BTreeMap<String, u64>,
    events: Vec<RevokeEvent>,
    counter: u64,
    stop: bool,
}

/// The persisted revocation queue. One per daemon (or `warden run`).
pub struct RevokeQueue {
    dir: PathBuf,
    inner: Mutex<Inner>,
    wake: Condvar,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename), mode 0600.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(d) = path.parent()
        && let Ok(d) = fs::File::open(d)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

impl RevokeQueue {
    /// Opens (creating, 0700) the queue in `dir` and loads what a previous run left.
    /// Unreadable entries are logged and kept on disk for a person to look at.
    pub fn open(dir: &Path) -> io::Result<Arc<Self>> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let mut inner = Inner::default();
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else { continue };
            if path.extension().is_some_and(|x| x == "tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if stem == "revoked-jti" {
                match fs::read(&path).map(|b| serde_json::from_slice::<BTreeMap<String, u64>>(&b)) {
                    Ok(Ok(m)) => inner.revoked = m,
                    _ => {
                        tracing::error!(file = %path.display(), "unreadable revoked-jti list; starting a new one")
                    }
                }
                continue;
            }
            match fs::read(&path).map(|b| serde_json::from_slice::<Pending>(&b)) {
                Ok(Ok(mut p)) => {
                    // A new daemon tries at once.
                    p.next_at_ms = 0;
                    inner.counter += 1;
                    inner.pending.insert(stem, p);
                }
                _ => tracing::error!(file = %path.display(), "unreadable pending revocation; left in place"),
            }
        }
        Ok(Arc::new(Self { dir: dir.to_path_buf(), inner: Mutex::new(inner), wake: Condvar::new() }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save_revoked(&self, inner: &Inner) {
        let path = self.dir.join("revoked-jti.json");
        let bytes = serde_json::to_vec(&inner.revoked).unwrap_or_default();
        if let Err(e) = write_atomic(&path, &bytes) {
            tracing::error!(file = %path.display(), error = %e, "cannot persist the revoked-jti list");
        }
    }

    fn persist(&self, stem: &str, p: &Pending) {
        let path = self.dir.join(format!("{stem}.json"));
        let bytes = serde_json::to_vec(p).unwrap_or_default();
        if let Err(e) = write_atomic(&path, &bytes) {
            // Still retried by this process; only a crash would lose it.
            tracing::error!(file = %path.display(), error = %e, "cannot persist a pending revocation");
        }
    }

    fn new_stem(inner: &mut Inner, p: &Pending) -> String {
        inner.counter += 1;
        format!("{}-{}-{}-{}", p.task, p.name, now_ms(), inner.counter)
    }

    /// Records a live credential's revocation, held until [`RevokeQueue::release`]: on disk
    /// before this returns. Returns its handle.
    pub fn hold(&self, mut p: Pending) -> String {
        p.held = true;
        let mut inner = self.lock();
        let stem = Self::new_stem(&mut inner, &p);
        self.persist(&stem, &p);
        inner.pending.insert(stem.clone(), p);
        stem
    }

    /// Releases a held revocation: it is tried from Unix second `not_before` on.
    pub fn release(&self, stem: &str, not_before: u64) {
        let Some(mut p) = self.lock().pending.remove(stem) else { return };
        let _ = fs::remove_file(self.dir.join(format!("{stem}.json")));
        p.held = false;
        p.not_before = not_before;
        self.push_as(stem.to_string(), p);
    }

    /// Releases every held revocation of `task` (the task ended, or a restarted daemon
    /// found it gone or could not keep its values). Returns how many.
    pub fn release_task(&self, task: &str) -> usize {
        let stems: Vec<String> = self
            .lock()
            .pending
            .iter()
            .filter(|(_, p)| p.held && p.task == task)
            .map(|(s, _)| s.clone())
            .collect();
        for s in &stems {
            self.release(s, 0);
        }
        stems.len()
    }

    /// Tasks with held (live) credentials.
    pub fn held_tasks(&self) -> Vec<String> {
        let mut v: Vec<String> =
            self.lock().pending.values().filter(|p| p.held).map(|p| p.task.clone()).collect();
        v.dedup();
        v
    }

    /// Queues a revocation: persisted before this returns. Tokens and unrevocable
    /// credentials land at once.
    pub fn push(&self, p: Pending) {
        let stem = Self::new_stem(&mut self.lock(), &p);
        self.push_as(stem, p);
    }

    fn push_as(&self, stem: String, p: Pending) {
        if p.held {
            let mut inner = self.lock();
            self.persist(&stem, &p);
            inner.pending.insert(stem, p);
            return;
        }
        let mut inner = self.lock();
        match &p.action {
            Action::Token { jti, exp } => {
                inner.revoked.insert(jti.clone(), *exp);
                self.save_revoked(&inner);
                inner.events.push(RevokeEvent {
                    task: p.task.clone(),
                    name: p.name.clone(),
                    error: None,
                    attempts: 1,
                    retry_in: None,
                });
            }
            Action::Nothing => inner.events.push(RevokeEvent {
                task: p.task.clone(),
                name: p.name.clone(),
                error: Some(
                    "the scope gives no `revoke:` command; the credential stays valid at its issuer".into(),
                ),
                attempts: 0,
                retry_in: None,
            }),
            Action::Exec { .. } => {
                self.persist(&stem, &p);
                inner.pending.insert(stem, p);
                self.wake.notify_all();
            }
        }
    }

    /// Released revocations not landed yet, as (task, name, attempts).
    pub fn pending(&self) -> Vec<(String, String, u32)> {
        self.lock()
            .pending
            .values()
            .filter(|p| !p.held)
            .map(|p| (p.task.clone(), p.name.clone(), p.attempts))
            .collect()
    }

    /// Token ids revoked and not yet expired (expired ones are dropped from the list).
    pub fn revoked_jtis(&self) -> Vec<String> {
        let now = unix_now();
        let mut inner = self.lock();
        let before = inner.revoked.len();
        inner.revoked.retain(|_, exp| *exp >= now);
        if inner.revoked.len() != before {
            self.save_revoked(&inner);
        }
        inner.revoked.keys().cloned().collect()
    }

    /// What happened since the last call.
    pub fn take_events(&self) -> Vec<RevokeEvent> {
        std::mem::take(&mut self.lock().events)
    }

    /// What happened to `task`'s revocations since the last call.
    pub fn take_events_of(&self, task: &str) -> Vec<RevokeEvent> {
        let mut inner = self.lock();
        let (mine, rest) = std::mem::take(&mut inner.events).into_iter().partition(|e| e.task == task);
        inner.events = rest;
        mine
    }

    /// Attempts every due revocation once (commands run without the lock held).
    pub fn run_due(&self) {
        let (now_s, now) = (unix_now(), now_ms());
        let due: Vec<(String, Pending)> = {
            let mut inner = self.lock();
            let due: Vec<(String, Pending)> = inner
                .pending
                .iter()
                .filter(|(s, p)| {
                    !p.held && p.not_before <= now_s && p.next_at_ms <= now && !inner.running.contains(s)
                })
                .map(|(s, p)| (s.clone(), p.clone()))
                .collect();
            inner.running.extend(due.iter().map(|(s, _)| s.clone()));
            due
        };
        for (stem, p) in due {
            let result = match &p.action {
                Action::Exec { argv } => {
                    let env = [("WARDEN_TASK", p.task.as_str()), ("WARDEN_SECRET_NAME", p.name.as_str())];
                    match exec::run(argv, &env, exec::REVOKE_TIMEOUT) {
                        Ok(exec::Outcome::Exited(s, _)) if s.success() => Ok(()),
                        Ok(exec::Outcome::Exited(s, _)) => Err(format!("{} failed ({s})", argv[0])),
                        Ok(exec::Outcome::TimedOut) => Err(format!(
                            "{} did not finish within {}s",
                            argv[0],
                            exec::REVOKE_TIMEOUT.as_secs()
                        )),
                        Err(e) => Err(format!("{} could not be run: {e}", argv[0])),
                    }
                }
                _ => Ok(()),
            };
            let mut inner = self.lock();
            inner.running.retain(|s| s != &stem);
            let path = self.dir.join(format!("{stem}.json"));
            match result {
                Ok(()) => {
                    inner.pending.remove(&stem);
                    let _ = fs::remove_file(&path);
                    tracing::info!(task = %p.task, secret = %p.name, attempts = p.attempts + 1, "credential revoked");
                    inner.events.push(RevokeEvent {
                        task: p.task,
                        name: p.name,
                        error: None,
                        attempts: p.attempts + 1,
                        retry_in: None,
                    });
                }
                Err(why) => {
                    let attempts = p.attempts + 1;
                    let delay = BACKOFF_BASE
                        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
                        .min(BACKOFF_MAX);
                    if let Some(e) = inner.pending.get_mut(&stem) {
                        e.attempts = attempts;
                        e.next_at_ms = now_ms() + delay.as_millis() as u64;
                        e.last_error = Some(why.clone());
                        let bytes = serde_json::to_vec(&*e).unwrap_or_default();
                        let _ = write_atomic(&path, &bytes);
                    }
                    tracing::warn!(task = %p.task, secret = %p.name, attempts, error = %why, retry_in_ms = delay.as_millis() as u64, "revocation failed; will retry");
                    inner.events.push(RevokeEvent {
                        task: p.task,
                        name: p.name,
                        error: Some(why),
                        attempts,
                        retry_in: Some(delay),
                    });
                }
            }
        }
    }

    /// Blocks until every pending revocation of `task` landed or `timeout` passed; true if
    /// none is left.
    pub fn wait_task(&self, task: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.run_due();
            if !self.lock().pending.values().any(|p| p.task == task && !p.held && p.not_before <= unix_now())
            {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the worker thread that retries due revocations until [`RevokeQueue::stop`].
    pub fn spawn_worker(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("warden-revoke".into())
            .spawn(move || {
                loop {
                    me.run_due();
                    let inner = me.lock();
                    if inner.stop {
                        break;
                    }
                    let _ = me.wake.wait_timeout(inner, Duration::from_millis(250));
                }
            })
            .expect("spawning the revocation worker")
    }

    /// Stops the worker (pending revocations stay on disk for the next run).
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_revoke_is_retried_from_disk_until_it_lands() {
        let d = tempfile::tempdir().unwrap();
        let flag = d.path().join("issuer-up");
        let script = format!("test -e {}", flag.display());
        let q = RevokeQueue::open(&d.path().join("q")).unwrap();
        q.push(Pending::exec("t-1", "api", vec!["/bin/sh".into(), "-c".into(), script]));
        q.run_due();
        assert_eq!(q.pending().len(), 1, "issuer down: still pending");
        let ev = q.take_events();
        assert_eq!(ev.len(), 1);
        assert!(ev[0].error.as_deref().unwrap().contains("exit status: 1"), "{ev:?}");
        assert_eq!(ev[0].retry_in, Some(BACKOFF_BASE));
        // A new process (daemon restart) finds it on disk and tries at once.
        drop(q);
        let q = RevokeQueue::open(&d.path().join("q")).unwrap();
        assert_eq!(q.pending(), vec![("t-1".to_string(), "api".to_string(), 1)]);
        q.run_due();
        assert_eq!(q.pending().len(), 1);
        fs::write(&flag, b"").unwrap();
        assert!(q.wait_task("t-1", Duration::from_secs(10)));
        assert!(q.pending().is_empty());
        assert_eq!(fs::read_dir(d.path().join("q")).unwrap().count(), 0, "nothing left on disk");
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let d = tempfile::tempdir().unwrap();
        let q = RevokeQueue::open(d.path()).unwrap();
        q.push(Pending::exec("t", "n", vec!["/bin/false".into()]));
        let mut delays = Vec::new();
        for _ in 0..8 {
            q.lock().pending.values_mut().for_each(|p| p.next_at_ms = 0);
            q.run_due();
            delays.extend(q.take_events().into_iter().filter_map(|e| e.retry_in));
        }
        assert_eq!(delays[0], BACKOFF_BASE);
        assert_eq!(delays[1], BACKOFF_BASE * 2);
        assert_eq!(delays[2], BACKOFF_BASE * 4);
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
    }

    #[test]
    fn revoked_tokens_are_listed_until_they_expire_and_persist() {
        let d = tempfile::tempdir().unwrap();
        let q = RevokeQueue::open(d.path()).unwrap();
        q.push(Pending::token("t", "id", "jti-live", unix_now() + 60));
        q.push(Pending::token("t", "id", "jti-old", unix_now() - 1));
        assert_eq!(q.revoked_jtis(), vec!["jti-live".to_string()]);
        drop(q);
        let q = RevokeQueue::open(d.path()).unwrap();
        assert_eq!(q.revoked_jtis(), vec!["jti-live".to_string()]);
    }

    #[test]
    fn held_revocations_survive_a_restart_and_run_only_when_released() {
        let d = tempfile::tempdir().unwrap();
        let q = RevokeQueue::open(d.path()).unwrap();
        let stem = q.hold(Pending::exec("t-1", "a", vec!["/bin/true".into()]));
        q.hold(Pending::token("t-1", "b", "jti-1", unix_now() + 60));
        q.run_due();
        assert!(q.pending().is_empty(), "held: not tried");
        assert!(q.revoked_jtis().is_empty());
        drop(q);
        let q = RevokeQueue::open(d.path()).unwrap();
        assert_eq!(q.held_tasks(), vec!["t-1".to_string()]);
        assert_eq!(q.release_task("t-1"), 2);
        assert_eq!(q.revoked_jtis(), vec!["jti-1".to_string()]);
        assert!(q.wait_task("t-1", Duration::from_secs(5)));
        assert!(q.held_tasks().is_empty());
        q.release(&stem, 0);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "only the revoked-jti list is left");
    }

    #[test]
    fn grace_period_defers_the_revoke() {
        let d = tempfile::tempdir().unwrap();
        let q = RevokeQueue::open(d.path()).unwrap();
        q.push(Pending::exec("t", "n", vec!["/bin/true".into()]).not_before(unix_now() + 3600));
        q.run_due();
        assert_eq!(q.pending().len(), 1);
    }
}
