//! The live feed: the audit socket → [`Tracker`] → the pipeline, pumped by the loop that
//! drains the ring buffer (`warden run`, the daemon).
use std::io;

use super::{Output, TaskInfo, Tracker, netlink};
use crate::pipeline::Pipeline;

/// Kernel refusal reports flowing into a pipeline.
pub struct Feed {
    listener: netlink::Listener,
    tracker: Tracker,
    out: Vec<Output>,
}

impl Feed {
    /// Turns kernel audit on if needed (see [`netlink::ensure_enabled`]) and joins the
    /// read-only multicast group. Call before the first task is confined: reports are read
    /// from then on.
    pub fn open() -> io::Result<Self> {
        let how = netlink::ensure_enabled()?;
        tracing::debug!(?how, "kernel audit");
        Ok(Self {
            listener: netlink::Listener::open()?,
            tracker: Tracker::new("/proc".as_ref()),
            out: Vec::new(),
        })
    }

    /// [`Feed::open`], or a warning that refusals cannot be recorded (`task_start` then lists
    /// them in `unrecorded`).
    pub fn open_or_warn() -> Option<Self> {
        match Self::open() {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "kernel audit records cannot be read: Landlock and seccomp refusals will not be recorded"
                );
                None
            }
        }
    }

    pub fn register(&mut self, info: TaskInfo) {
        self.tracker.register(info);
    }

    /// The task's first process, once it is known (it created the task's Landlock domain).
    pub fn first_pid(&mut self, slot: u32, pid: u32) {
        self.tracker.first_pid(slot, pid);
    }

    pub fn unregister(&mut self, slot: u32) {
        self.tracker.unregister(slot);
    }

    /// Whether the Landlock domain of `slot` has been identified (it has denied something).
    pub fn has_domain(&self, slot: u32) -> bool {
        self.tracker.has_domain(slot)
    }

    /// At task end, once its processes are gone: reads the reports still on their way. If the
    /// task's Landlock domain denied anything, waits (up to a second) for the domain's end,
    /// whose count of denials tells whether any report was lost; otherwise briefly.
    pub fn settle(&mut self, p: &mut Pipeline, slot: u32) -> io::Result<()> {
        let start = std::time::Instant::now();
        loop {
            self.pump(p)?;
            let waited = start.elapsed();
            if waited > std::time::Duration::from_secs(1)
                || (!self.has_domain(slot) && waited > std::time::Duration::from_millis(50))
            {
                self.tracker.release_held(std::time::Duration::ZERO, &mut self.out);
                return self.pump(p);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Reads every report waiting now and writes the refusals (and gaps) they make.
    pub fn pump(&mut self, p: &mut Pipeline) -> io::Result<()> {
        let (tracker, out) = (&mut self.tracker, &mut self.out);
        let lookup = |pid: u32| p.slot_of_pid(pid);
        self.listener.drain(&mut |typ, text| tracker.ingest_raw(typ, text, &lookup, out))?;
        if tracker.pending() > 0 {
            tracker.retry(&lookup, out);
        }
        tracker.release_held(super::HOLD_FOR, out);
        p.reports_lost = self.listener.overruns;
        for o in self.out.drain(..) {
            match o {
                Output::Refusal(r) => p.handle_refusal(&r)?,
                Output::Gap { slot, missing } => p.refusals_gap(slot, missing)?,
            }
        }
        Ok(())
    }
}
