//! Scope-drift rules: YAML files whose conditions are CEL expressions over the documented
//! audit-record fields (`docs/rules.md`).
//!
//! Loading runs in stages — parse (strict YAML) → validate (ids, shape, every name an
//! expression uses is a known field, list or macro) → compile (CEL) — and every error names
//! the file, the rule and what to fix. The same [`engine::Engine`] runs in replay and live.
pub mod engine;
pub mod needs;
pub mod regexes;
pub mod view;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Fields of an audit record a rule may use (all bound, with "" / 0 / false when absent).
pub const STRING_FIELDS: &[&str] = &[
    "time",
    "task",
    "kind",
    "decision",
    "action",
    "rule",
    "exe",
    "path",
    "addr",
    "protocol",
    "comm",
    "reason",
    "call",
    "call_name",
    "intent",
    "intent_sha256",
];
pub const INT_FIELDS: &[&str] = &[
    "v",
    "seq",
    "pid",
    "ppid",
    "port",
    "uid",
    "cgroup_id",
    "dev",
    "ino",
    "child_pid",
    "exit_status",
    "signal",
    "target_pid",
    "arg",
    "drops",
];
/// Also bound: `event` (the whole record as a map) and `ancestry` (list of pids).
pub const OTHER_VARIABLES: &[&str] = &["event", "ancestry"];

/// Errors loading rules.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, field: String, message: String },
    #[error("{path}: rule {rule}: {message}")]
    Invalid { path: PathBuf, rule: String, message: String },
    #[error(
        "{path}: no rules here ({files} rule files (*.yaml, *.yml) define none); give the directory that holds the rules, e.g. rules/starter"
    )]
    NoRules { path: PathBuf, files: usize },
}

/// Severity of a finding.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// How events are grouped when a rule correlates several of them.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum By {
    /// All events of a task.
    #[default]
    Task,
    /// Events of one process (task + pid).
    Process,
}

/// A rule file: either a list of rules, or lists, macros and rules.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawFile {
    Rules(Vec<RawRule>),
    Full(RawFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFull {
    #[serde(default)]
    lists: BTreeMap<String, Vec<serde_json::Value>>,
    #[serde(default)]
    macros: BTreeMap<String, String>,
    rules: Vec<RawRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    description: String,
    severity: Severity,
    #[serde(default, rename = "match")]
    match_: Option<String>,
    #[serde(default)]
    sequence: Option<Vec<RawStep>>,
    /// Single-match rules: fire when this many matches fall within `within`.
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    within: Option<String>,
    #[serde(default)]
    by: By,
    #[serde(default)]
    tests: Option<RawTests>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(rename = "match")]
    match_: String,
}

/// Example event streams a rule must fire on, and must stay quiet on.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTests {
    #[serde(default)]
    pub fire: Vec<Vec<serde_json::Value>>,
    #[serde(default)]
    pub quiet: Vec<Vec<serde_json::Value>>,
}

/// A compiled rule.
pub struct Rule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    /// One program for a single-match rule, one per step for a sequence.
    pub steps: Vec<cel::Program>,
    /// What runs for each step: its program's expression with `matches("literal")` calls
    /// bound to patterns compiled at load ([`regexes`]).
    pub exprs: Vec<cel::IdedExpr>,
    /// What each step needs of a record before its program can be true (read once, here).
    pub needs: Vec<needs::Needs>,
    pub sequence: bool,
    pub count: u32,
    pub within: Option<Duration>,
    pub by: By,
    pub tests: RawTests,
    /// The file it came from.
    pub source: PathBuf,
}

/// Rules plus the lists they may refer to.
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub lists: BTreeMap<String, serde_json::Value>,
    /// The literal patterns of every rule's `matches()` calls, compiled once.
    pub regexes: regexes::Regexes,
}

impl RuleSet {
    /// No rules, no lists.
    pub fn empty() -> Self {
        RuleSet { rules: Vec::new(), lists: BTreeMap::new(), regexes: regexes::Regexes::default() }
    }

    /// Whether any rule reads `event` (the whole record), which needs the record as a JSON
    /// tree rather than its documented fields.
    pub fn uses_event(&self) -> bool {
        self.rules.iter().flat_map(|r| &r.steps).any(|p| p.references().has_variable("event"))
    }
}

/// Replaces whole-word occurrences of each macro name with its parenthesised expression.
fn expand_macros(expr: &str, macros: &BTreeMap<String, String>) -> String {
    let mut out = expr.to_string();
    // Expand repeatedly so macros may use macros (bounded, so a cycle cannot loop forever).
    for _ in 0..8 {
        let mut changed = false;
        for (name, body) in macros {
            let mut result = String::with_capacity(out.len());
            let bytes = out.as_bytes();
            let mut i = 0;
            let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
            while i < bytes.len() {
                if out[i..].starts_with(name.as_str())
                    && (i == 0 || !is_ident(bytes[i - 1]))
                    && bytes.get(i + name.len()).is_none_or(|&c| !is_ident(c))
                {
                    result.push('(');
                    result.push_str(body);
                    result.push(')');
                    i += name.len();
                    changed = true;
                } else {
                    let ch = out[i..].chars().next().unwrap();
                    result.push(ch);
                    i += ch.len_utf8();
                }
            }
            out = result;
        }
        if !changed {
            break;
        }
    }
    out
}

impl RuleSet {
    /// Loads every `*.yaml`/`*.yml` file in `dir` (sorted, so ids and order are stable); a
    /// directory that defines no rule is an error.
    pub fn load_dir(dir: &Path) -> Result<Self, RuleError> {
        let rd =
            std::fs::read_dir(dir).map_err(|source| RuleError::Read { path: dir.to_path_buf(), source })?;
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut set = RuleSet::empty();
        for f in &files {
            let text =
                std::fs::read_to_string(f).map_err(|source| RuleError::Read { path: f.clone(), source })?;
            set.add(&text, f)?;
        }
        // A directory given for rules that holds none is a mistake (a wrong path), never a
        // green run of nothing.
        if set.rules.is_empty() {
            return Err(RuleError::NoRules { path: dir.to_path_buf(), files: files.len() });
        }
        Ok(set)
    }

    /// Parses, validates and compiles one rule file into the set.
    pub fn add(&mut self, text: &str, path: &Path) -> Result<(), RuleError> {
        // Stage 1: parse.
        let raw: RawFile = crate::util::from_yaml(text).map_err(|e| {
            let crate::util::YamlError { line, column, field, mut message } = e;
            if message.contains("did not match any variant") {
                message = "expected a list of rules, or a mapping with `lists`, `macros` and `rules` \
                           (each rule: id, description, severity, match or sequence; unknown keys are errors)"
                    .into();
            }
            RuleError::Parse { path: path.to_path_buf(), line, column, field, message }
        })?;
        let full = match raw {
            RawFile::Rules(rules) => RawFull { lists: BTreeMap::new(), macros: BTreeMap::new(), rules },
            RawFile::Full(f) => f,
        };
        // Stage 2: validate.
        let invalid = |rule: &str, message: String| RuleError::Invalid {
            path: path.to_path_buf(),
            rule: rule.to_string(),
            message,
        };
        for name in full.lists.keys().chain(full.macros.keys()) {
            if STRING_FIELDS.contains(&name.as_str())
                || INT_FIELDS.contains(&name.as_str())
                || OTHER_VARIABLES.contains(&name.as_str())
            {
                return Err(invalid(
                    name,
                    format!("`{name}` is an event field; name the list or macro differently"),
                ));
            }
        }
        for (name, items) in &full.lists {
            self.lists.insert(name.clone(), serde_json::Value::Array(items.clone()));
        }
        let known: BTreeSet<&str> = STRING_FIELDS
            .iter()
            .chain(INT_FIELDS)
            .chain(OTHER_VARIABLES)
            .copied()
            .chain(self.lists.keys().map(String::as_str))
            .collect();
        let mut ids: BTreeSet<String> = self.rules.iter().map(|r| r.id.clone()).collect();
        for r in full.rules {
            if r.id.is_empty() || !r.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(invalid(&r.id, "id must be letters, digits, '-' or '_'".into()));
            }
            if !ids.insert(r.id.clone()) {
                return Err(invalid(&r.id, "duplicate rule id".into()));
            }
            let exprs: Vec<String> = match (&r.match_, &r.sequence) {
                (Some(m), None) => vec![m.clone()],
                (None, Some(steps)) if steps.len() >= 2 => steps.iter().map(|s| s.match_.clone()).collect(),
                (None, Some(_)) => return Err(invalid(&r.id, "a sequence needs at least two steps".into())),
                (Some(_), Some(_)) => {
                    return Err(invalid(&r.id, "use either `match` or `sequence`, not both".into()));
                }
                (None, None) => {
                    return Err(invalid(&r.id, "add a `match` condition or a `sequence` of steps".into()));
                }
            };
            let within = match &r.within {
                Some(w) => {
                    Some(crate::util::parse_duration(w).map_err(|e| invalid(&r.id, format!("within: {e}")))?)
                }
                None => None,
            };
            let sequence = r.sequence.is_some();
            let count = r.count.unwrap_or(1);
            if count == 0 {
                return Err(invalid(&r.id, "count must be at least 1".into()));
            }
            if sequence && r.count.is_some() {
                return Err(invalid(&r.id, "`count` applies to single-match rules".into()));
            }
            if (sequence || count > 1) && within.is_none() {
                return Err(invalid(
                    &r.id,
                    "correlating several events needs a window: add `within: 60s`".into(),
                ));
            }
            // Stage 3: compile, after checking every name the expression uses.
            let mut steps = Vec::new();
            let mut compiled = Vec::new();
            for (i, e) in exprs.iter().enumerate() {
                let what = if sequence { format!("sequence[{i}].match") } else { "match".to_string() };
                let expanded = expand_macros(e, &full.macros);
                let prog = cel::Program::compile(&expanded)
                    .map_err(|err| invalid(&r.id, format!("{what}: {}", err.to_string().trim())))?;
                let refs = prog.references();
                for v in refs.variables() {
                    if !known.contains(v) {
                        return Err(invalid(
                            &r.id,
                            format!("{what}: unknown name `{v}`; event fields are listed in docs/rules.md"),
                        ));
                    }
                }
                if refs.has_function(regexes::FUNCTION) {
                    return Err(invalid(
                        &r.id,
                        format!("{what}: `{}` is Warden's own; use `matches()`", regexes::FUNCTION),
                    ));
                }
                let mut expr = prog.expression().clone();
                self.regexes.rewrite(&mut expr).map_err(|e| invalid(&r.id, format!("{what}: {e}")))?;
                compiled.push(expr);
                steps.push(prog);
            }
            let needs = compiled.iter().map(needs::needs).collect();
            self.rules.push(Rule {
                id: r.id,
                description: r.description,
                severity: r.severity,
                steps,
                exprs: compiled,
                needs,
                sequence,
                count,
                within,
                by: r.by,
                tests: r.tests.unwrap_or_default(),
                source: path.to_path_buf(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_without_rules_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let Err(e) = RuleSet::load_dir(d.path()) else { panic!("no rules, no set") };
        assert!(matches!(e, RuleError::NoRules { files: 0, .. }), "{e}");
        assert!(e.to_string().contains("no rules here"), "{e}");
        // A file with only lists defines no rule either.
        std::fs::write(d.path().join("lists.yaml"), "lists:\n  shells: [/bin/sh]\nrules: []\n").unwrap();
        let Err(e) = RuleSet::load_dir(d.path()) else { panic!("no rules, no set") };
        assert!(matches!(e, RuleError::NoRules { files: 1, .. }), "{e}");
    }
}
