//! The daemon's Prometheus metrics: what the core knows, rendered by `daemon::metrics`.
use super::Core;

impl Core {
    /// Prometheus text exposition.
    pub(super) fn metrics(&self) -> String {
        let routes = self.routes();
        let mut m = crate::daemon::metrics::Metrics::default();
        m.gauge("warden_tasks_active", "Tasks running on this node.", &[], self.tasks.len() as f64);
        m.counter(
            "warden_records_written_total",
            "Audit records written since the daemon started.",
            &[],
            routes.written as f64,
        );
        m.counter(
            "warden_decode_errors_total",
            "Kernel records that failed to decode.",
            &[],
            self.pipeline.decode_failures() as f64,
        );
        if let Ok(fill) = self.sensor.ring_fill() {
            m.gauge(
                "warden_ring_buffer_fill_bytes",
                "Bytes waiting in the kernel ring buffer when last observed.",
                &[],
                fill as f64,
            );
        }
        m.gauge(
            "warden_ring_buffer_size_bytes",
            "Kernel ring buffer size.",
            &[],
            f64::from(self.cfg.maps.ring_bytes),
        );
        m.gauge(
            "warden_revocations_pending",
            "Credentials whose revocation has not landed yet (retried with backoff).",
            &[],
            self.creds.queue.pending().len() as f64,
        );
        for (id, t) in &self.tasks {
            let c = routes.counters.get(id).copied().unwrap_or_default();
            let labels = [("task", id.as_str())];
            m.counter("warden_task_events_total", "Records written for the task.", &labels, c.events as f64);
            m.counter(
                "warden_task_denials_total",
                "Refused (or, in audit mode, would-be refused) actions of the task.",
                &labels,
                c.denials as f64,
            );
            let drops = self.drops_of(t.info.slot);
            m.counter(
                "warden_task_drops_total",
                "Records of the task the kernel could not deliver.",
                &labels,
                drops as f64,
            );
        }
        m.render()
    }
}
