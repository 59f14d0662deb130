//! Event sources: where raw records come from. The live ring buffer and
//! in-memory input share one trait, so the pipeline cannot tell them apart.
pub mod handoff;

use std::{io, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// A source of raw kernel records.
#[allow(async_fn_in_trait)]
pub trait EventSource {
    /// Waits until records may be available. `Ok(false)`: a finite source has ended.
    /// Readiness is consumed here, so call [`EventSource::drain`] after every wake-up.
    async fn wait(&mut self) -> io::Result<bool>;
    /// Hands every record available now to `f`, without waiting; returns how many.
    fn drain(&mut self, f: &mut dyn FnMut(&[u8])) -> usize;
}

/// What ending a task needs of the live source, whatever drains it: every record committed so
/// far, and how many were lost on the way to the pipeline (beyond the kernel's own drops).
pub trait Drain {
    /// Hands every record committed so far to `f`; returns how many.
    fn drain_all(&mut self, f: &mut dyn FnMut(&[u8])) -> usize;
    /// Records lost between the kernel ring and `f`.
    fn lost(&self) -> u64;
}

impl Drain for RingBufSource {
    fn drain_all(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        self.drain(f)
    }
    fn lost(&self) -> u64 {
        0
    }
}

impl Drain for handoff::Handoff {
    fn drain_all(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        self.settle();
        self.drain(f)
    }
    fn lost(&self) -> u64 {
        self.overflow()
    }
}

/// The longest [`RingBufSource::wait`] waits for the kernel to wake it.
///
/// The kernel programs submit records without waking the reader (one wake-up per record
/// cost more than the programs themselves, see docs/benchmarks.md) and force a wake-up only
/// when 64 KiB or more are waiting. So the reader drains at least every tick, and a record
/// reaches userspace at most about one tick after it was submitted.
pub const DRAIN_TICK: Duration = Duration::from_millis(10);

/// The live BPF ring buffer.
///
/// Draining does not depend on wake-ups: [`EventSource::drain`] reads every record
/// committed so far, woken or not, so a final `drain` after the producers are gone (the
/// sandbox is empty) leaves nothing behind.
pub struct RingBufSource {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl RingBufSource {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the AsyncFd owns the RingBuf, which owns the fd, so the fd stays open for
        // as long as it is registered.
        let fd = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }
}

impl EventSource for RingBufSource {
    /// Returns when the kernel wakes the reader (the ring holds 64 KiB or more) or after
    /// [`DRAIN_TICK`], whichever comes first. Needs a tokio runtime with time enabled.
    async fn wait(&mut self) -> io::Result<bool> {
        if let Ok(guard) = tokio::time::timeout(DRAIN_TICK, self.fd.readable_mut()).await {
            // Cleared before draining: data arriving later raises readiness again.
            guard?.clear_ready();
        }
        Ok(true)
    }

    fn drain(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        let ring = self.fd.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        n
    }
}

/// Records held in memory (tests and replays of raw captures).
#[derive(Default)]
pub struct MemorySource {
    records: std::collections::VecDeque<Vec<u8>>,
}

impl MemorySource {
    pub fn new(records: impl IntoIterator<Item = Vec<u8>>) -> Self {
        Self { records: records.into_iter().collect() }
    }
}

impl EventSource for MemorySource {
    async fn wait(&mut self) -> io::Result<bool> {
        Ok(!self.records.is_empty())
    }

    fn drain(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        let n = self.records.len();
        for r in self.records.drain(..) {
            f(&r);
        }
        n
    }
}
