//! Audit evidence: the record schema (`docs/events.md`), hash chains and signed heads,
//! verification, schema upgrades, and sinks.
pub mod chain;
pub mod clock;
pub mod kind;
pub mod nats;
pub mod ocsf;
pub mod record;
pub mod schema;
pub mod sink;
pub mod verify;

pub use kind::Kind;
pub use record::{AuditRecord, Decision, INTENT_MAX_DEFAULT, Intent, SCHEMA_VERSION};
pub use sink::{AuditSink, JsonlSink};
