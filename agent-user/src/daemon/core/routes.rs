//! The pipeline's sink under the daemon: every record fans out to the node log, the task's
//! own log (when it has one) and the live event stream, and is counted for metrics.
use std::{
    collections::HashMap,
    fs::File,
    io,
    path::Path,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

use super::Core;
use crate::audit::{AuditRecord, AuditSink, Decision, JsonlSink};
use crate::daemon::state;

/// One line of the event stream, for `warden events --follow`.
#[derive(Debug, Clone)]
pub struct StreamLine {
    pub task: Arc<str>,
    pub line: Arc<str>,
}

/// Per-task counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) events: u64,
    pub(super) denials: u64,
}

/// Where records go: the node log, per-task logs, the event stream; and what they count.
pub(super) struct Routes {
    pub(super) node: Box<dyn AuditSink>,
    pub(super) task_logs: HashMap<String, JsonlSink<File>>,
    pub(super) stream: broadcast::Sender<StreamLine>,
    pub(super) counters: HashMap<String, Counters>,
    pub(super) written: u64,
}

/// The pipeline's sink: fans records out along [`Routes`].
pub(super) struct RoutedSink(pub(super) Arc<Mutex<Routes>>);

impl AuditSink for RoutedSink {
    fn write(&mut self, r: &AuditRecord, line: &str) -> io::Result<()> {
        let mut routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        routes.node.write(r, line)?;
        if let Some(t) = routes.task_logs.get_mut(&r.task) {
            t.write(r, line)?;
        }
        let c = routes.counters.entry(r.task.clone()).or_default();
        c.events += 1;
        if matches!(r.decision, Some(Decision::Deny) | Some(Decision::Audit))
            && !matches!(r.kind, crate::audit::Kind::TaskStart | crate::audit::Kind::TaskEnd)
        {
            c.denials += 1;
        }
        routes.written += 1;
        // No subscriber is fine: the stream is best effort, the logs are the record.
        let _ = routes.stream.send(StreamLine { task: r.task.as_str().into(), line: line.into() });
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        routes.node.flush()?;
        for t in routes.task_logs.values_mut() {
            t.flush()?;
        }
        Ok(())
    }
}

impl Core {
    /// Routes a task's records also to `path`: a new file, or (`append`, re-adopting) the
    /// existing one cut back to its last whole line.
    pub(super) fn open_task_log(&mut self, id: &str, path: &Path, append: bool) -> io::Result<()> {
        let f = if append {
            state::truncate_partial_line(path)?;
            std::fs::OpenOptions::new().create(true).append(true).open(path)?
        } else {
            File::create(path)?
        };
        self.routes().task_logs.insert(id.to_string(), JsonlSink::new(f));
        Ok(())
    }
}
