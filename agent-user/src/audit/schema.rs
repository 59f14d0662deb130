//! Schema versions and the converter that lets readers accept older records.
//!
//! Bump rules (`docs/events.md`): `v` changes only for incompatible changes; readers upgrade
//! older records step by step to [`super::SCHEMA_VERSION`] and refuse newer ones.
use serde_json::Value;

/// The oldest schema version this build reads.
pub const OLDEST_READABLE: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("record has no schema version `v`")]
    NoVersion,
    #[error("schema v{0} is newer than this build reads (v{current}); upgrade Warden", current = super::SCHEMA_VERSION)]
    Newer(u64),
    #[error("schema v{0} is older than this build reads (v{OLDEST_READABLE})")]
    Older(u64),
}

/// Checks a record's schema version `v` (as an unsigned integer, if it has one): readable
/// versions are returned.
pub fn check(v: Option<u64>) -> Result<u64, SchemaError> {
    let v = v.ok_or(SchemaError::NoVersion)?;
    let current = u64::from(super::SCHEMA_VERSION);
    if v > current {
        return Err(SchemaError::Newer(v));
    }
    if v < OLDEST_READABLE {
        return Err(SchemaError::Older(v));
    }
    Ok(v)
}

/// Upgrades one record to the current schema.
///
/// - v1 → v2: v1 records (no hash chain) gain `"unchained": true`; their content is unchanged.
pub fn upgrade(mut rec: Value) -> Result<Value, SchemaError> {
    let v = check(rec.get("v").and_then(Value::as_u64))?;
    if v == 1 {
        rec["v"] = Value::from(2);
        rec["unchained"] = Value::Bool(true);
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn upgrades_v1_and_refuses_unknown_versions() {
        let v1 = json!({"v": 1, "seq": 3, "task": "t", "kind": "exec", "path": "/bin/ls"});
        let up = upgrade(v1).unwrap();
        assert_eq!(up["v"], 2);
        assert_eq!(up["unchained"], true);
        assert_eq!(up["path"], "/bin/ls");
        assert_eq!(upgrade(json!({"v": 2, "seq": 1})).unwrap()["v"], 2);
        assert_eq!(upgrade(json!({"v": 9})), Err(SchemaError::Newer(9)));
        assert_eq!(upgrade(json!({"v": 0})), Err(SchemaError::Older(0)));
        assert_eq!(upgrade(json!({"seq": 1})), Err(SchemaError::NoVersion));
    }
}
