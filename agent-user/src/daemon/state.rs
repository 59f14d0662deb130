//! What the daemon persists so a restarted daemon can re-adopt: one record per running task
//! and a heartbeat. Both live on a tmpfs (`state_dir`), like the kernel state they describe.
use std::{
    collections::BTreeMap,
    fs, io,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::api::TaskInfo;

/// One running task, as a restarted daemon needs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    pub info: TaskInfo,
    /// `CLOCK_BOOTTIME` ns at which the ttl ends the task.
    pub expires_boot_ns: Option<u64>,
    pub end_when_empty: bool,
    /// The per-task log the task's records are also written to.
    pub log: Option<PathBuf>,
    /// The v1 pids twin, on hybrid hosts.
    pub pids_v1: Option<PathBuf>,
    /// Kernel drops already reported in `gap` records.
    pub drops_reported: u64,
    /// What lifecycle steps keep to find their state again (`lifecycle::Task::saved`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub saved: BTreeMap<String, serde_json::Value>,
    /// Its running calls, parents before children, for a restarted daemon to bind each
    /// call's cgroup to its own slot again (else its processes would fall back to the task's
    /// wider scope).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallRecord>,
}

/// One running call, as a restarted daemon needs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CallRecord {
    pub id: String,
    pub name: String,
    pub depth: u32,
    pub slot: u32,
    /// The call's own scope text, or `None` when it runs under its parent's scope.
    pub scope_text: Option<String>,
    pub scope_path: PathBuf,
    pub cgroup: PathBuf,
    pub started_boot_ns: u64,
    pub expires_boot_ns: Option<u64>,
    pub identity: crate::task::IdentityDoc,
    /// The call's first process (its command), once the pipeline has seen its exec: its
    /// exit ends the call.
    pub first_pid: Option<u32>,
}

/// The daemon's heartbeat: when it was last known alive.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub pid: u32,
    pub version: String,
    /// `CLOCK_BOOTTIME` ns.
    pub alive_boot_ns: u64,
    /// RFC 3339.
    pub alive: String,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir.join("tasks"))?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn task_path(&self, id: &str) -> PathBuf {
        self.dir.join("tasks").join(format!("{id}.json"))
    }

    /// Writes atomically (temp file + rename): a crash leaves the old or the new record.
    fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, path)
    }

    pub fn save_task(&self, rec: &TaskRecord) -> io::Result<()> {
        Self::write_atomic(&self.task_path(&rec.info.id), &serde_json::to_vec_pretty(rec)?)
    }

    pub fn remove_task(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.task_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every task record; unreadable ones are returned as errors with their file.
    pub fn tasks(&self) -> Vec<Result<TaskRecord, (PathBuf, String)>> {
        let Ok(rd) = fs::read_dir(self.dir.join("tasks")) else { return Vec::new() };
        let mut paths: Vec<PathBuf> =
            rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "json")).collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let text = fs::read(&p).map_err(|e| (p.clone(), e.to_string()))?;
                serde_json::from_slice(&text).map_err(|e| (p.clone(), e.to_string()))
            })
            .collect()
    }

    pub fn heartbeat(&self) -> Option<Heartbeat> {
        serde_json::from_slice(&fs::read(self.dir.join("daemon.json")).ok()?).ok()
    }

    pub fn beat(&self, hb: &Heartbeat) -> io::Result<()> {
        Self::write_atomic(&self.dir.join("daemon.json"), &serde_json::to_vec(hb)?)
    }
}

/// Where a task's chain stands in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: String,
}

#[derive(Deserialize)]
struct Minimal {
    task: String,
    seq: u64,
    hash: String,
}

/// Cuts a log back to its last complete line (a daemon killed mid-write leaves half a line);
/// returns how many bytes were cut.
pub fn truncate_partial_line(path: &Path) -> io::Result<u64> {
    let mut f = match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    // Look back in 64 KiB windows for the last newline.
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                f.set_len(keep)?;
            }
            return Ok(len - keep);
        }
        if start == 0 {
            f.set_len(0)?;
            return Ok(len);
        }
        end = start;
    }
}

/// The last (`seq`, `hash`) of each of `tasks` in a JSONL log. Lines that do not parse are
/// skipped (the caller truncated a torn tail already).
pub fn chain_heads(path: &Path, tasks: &[String]) -> io::Result<BTreeMap<String, ChainHead>> {
    use io::BufRead;
    let mut out = BTreeMap::new();
    let f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for line in io::BufReader::new(f).lines() {
        let line = line?;
        // Cheap filter before parsing: only lines of the tasks asked for.
        if !tasks.iter().any(|t| line.contains(t.as_str())) {
            continue;
        }
        if let Ok(m) = serde_json::from_str::<Minimal>(&line)
            && tasks.contains(&m.task)
        {
            out.insert(m.task, ChainHead { seq: m.seq, hash: m.hash });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tails_are_cut_to_the_last_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.jsonl");
        fs::write(&p, b"{\"a\":1}\n{\"b\":").unwrap();
        assert_eq!(truncate_partial_line(&p).unwrap(), 5);
        assert_eq!(fs::read(&p).unwrap(), b"{\"a\":1}\n");
        assert_eq!(truncate_partial_line(&p).unwrap(), 0);
        fs::write(&p, b"no newline at all").unwrap();
        assert_eq!(truncate_partial_line(&p).unwrap(), 17);
        assert!(fs::read(&p).unwrap().is_empty());
        assert_eq!(truncate_partial_line(&d.path().join("missing")).unwrap(), 0);
    }

    #[test]
    fn finds_the_last_record_of_each_task() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l.jsonl");
        fs::write(
            &p,
            "{\"v\":2,\"seq\":1,\"task\":\"a-1\",\"kind\":\"x\",\"hash\":\"h1\"}\n\
             {\"v\":2,\"seq\":1,\"task\":\"b-1\",\"kind\":\"x\",\"hash\":\"g1\"}\n\
             {\"v\":2,\"seq\":2,\"task\":\"a-1\",\"kind\":\"x\",\"hash\":\"h2\"}\n",
        )
        .unwrap();
        let heads = chain_heads(&p, &["a-1".to_string()]).unwrap();
        assert_eq!(heads.len(), 1);
        assert_eq!(heads["a-1"], ChainHead { seq: 2, hash: "h2".into() });
    }

    #[test]
    fn task_records_round_trip_atomically() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert!(s.tasks().is_empty() && s.heartbeat().is_none());
        let hb = Heartbeat { pid: 1, version: "v".into(), alive_boot_ns: 5, alive: "t".into() };
        s.beat(&hb).unwrap();
        assert_eq!(s.heartbeat(), Some(hb));
        fs::write(d.path().join("tasks/bad.json"), b"{").unwrap();
        let all = s.tasks();
        assert_eq!(all.len(), 1);
        assert!(all[0].is_err());
    }
}
