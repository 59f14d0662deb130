//! NATS JetStream sink for fleet scale: at-least-once, spooled to disk, never silent loss.
//!
//! `write` only appends the sealed line to a spool file. A publisher thread tails the spool,
//! publishes each line to `warden.events.<node>.<task>` with `Nats-Msg-Id: <task>:<seq>` (so
//! the server drops duplicates after a reconnect), and advances a persisted offset only after
//! JetStream acknowledged the message. While the server is unreachable lines wait in the
//! spool; after a reconnect (or in a later `warden nats flush`) they are published in order.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{AuditRecord, AuditSink};

/// The JetStream stream Warden publishes to.
pub const STREAM: &str = "WARDEN";
/// Subjects of the stream.
pub const SUBJECTS: &str = "warden.events.>";

/// Where a spool stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStatus {
    /// Lines acknowledged by the server.
    pub published: u64,
    /// Lines still waiting in the spool.
    pub pending: u64,
}

/// A NATS subject token from a name: `.`, `*`, `>` and spaces are not allowed in tokens.
pub fn subject_token(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

fn offset_path(spool: &Path) -> PathBuf {
    let mut p = spool.as_os_str().to_owned();
    p.push(".offset");
    PathBuf::from(p)
}

fn read_offset(spool: &Path) -> u64 {
    fs::read_to_string(offset_path(spool)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn write_offset(spool: &Path, off: u64) -> io::Result<()> {
    let tmp = offset_path(spool).with_extension("offset.tmp");
    fs::write(&tmp, off.to_string())?;
    fs::rename(tmp, offset_path(spool))
}

/// Publishes the spool from its persisted offset until `stop` says no more lines will come and
/// nothing is left, or until `give_up` is set or `deadline` passes. Reconnects with backoff;
/// never skips a line.
pub fn publish_spool(
    url: &str,
    node: &str,
    spool: &Path,
    stop: &AtomicBool,
    give_up: &AtomicBool,
    published: &AtomicU64,
    deadline: Option<Instant>,
) -> io::Result<SpoolStatus> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut offset = read_offset(spool);
        let mut backoff = Duration::from_millis(100);
        'connect: loop {
            if give_up.load(Ordering::Acquire) || deadline.is_some_and(|d| Instant::now() > d) {
                break;
            }
            let client = match async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_secs(2))
                .max_reconnects(Some(0))
                .connect(url)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "nats unreachable; spooling");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let js = async_nats::jetstream::new(client);
            let cfg = async_nats::jetstream::stream::Config {
                name: STREAM.into(),
                subjects: vec![SUBJECTS.into()],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            if let Err(e) = js.get_or_create_stream(cfg).await {
                tracing::debug!(error = %e, "nats stream unavailable; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
            let mut f = File::open(spool)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    // Nothing complete to send: finished, or wait for more.
                    if stop.load(Ordering::Acquire) {
                        break 'connect;
                    }
                    if n > 0 {
                        reader.seek(SeekFrom::Start(offset))?;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let body = line.trim_end_matches('\n');
                let rec: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                let task = rec["task"].as_str().unwrap_or("unknown").to_string();
                let seq = rec["seq"].as_u64().unwrap_or(0);
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{task}:{seq}").as_str());
                let subject = format!("warden.events.{}.{}", subject_token(node), subject_token(&task));
                let acked = async {
                    let fut =
                        js.publish_with_headers(subject, headers, body.to_string().into()).await.ok()?;
                    tokio::time::timeout(Duration::from_secs(5), fut).await.ok()?.ok()
                }
                .await;
                if acked.is_none() {
                    tracing::debug!("nats publish not acknowledged; reconnecting");
                    continue 'connect;
                }
                offset += n as u64;
                write_offset(spool, offset)?;
                published.fetch_add(1, Ordering::AcqRel);
            }
        }
        let pending = count_lines_from(spool, offset)?;
        Ok(SpoolStatus { published: published.load(Ordering::Acquire), pending })
    })
}

fn count_lines_from(spool: &Path, offset: u64) -> io::Result<u64> {
    let mut f = File::open(spool)?;
    f.seek(SeekFrom::Start(offset))?;
    Ok(BufReader::new(f).lines().count() as u64)
}

/// A sink that spools and publishes in the background.
pub struct NatsSink {
    spool: io::BufWriter<File>,
}

/// Controls the publisher of a [`NatsSink`] after the sink itself was handed to a pipeline.
pub struct NatsHandle {
    stop: Arc<AtomicBool>,
    give_up: Arc<AtomicBool>,
    published: Arc<AtomicU64>,
    worker: Option<JoinHandle<io::Result<SpoolStatus>>>,
}

impl NatsSink {
    /// Starts publishing `spool` (created if missing; earlier unsent lines go first) to `url`.
    pub fn start(url: &str, node: &str, spool: &Path) -> io::Result<(Self, NatsHandle)> {
        if let Some(d) = spool.parent() {
            fs::create_dir_all(d)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(spool)?;
        let stop = Arc::new(AtomicBool::new(false));
        let give_up = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicU64::new(0));
        let (url, node, path) = (url.to_string(), node.to_string(), spool.to_path_buf());
        let (s, g, p) = (stop.clone(), give_up.clone(), published.clone());
        let worker = std::thread::Builder::new()
            .name("warden-nats".into())
            .spawn(move || publish_spool(&url, &node, &path, &s, &g, &p, None))?;
        Ok((
            Self { spool: io::BufWriter::new(file) },
            NatsHandle { stop, give_up, published, worker: Some(worker) },
        ))
    }
}

impl NatsHandle {
    /// Waits up to `wait` for everything spooled (flush the sink first) to be acknowledged;
    /// what is not stays in the spool, reported as pending, for `warden nats flush`.
    pub fn close(mut self, wait: Duration) -> io::Result<SpoolStatus> {
        let deadline = Instant::now() + wait;
        let worker = self.worker.take();
        // Let the worker drain: it stops once the spool is fully published.
        self.stop.store(true, Ordering::Release);
        if let Some(w) = worker {
            while !w.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if w.is_finished() {
                return w.join().map_err(|_| io::Error::other("nats publisher panicked"))?;
            }
            // Out of time: stop retrying; the unsent lines stay in the spool.
            self.give_up.store(true, Ordering::Release);
            let grace = Instant::now() + Duration::from_secs(3);
            while !w.is_finished() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(20));
            }
            if w.is_finished() {
                return w.join().map_err(|_| io::Error::other("nats publisher panicked"))?;
            }
        }
        // Still trying: report what is known; the thread ends with the process.
        Ok(SpoolStatus { published: self.published.load(Ordering::Acquire), pending: u64::MAX })
    }
}

impl AuditSink for NatsSink {
    fn write(&mut self, _record: &AuditRecord, line: &str) -> io::Result<()> {
        self.spool.write_all(line.as_bytes())?;
        self.spool.write_all(b"\n")
    }
    fn flush(&mut self) -> io::Result<()> {
        self.spool.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_are_safe() {
        assert_eq!(subject_token("build.report-1 x>*"), "build_report-1_x__");
    }

    #[test]
    fn offsets_persist() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("spool.jsonl");
        assert_eq!(read_offset(&s), 0);
        write_offset(&s, 42).unwrap();
        assert_eq!(read_offset(&s), 42);
        fs::write(&s, "a\nb\nc\n").unwrap();
        assert_eq!(count_lines_from(&s, 2).unwrap(), 2);
    }
}
