//! Task scopes: the YAML file a task is bound to.
//!
//! Raw file → validated [`Scope`]. Unknown keys are rejected; errors name the
//! file, line and field and say how to fix them.
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The scope file format version this build reads.
pub const SCOPE_VERSION: u32 = 1;

/// A scope file as written by the user.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawScope {
    /// Must be 1.
    pub version: u32,
    /// Name of the task; each run gets a unique task id derived from it.
    pub task: String,
}

/// A validated scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub task: String,
    /// Where it was read from (for messages and records).
    pub source: PathBuf,
}

/// Errors reading or validating a scope file.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("{path}: cannot read scope file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {field}: {message}")]
    Invalid { path: PathBuf, field: &'static str, message: String },
}

impl Scope {
    /// Reads and validates a scope file.
    pub fn load(path: &Path) -> Result<Self, ScopeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScopeError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates scope text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ScopeError> {
        let raw: RawScope = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            ScopeError::Parse { path: path.to_path_buf(), line, column, message: e.to_string() }
        })?;
        if raw.version != SCOPE_VERSION {
            return Err(ScopeError::Invalid {
                path: path.to_path_buf(),
                field: "version",
                message: format!(
                    "version {} is not supported; write `version: {SCOPE_VERSION}`",
                    raw.version
                ),
            });
        }
        let valid_name = !raw.task.is_empty()
            && raw.task.len() <= 64
            && raw.task.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !valid_name {
            return Err(ScopeError::Invalid {
                path: path.to_path_buf(),
                field: "task",
                message: format!(
                    "task name {:?} must be 1-64 characters of letters, digits, '-', '_' or '.'",
                    raw.task
                ),
            });
        }
        Ok(Scope { task: raw.task, source: path.to_path_buf() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Scope, ScopeError> {
        Scope::parse(t, Path::new("s.yaml"))
    }

    #[test]
    fn accepts_minimal_scope() {
        assert_eq!(parse("version: 1\ntask: build-report\n").unwrap().task, "build-report");
    }

    #[test]
    fn rejects_unknown_keys_with_line() {
        let e = parse("version: 1\ntask: a\nexecc: []\n").unwrap_err().to_string();
        assert!(e.starts_with("s.yaml:3:"), "{e}");
        assert!(e.contains("execc"), "{e}");
    }

    #[test]
    fn rejects_bad_version_and_names() {
        assert!(parse("version: 2\ntask: a\n").unwrap_err().to_string().contains("version"));
        assert!(parse("version: 1\ntask: \"a b\"\n").unwrap_err().to_string().contains("task"));
        assert!(parse("version: 1\n").unwrap_err().to_string().contains("task"));
    }
}
