//! The ring-buffer consumer of configurations (b) and (c): a thread that waits on the live
//! ring buffer through `agent_user::source::RingBufSource`, drains it, decodes every record
//! with `agent_user::decode` and tallies what arrived, as the real pipeline's first stages do.
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agent_common::abi::EventHeader;
use agent_user::{
    decode::{Decoder, Event},
    source::{EventSource as _, RingBufSource},
};
use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};

use crate::workload::boot_ns;

/// What the consumer saw since the last [`Consumer::take`].
#[derive(Debug, Default)]
pub struct Tally {
    /// Records drained from the ring.
    pub records: u64,
    /// Records `agent_user::decode` rejected.
    pub undecodable: u64,
    /// `ktime_ns` of every record whose header could be read.
    pub ktimes: Vec<u64>,
    /// Per record: time from the kernel event to the end of the drain that delivered it.
    pub latency_ns: Vec<u64>,
    /// Thread-group ids of the exit records.
    pub exits: HashSet<u32>,
    /// cgroup ids of the exec records.
    pub exec_cgroups: HashSet<u64>,
}

impl Tally {
    fn add(&mut self, batch: &mut Batch, delivered_at: u64) {
        self.records += batch.records;
        self.undecodable += batch.undecodable;
        self.latency_ns.extend(batch.ktimes.iter().map(|&k| delivered_at.saturating_sub(k)));
        self.ktimes.append(&mut batch.ktimes);
        self.exits.extend(batch.exits.drain());
        self.exec_cgroups.extend(batch.exec_cgroups.drain());
        batch.records = 0;
        batch.undecodable = 0;
    }

    /// Records whose kernel time falls inside `[start, end]`.
    pub fn in_window(&self, start: u64, end: u64) -> u64 {
        self.ktimes.iter().filter(|&&k| k >= start && k <= end).count() as u64
    }
}

/// One drain's worth, gathered without holding the shared lock.
#[derive(Default)]
struct Batch {
    records: u64,
    undecodable: u64,
    ktimes: Vec<u64>,
    exits: HashSet<u32>,
    exec_cgroups: HashSet<u64>,
}

/// A running consumer thread. Stop it with [`Consumer::stop`].
pub struct Consumer {
    tally: Arc<Mutex<Tally>>,
    pause: Arc<Pause>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Consumer {
    /// Starts draining `ring`; returns once the thread is waiting on it. With a `poll`
    /// interval the thread also drains on that timer, for kernels that submit records without
    /// waking the reader (`BPF_RB_NO_WAKEUP`).
    pub fn start(ring: RingBuf<MapData>, poll: Option<Duration>) -> anyhow::Result<Self> {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let shared = tally.clone();
        let pause = Arc::new(Pause::default());
        let paused = pause.clone();
        let thread = std::thread::Builder::new()
            .name("ring-consumer".into())
            .spawn(move || consume(ring, shared, paused, poll, stop_rx, ready_tx))
            .context("spawn the ring consumer thread")?;
        let mut me = Self { tally, pause, stop: Some(stop_tx), thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => Err(e.context("ring consumer could not start")),
            Err(_) => {
                Err(me.stop().err().unwrap_or_else(|| anyhow::anyhow!("ring consumer exited at start")))
            }
        }
    }

    /// Stops draining (diagnostic): records stay in the ring until [`Consumer::resume`], so the
    /// workload pays only the kernel side. A full ring drops records meanwhile.
    pub fn pause(&self) {
        self.pause.paused.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.pause.paused.store(false, Ordering::SeqCst);
        self.pause.resume.notify_one();
    }

    /// Takes everything tallied so far, leaving an empty tally.
    pub fn take(&self) -> Tally {
        std::mem::take(&mut *self.tally.lock().expect("tally lock"))
    }

    /// Waits until `pred` holds for the tally (checked every millisecond) or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&Tally) -> bool) -> bool {
        let start = Instant::now();
        loop {
            if pred(&self.tally.lock().expect("tally lock")) {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the thread (after a last drain) and reports its errors.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow::anyhow!("ring consumer panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Pause switch of a consumer.
#[derive(Default)]
struct Pause {
    paused: AtomicBool,
    resume: tokio::sync::Notify,
}

fn consume(
    ring: RingBuf<MapData>,
    tally: Arc<Mutex<Tally>>,
    pause: Arc<Pause>,
    poll: Option<Duration>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    ready: mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(anyhow::Error::new(e).context("tokio runtime")));
            bail!("no tokio runtime");
        }
    };
    rt.block_on(async move {
        let mut src = match RingBufSource::new(ring) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(anyhow::Error::new(e).context("register the ring buffer with epoll")));
                bail!("cannot wait on the ring buffer");
            }
        };
        let _ = ready.send(Ok(()));
        let mut decoder = Decoder::default();
        let mut batch = Batch::default();
        loop {
            let mut stopping = tokio::select! {
                r = src.wait() => { r.context("waiting on the ring buffer")?; false }
                _ = tokio::time::sleep(poll.unwrap_or_default()), if poll.is_some() => false,
                _ = &mut stop => true,
            };
            while !stopping && pause.paused.load(Ordering::SeqCst) {
                tokio::select! {
                    _ = pause.resume.notified() => {}
                    _ = &mut stop => stopping = true,
                }
            }
            src.drain(&mut |bytes| record(&mut decoder, &mut batch, bytes));
            tally.lock().expect("tally lock").add(&mut batch, boot_ns());
            if stopping {
                return Ok(());
            }
        }
    })
}

fn record(decoder: &mut Decoder, batch: &mut Batch, bytes: &[u8]) {
    batch.records += 1;
    if bytes.len() >= size_of::<EventHeader>() {
        // SAFETY: length checked; EventHeader is `#[repr(C)]` integers, valid for any bits.
        let hdr: EventHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        batch.ktimes.push(hdr.ktime_ns);
    }
    match decoder.decode(bytes) {
        Ok(Event::Exit { proc, .. }) => {
            batch.exits.insert(proc.tgid);
        }
        Ok(Event::Exec { meta, .. }) => {
            batch.exec_cgroups.insert(meta.cgroup_id);
        }
        Ok(_) => {}
        Err(_) => batch.undecodable += 1,
    }
}
