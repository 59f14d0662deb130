//! Audit evidence: the record schema (`docs/events.md`) and sinks.
pub mod clock;
pub mod record;
pub mod sink;

pub use record::{AuditRecord, Decision, SCHEMA_VERSION};
pub use sink::{AuditSink, JsonlSink};
