//! `warden report`: one recorded log as a single self-contained HTML page for incident
//! responders — the integrity of the log, the task's process tree, the refusals, the findings
//! of a rule set, the scope beside what was used, and a filterable timeline.
//!
//! [`Report::build`] gathers (pure apart from the [`usage::Resolve`] it is given);
//! [`html::render`] writes the page. Everything taken from the log is untrusted and escaped.
pub mod html;
pub mod tree;
pub mod usage;

use serde_json::Value;

use crate::{
    audit::verify::{VerifyError, VerifyReport},
    rules::engine::Finding,
    scope::Scope,
};

/// What `warden verify` says about the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    Intact(VerifyReport),
    Broken(VerifyError),
}

/// Everything the page shows.
#[derive(Debug, Clone)]
pub struct Report {
    /// The log's name, as given.
    pub source: String,
    /// Records in log order (schema-upgraded).
    pub records: Vec<Value>,
    /// Lines that could not be read: (line number, why).
    pub skipped: Vec<(usize, String)>,
    pub integrity: Integrity,
    pub tree: tree::ProcessTree,
    /// With `--scope`: the scope file and its grants, marked.
    pub scope: Option<(String, Vec<usage::Grant>)>,
    /// With `--rules`: what the rules found.
    pub findings: Option<Vec<Finding>>,
}

impl Report {
    /// Gathers the report from records already read. `scope`'s grants are resolved with `fs`.
    pub fn build(
        source: String,
        records: Vec<Value>,
        skipped: Vec<(usize, String)>,
        integrity: Integrity,
        scope: Option<&Scope>,
        findings: Option<Vec<Finding>>,
        fs: &dyn usage::Resolve,
    ) -> Self {
        let tree = tree::ProcessTree::build(&records);
        let scope = scope.map(|s| (s.source.display().to_string(), usage::scope_usage(s, &records, fs)));
        Self { source, records, skipped, integrity, tree, scope, findings }
    }
}
