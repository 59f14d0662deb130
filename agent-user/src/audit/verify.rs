//! `warden verify`: checks a log's hash chains and signed heads, and reports the first bad line.
use std::{
    collections::{BTreeSet, HashMap},
    io::BufRead,
};

use serde_json::Value;

use super::chain::{GENESIS, checkpoint_message, sha256_hex, unseal, verify_sig};

/// Why a log is not intact, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct VerifyError {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// What an intact log contained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: usize,
    pub tasks: BTreeSet<String>,
    /// Public keys that signed checkpoints.
    pub keys: BTreeSet<String>,
    pub checkpoints: usize,
}

#[derive(Default)]
struct TaskState {
    seq: u64,
    head: String,
    head_line: usize,
    ended: bool,
    signed_after_end: bool,
}

/// Options of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only signatures by this public key (hex) are accepted.
    pub trusted_key: Option<String>,
    /// Accept tasks that have not ended yet (a live log).
    pub allow_open: bool,
}

/// Verifies a log read from `input`.
pub fn verify(mut input: impl BufRead, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport::default();
    let mut tasks: HashMap<String, TaskState> = HashMap::new();
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| VerifyError { line: line_no + 1, reason: e.to_string() })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let bad = |reason: String| VerifyError { line: line_no, reason };
        if buf.last() != Some(&b'\n') {
            return Err(bad("truncated: the last line is incomplete".into()));
        }
        let line = std::str::from_utf8(&buf[..buf.len() - 1])
            .map_err(|_| bad("not UTF-8: the record was altered".into()))?;
        if line.is_empty() {
            return Err(bad("empty line".into()));
        }
        let rec: Value = serde_json::from_str(line)
            .map_err(|e| bad(format!("not a JSON record ({e}): the record was altered")))?;
        match rec.get("v").and_then(Value::as_u64) {
            Some(2) => {}
            Some(1) => {
                return Err(bad("schema v1 records carry no hash chain; nothing can be verified".into()));
            }
            Some(v) => return Err(bad(format!("schema v{v} is not supported by this build"))),
            None => return Err(bad("record has no schema version".into())),
        }
        let (body, claimed) =
            unseal(line).ok_or_else(|| bad("record is not sealed (no trailing hash)".into()))?;
        if sha256_hex(body.as_bytes()) != claimed {
            return Err(bad("hash mismatch: the record was altered".into()));
        }
        let task = rec["task"].as_str().ok_or_else(|| bad("record has no task".into()))?.to_string();
        let seq = rec["seq"].as_u64().ok_or_else(|| bad("record has no seq".into()))?;
        let prev = rec["prev"].as_str().ok_or_else(|| bad("record has no prev".into()))?;
        let st = tasks
            .entry(task.clone())
            .or_insert_with(|| TaskState { head: GENESIS.into(), ..Default::default() });
        if seq != st.seq + 1 {
            return Err(bad(format!(
                "sequence of task {task}: expected {}, found {seq} (a record was removed, inserted or moved)",
                st.seq + 1
            )));
        }
        if prev != st.head {
            let after =
                if st.head_line == 0 { "the start".to_string() } else { format!("line {}", st.head_line) };
            return Err(bad(format!(
                "chain of task {task} broken after {after}: a record was removed or altered"
            )));
        }
        if st.ended && rec["kind"] != "checkpoint" {
            return Err(bad(format!("task {task} has records after its task_end")));
        }
        match rec["kind"].as_str() {
            Some("checkpoint") => {
                let key = rec["key"].as_str().ok_or_else(|| bad("checkpoint without key".into()))?;
                let sig = rec["sig"].as_str().ok_or_else(|| bad("checkpoint without sig".into()))?;
                if let Some(t) = &opts.trusted_key
                    && t != key
                {
                    return Err(bad(format!("checkpoint signed by an untrusted key {key}")));
                }
                if !verify_sig(key, &checkpoint_message(&task, seq, prev), sig) {
                    return Err(bad("checkpoint signature does not verify: the record was altered".into()));
                }
                report.keys.insert(key.to_string());
                report.checkpoints += 1;
                if st.ended {
                    st.signed_after_end = true;
                }
            }
            Some("task_end") => st.ended = true,
            _ => {}
        }
        st.seq = seq;
        st.head = claimed.to_string();
        st.head_line = line_no;
        report.records += 1;
        report.tasks.insert(task);
    }
    if report.records == 0 {
        return Err(VerifyError { line: 0, reason: "the log is empty".into() });
    }
    let mut open: Vec<(&String, &TaskState)> = tasks.iter().collect();
    open.sort_by_key(|(_, s)| s.head_line);
    for (task, st) in open {
        if !st.ended && !opts.allow_open {
            return Err(VerifyError {
                line: st.head_line,
                reason: format!("task {task} has no task_end after this line: the log was truncated"),
            });
        }
        if st.ended && !st.signed_after_end {
            return Err(VerifyError {
                line: st.head_line,
                reason: format!(
                    "task {task}: no signed checkpoint after its task_end: the log was truncated"
                ),
            });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::{AuditRecord, AuditSink, chain::NodeKey, clock::Clock},
        correlate::ProcessTable,
        pipeline::Pipeline,
    };
    use std::sync::{Arc, Mutex};

    struct Lines(Arc<Mutex<Vec<String>>>);
    impl AuditSink for Lines {
        fn write(&mut self, _r: &AuditRecord, line: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(line.to_string());
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A signed log of two interleaved tasks, `n` records each, plus ends and checkpoints.
    fn log(n: usize) -> (Vec<String>, String) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let d = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_create(&d.path().join("k")).unwrap();
        let public = key.public_hex();
        let mut p =
            Pipeline::new(ProcessTable::default(), Clock::with_offset(0), Box::new(Lines(lines.clone())));
        p.set_signer(key);
        for i in 0..n {
            for t in ["a", "b"] {
                p.emit(AuditRecord {
                    task: t.into(),
                    kind: crate::audit::Kind::Exec,
                    path: Some(format!("/bin/{i}")),
                    ..Default::default()
                })
                .unwrap();
            }
        }
        for t in ["a", "b"] {
            p.emit(AuditRecord { task: t.into(), kind: crate::audit::Kind::TaskEnd, ..Default::default() })
                .unwrap();
            p.checkpoint(t).unwrap();
        }
        let v = lines.lock().unwrap().clone();
        (v, public)
    }

    fn check(lines: &[String]) -> Result<VerifyReport, VerifyError> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        verify(text.as_bytes(), &VerifyOptions::default())
    }

    #[test]
    fn an_intact_log_verifies() {
        let (lines, public) = log(3);
        let r = check(&lines).unwrap();
        assert_eq!(r.records, lines.len());
        assert_eq!(r.tasks.len(), 2);
        assert_eq!(r.checkpoints, 2);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let trusted = VerifyOptions { trusted_key: Some(public), allow_open: false };
        assert!(verify(text.as_bytes(), &trusted).is_ok());
        let other = VerifyOptions { trusted_key: Some("00".repeat(32)), allow_open: false };
        assert!(verify(text.as_bytes(), &other).unwrap_err().reason.contains("untrusted"));
    }

    #[test]
    fn checkpoints_are_written_every_so_often() {
        let (lines, _) = log(super::super::chain::CHECKPOINT_EVERY as usize + 5);
        let r = check(&lines).unwrap();
        assert_eq!(r.checkpoints, 4, "one periodic and one final checkpoint per task");
    }

    #[test]
    fn every_kind_of_tampering_is_caught_at_its_line() {
        let (lines, _) = log(3);
        // A byte flip inside a record: caught at that record.
        let mut flip = lines.clone();
        flip[2] = flip[2].replacen("/bin/1", "/bin/7", 1);
        assert_eq!(check(&flip).unwrap_err().line, 3);
        // A flip that breaks JSON.
        let mut broken = lines.clone();
        broken[4] = broken[4].replacen('{', "[", 1);
        assert_eq!(check(&broken).unwrap_err().line, 5);
        // A deleted record: the next record of the task is out of sequence.
        let mut deleted = lines.clone();
        deleted.remove(2); // task a, seq 2; task a's next record (seq 3) is now line 4
        let e = check(&deleted).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.reason.contains("expected 2"), "{e}");
        // Two records swapped.
        let mut swapped = lines.clone();
        swapped.swap(0, 2);
        assert_eq!(check(&swapped).unwrap_err().line, 1);
        // A record replaced by a re-sealed forgery: the chain breaks at the next record.
        let mut forged = lines.clone();
        let mut body = forged[2].clone();
        let cut = body.rfind(",\"hash\"").unwrap();
        body.truncate(cut);
        body.push('}');
        let mut forgery = body.replacen("/bin/1", "/bin/9", 1);
        super::super::chain::seal(&mut forgery);
        forged[2] = forgery;
        let e = check(&forged).unwrap_err();
        assert_eq!(
            e.line, 5,
            "the forged line itself is self-consistent; the next one of task a breaks: {e}"
        );
        assert!(e.reason.contains("chain"), "{e}");
        // A truncated tail: the final checkpoint (or more) is gone.
        let e = check(&lines[..lines.len() - 1]).unwrap_err();
        assert!(e.reason.contains("truncated"), "{e}");
        let e = check(&lines[..lines.len() - 4]).unwrap_err();
        assert!(e.reason.contains("no task_end"), "{e}");
        // A cut inside the last line.
        let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        text.truncate(text.len() - 10);
        let e = verify(text.as_bytes(), &VerifyOptions::default()).unwrap_err();
        assert_eq!(e.line, lines.len());
        // A forged signature.
        let mut sig = lines.clone();
        let last = sig.len() - 1;
        let mut l = sig[last].clone();
        let i = l.find("\"sig\":\"").unwrap() + 7;
        let c = if &l[i..i + 1] == "A" { "B" } else { "A" };
        l.replace_range(i..i + 1, c);
        // Re-seal so only the signature is wrong.
        let cut = l.rfind(",\"hash\"").unwrap();
        l.truncate(cut);
        l.push('}');
        super::super::chain::seal(&mut l);
        sig[last] = l;
        assert!(check(&sig).unwrap_err().reason.contains("signature"));
    }

    #[test]
    fn open_logs_verify_only_when_asked() {
        let (lines, _) = log(2);
        let live = &lines[..4];
        let text: String = live.iter().map(|l| format!("{l}\n")).collect();
        assert!(verify(text.as_bytes(), &VerifyOptions::default()).is_err());
        assert!(verify(text.as_bytes(), &VerifyOptions { trusted_key: None, allow_open: true }).is_ok());
    }
}
