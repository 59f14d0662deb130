//! The hand-off between draining the kernel ring and everything after it.
//!
//! [`Handoff`] runs a source (the live ring buffer) on its own thread, whose only job is to
//! move records out of the kernel's ring into a bounded lock-free single-producer,
//! single-consumer byte ring (`ringbuf`), as length-prefixed frames. The pipeline (decode,
//! correlate, rules, sinks) consumes from that ring through the same [`EventSource`] trait.
//! So draining the kernel never waits on rules or on a slow sink: when the pipeline falls
//! behind, records wait in the hand-off ring instead of filling the kernel's; when that is full
//! too, the record is dropped **and counted** ([`Handoff::overflow`]), and the caller turns
//! the count into a `gap` record like the kernel's own drops. Nothing is lost silently.
use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use ringbuf::{
    HeapRb,
    traits::{Consumer, Observer, Producer, Split},
};
use tokio::sync::Notify;

use super::EventSource;

/// Default size of the hand-off ring: with the kernel's 4 MiB, about 16 MiB of records can
/// wait for a slow pipeline.
pub const DEFAULT_BYTES: usize = 16 << 20;

/// How long [`Handoff::settle`] waits for the drain thread to answer.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by the drain thread and the consumer.
struct Shared {
    /// Records dropped because the hand-off ring was full.
    overflow: AtomicU64,
    /// Set to end the drain thread (after one last drain).
    stop: AtomicBool,
    /// Settle requests asked (consumer) and answered (drain thread).
    asked: AtomicU64,
    answered: Mutex<u64>,
    answered_cv: std::sync::Condvar,
    /// Records are waiting in the ring.
    ready: Notify,
    /// A settle request is waiting for the drain thread.
    wake_drain: Notify,
}

/// A source drained on its own thread into a bounded ring; see the module docs.
pub struct Handoff {
    cons: ringbuf::HeapCons<u8>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// One record being read out of the ring.
    buf: Vec<u8>,
    /// The drain thread has ended (its source ended or failed).
    ended: bool,
}

/// Writes one frame (`u32` length, then the bytes) if it fits whole; single producer, so free
/// space only grows between the check and the push.
fn push_frame(prod: &mut ringbuf::HeapProd<u8>, rec: &[u8]) -> bool {
    let Ok(len) = u32::try_from(rec.len()) else { return false };
    if prod.vacant_len() < 4 + rec.len() {
        return false;
    }
    prod.push_slice(&len.to_ne_bytes());
    prod.push_slice(rec);
    true
}

impl Handoff {
    /// Starts a thread named `warden-drain` that makes its source with `make` (inside the
    /// thread's own tokio runtime, so a ring buffer's fd registers with the reactor that will
    /// poll it) and drains it into a ring of `bytes` bytes. An error making the source is
    /// returned here.
    pub fn start<S, F>(make: F, bytes: usize) -> io::Result<Self>
    where
        S: EventSource,
        F: FnOnce() -> io::Result<S> + Send + 'static,
    {
        let (mut prod, cons) = HeapRb::<u8>::new(bytes.max(64)).split();
        let shared = Arc::new(Shared {
            overflow: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            asked: AtomicU64::new(0),
            answered: Mutex::new(0),
            answered_cv: std::sync::Condvar::new(),
            ready: Notify::new(),
            wake_drain: Notify::new(),
        });
        let sh = shared.clone();
        let (made_tx, made_rx) = std::sync::mpsc::sync_channel::<io::Result<()>>(1);
        let thread = std::thread::Builder::new().name("warden-drain".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = made_tx.send(Err(e));
                    return;
                }
            };
            let _guard = rt.enter();
            let mut source = match make() {
                Ok(s) => {
                    let _ = made_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = made_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async {
                loop {
                    let asked = sh.asked.load(Ordering::Acquire);
                    let mut moved = 0usize;
                    source.drain(&mut |rec| {
                        if push_frame(&mut prod, rec) {
                            moved += 1;
                        } else {
                            sh.overflow.fetch_add(1, Ordering::AcqRel);
                        }
                    });
                    if moved > 0 {
                        sh.ready.notify_one();
                    }
                    {
                        let mut a = sh.answered.lock().unwrap_or_else(|p| p.into_inner());
                        if *a < asked {
                            *a = asked;
                            sh.answered_cv.notify_all();
                        }
                    }
                    if sh.stop.load(Ordering::Acquire) {
                        break;
                    }
                    let more = tokio::select! {
                        r = source.wait() => r,
                        _ = sh.wake_drain.notified() => Ok(true),
                    };
                    match more {
                        Ok(true) => {}
                        Ok(false) => {
                            // A finite source ended: take what is left, then stop.
                            source.drain(&mut |rec| {
                                if !push_frame(&mut prod, rec) {
                                    sh.overflow.fetch_add(1, Ordering::AcqRel);
                                }
                            });
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "drain thread: source failed");
                            break;
                        }
                    }
                }
            });
            // Answer any settle still waiting, and wake the consumer one last time.
            *sh.answered.lock().unwrap_or_else(|p| p.into_inner()) = u64::MAX;
            sh.answered_cv.notify_all();
            sh.ready.notify_one();
        })?;
        match made_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io::Error::other("drain thread ended before its source was made"));
            }
        }
        Ok(Self { cons, shared, thread: Some(thread), buf: Vec::new(), ended: false })
    }

    /// Records dropped so far because the hand-off ring was full.
    pub fn overflow(&self) -> u64 {
        self.shared.overflow.load(Ordering::Acquire)
    }

    /// Makes every record the source had when this was called available to
    /// [`EventSource::drain`]: asks the drain thread for one more drain and waits for it (at
    /// most a few seconds). Call before the last drain of a task.
    pub fn settle(&mut self) {
        let n = self.shared.asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.shared.wake_drain.notify_one();
        let a = self.shared.answered.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.shared.answered_cv.wait_timeout_while(a, SETTLE_TIMEOUT, |a| *a < n).map(|(_, t)| {
            if t.timed_out() {
                tracing::warn!("drain thread did not settle in time")
            }
        });
    }

    /// Pops one whole frame into `self.buf`; false when none is complete yet. The producer
    /// pushes a frame's length and bytes in two steps, so the length is peeked, and the frame
    /// popped only once all of it is there.
    fn pop(&mut self) -> bool {
        let (a, b) = self.cons.as_slices();
        if a.len() + b.len() < 4 {
            return false;
        }
        let mut len = [0u8; 4];
        for (i, byte) in a.iter().chain(b).take(4).enumerate() {
            len[i] = *byte;
        }
        let len = u32::from_ne_bytes(len) as usize;
        if a.len() + b.len() < 4 + len {
            return false;
        }
        self.cons.skip(4);
        self.buf.resize(len, 0);
        let got = self.cons.pop_slice(&mut self.buf);
        debug_assert_eq!(got, len);
        true
    }
}

impl EventSource for Handoff {
    async fn wait(&mut self) -> io::Result<bool> {
        if !self.cons.is_empty() {
            return Ok(true);
        }
        if self.ended {
            return Ok(false);
        }
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished) {
            self.ended = true;
            return Ok(!self.cons.is_empty());
        }
        // The drain thread notifies after each batch; the timeout covers a notification that
        // raced with the emptiness check above.
        let _ = tokio::time::timeout(super::DRAIN_TICK, self.shared.ready.notified()).await;
        Ok(true)
    }

    fn drain(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while self.pop() {
            f(&self.buf);
            n += 1;
        }
        n
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake_drain.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produces `total` numbered records, `per_wait` per wake-up, then ends.
    struct Counter {
        next: u32,
        total: u32,
        per_wait: u32,
    }

    impl EventSource for Counter {
        async fn wait(&mut self) -> io::Result<bool> {
            tokio::task::yield_now().await;
            Ok(self.next < self.total)
        }
        fn drain(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
            let end = (self.next + self.per_wait).min(self.total);
            let n = (end - self.next) as usize;
            while self.next < end {
                f(&self.next.to_le_bytes().repeat(4));
                self.next += 1;
            }
            n
        }
    }

    fn ids(got: &[Vec<u8>]) -> Vec<u32> {
        got.iter()
            .map(|r| {
                assert_eq!(r.len(), 16, "records arrive whole");
                u32::from_le_bytes(r[..4].try_into().unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn every_record_arrives_in_order_when_the_ring_has_room() {
        // 50,000 frames of 20 bytes fit in 2 MiB whatever the consumer's pace.
        let mut h =
            Handoff::start(|| Ok(Counter { next: 0, total: 50_000, per_wait: 100 }), 2 << 20).unwrap();
        let mut got = Vec::new();
        while h.wait().await.unwrap() {
            h.drain(&mut |r| got.push(r.to_vec()));
        }
        h.drain(&mut |r| got.push(r.to_vec()));
        assert_eq!(h.overflow(), 0);
        assert_eq!(ids(&got), (0..50_000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_stalled_consumer_costs_counted_records_not_a_stalled_drain() {
        // The consumer reads nothing until the source has ended: the drain thread never waits
        // for it, so the ring fills and every further record is counted as overflow.
        let mut h = Handoff::start(|| Ok(Counter { next: 0, total: 10_000, per_wait: 500 }), 4096).unwrap();
        while !h.thread.as_ref().unwrap().is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut got = Vec::new();
        while h.wait().await.unwrap() {
            h.drain(&mut |r| got.push(r.to_vec()));
        }
        let got = ids(&got);
        // 4096 bytes hold 204 frames of 4 + 16 bytes.
        assert_eq!(got.len(), 4096 / 20);
        assert_eq!(got.len() as u64 + h.overflow(), 10_000, "delivered + counted = produced");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    }
}
