//! A fake [`Host`] for the lifecycle's unit tests (no root, no kernel): it keeps a set of
//! what a task holds on the machine, writes records through a real pipeline into memory,
//! and can fail its N-th operation.
use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::{Host, HostError, Node};
use crate::{
    audit::{AuditRecord, AuditSink, chain::NodeKey, clock::Clock, sink::MemorySink},
    correlate::ProcessTable,
    loader::Engine,
    pipeline::Pipeline,
    sandbox::{
        Cgroup,
        limits::{MemoryLimit, PidsLimit},
        secrets::{IssuedInfo, IssuedSecrets},
    },
    scope::{Scope, compile::CompiledScope},
};

/// The records written, shared with the test.
#[derive(Clone, Default)]
pub struct Records(pub Arc<Mutex<MemorySink>>);

impl AuditSink for Records {
    fn write(&mut self, r: &AuditRecord, line: &str) -> io::Result<()> {
        self.0.lock().unwrap().write(r, line)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Records {
    pub fn kinds(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().records.iter().map(|r| r.kind.as_str()).collect()
    }
    pub fn last(&self, kind: &str) -> Option<AuditRecord> {
        self.0.lock().unwrap().records.iter().rev().find(|r| r.kind.as_str() == kind).cloned()
    }
}

pub struct FakeHost {
    pub node: Node,
    pub pipeline: Pipeline,
    pub records: Records,
    /// What tasks hold: `cgroup:<path>`, `pids:<path>`, `secrets:<dir>`, `egress:<task>`,
    /// `bound:<slot>`.
    pub held: BTreeSet<String>,
    /// cgroups that exist (created here or put here by the test), with their ids.
    pub cgroups: BTreeMap<PathBuf, u64>,
    /// Operations so far.
    pub ops: usize,
    /// Fail the operation with this number (1-based).
    pub fail_at: Option<usize>,
    /// Every operation, in order.
    pub log: Vec<String>,
    pub engine: Engine,
    /// Processes in every cgroup (for `killed`).
    pub procs: u64,
    next_id: u64,
    _dir: tempfile::TempDir,
}

impl FakeHost {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_create(&dir.path().join("node.key")).unwrap();
        let node = Node {
            cgroup_mount: PathBuf::from("/fake/cgroup2"),
            cgroup_parent: "warden".into(),
            secrets_dir: dir.path().join("secrets"),
            key: key.clone(),
            name: "node-1".into(),
            creds: None,
            resolver: None,
            memory_default: Some(1 << 30),
        };
        let records = Records::default();
        let mut pipeline = Pipeline::new(ProcessTable::default(), Clock::new(), Box::new(records.clone()));
        pipeline.set_signer(key.clone());
        Self {
            node,
            pipeline,
            records,
            held: BTreeSet::new(),
            cgroups: BTreeMap::new(),
            ops: 0,
            fail_at: None,
            log: Vec::new(),
            engine: Engine::Fallback,
            procs: 0,
            next_id: 1000,
            _dir: dir,
        }
    }

    /// A scratch directory that lives as long as the host.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Counts an operation; fails it when it is the one to fail.
    fn op(&mut self, what: String) -> Result<(), HostError> {
        self.ops += 1;
        self.log.push(what.clone());
        if self.fail_at == Some(self.ops) {
            return Err(HostError::Refused(format!("injected failure of operation {}: {what}", self.ops)));
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> Result<Cgroup, HostError> {
        match self.cgroups.get(path) {
            Some(id) => Ok(Cgroup::fake(path.to_path_buf(), *id)),
            None => {
                Err(HostError::Io(io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))))
            }
        }
    }
}

impl Host for FakeHost {
    fn node(&self) -> &Node {
        &self.node
    }

    fn engine(&self) -> Engine {
        self.engine
    }

    fn pipeline(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    fn drain(&mut self) {}

    fn cgroup_create(&mut self, name: &str) -> Result<Cgroup, HostError> {
        let path = self.node.sandbox_parent().join(name);
        self.op(format!("cgroup_create {}", path.display()))?;
        if self.cgroups.contains_key(&path) {
            return Err(HostError::Refused(format!("{} exists", path.display())));
        }
        self.next_id += 1;
        self.cgroups.insert(path.clone(), self.next_id);
        self.held.insert(format!("cgroup:{}", path.display()));
        Ok(Cgroup::fake(path, self.next_id))
    }

    fn cgroup_open(&mut self, path: &Path) -> Result<Cgroup, HostError> {
        self.op(format!("cgroup_open {}", path.display()))?;
        self.open(path)
    }

    fn cgroup_ids(&mut self, cg: &Cgroup) -> Vec<u64> {
        vec![cg.id()]
    }

    fn cgroup_pids(&mut self, _cg: &Cgroup) -> u64 {
        self.procs
    }

    fn cgroup_kill(&mut self, cg: &Cgroup) -> Result<(), HostError> {
        self.op(format!("cgroup_kill {}", cg.path().display()))?;
        self.procs = 0;
        Ok(())
    }

    fn cgroup_remove(&mut self, cg: &Cgroup) -> Result<(), HostError> {
        self.op(format!("cgroup_remove {}", cg.path().display()))?;
        self.procs = 0;
        self.cgroups.remove(cg.path());
        self.held.remove(&format!("cgroup:{}", cg.path().display()));
        Ok(())
    }

    fn pids_limit(&mut self, cg: &Cgroup, name: &str, max: u32) -> Result<PidsLimit, HostError> {
        self.op(format!("pids_limit {} {max}", cg.path().display()))?;
        // A hybrid host: the limit is a v1 twin cgroup.
        let path = PathBuf::from("/fake/pids").join(&self.node.cgroup_parent).join(name);
        self.next_id += 1;
        self.cgroups.insert(path.clone(), self.next_id);
        self.held.insert(format!("pids:{}", path.display()));
        Ok(PidsLimit::V1(Cgroup::fake(path, self.next_id)))
    }

    fn pids_remove(&mut self, limit: &PidsLimit) {
        if let PidsLimit::V1(cg) = limit {
            let _ = self.op(format!("pids_remove {}", cg.path().display()));
            self.cgroups.remove(cg.path());
            self.held.remove(&format!("pids:{}", cg.path().display()));
        }
    }

    fn memory_limit(
        &mut self,
        cg: &Cgroup,
        name: &str,
        bytes: u64,
    ) -> Result<Option<MemoryLimit>, HostError> {
        self.op(format!("memory_limit {} {bytes}", cg.path().display()))?;
        // A hybrid host: the limit is a v1 twin cgroup.
        let path = PathBuf::from("/fake/memory").join(&self.node.cgroup_parent).join(name);
        self.next_id += 1;
        self.cgroups.insert(path.clone(), self.next_id);
        self.held.insert(format!("memory:{}", path.display()));
        Ok(Some(MemoryLimit::V1(Cgroup::fake(path, self.next_id))))
    }

    fn memory_remove(&mut self, limit: &MemoryLimit) {
        if let MemoryLimit::V1(cg) = limit {
            let _ = self.op(format!("memory_remove {}", cg.path().display()));
            self.cgroups.remove(cg.path());
            self.held.remove(&format!("memory:{}", cg.path().display()));
        }
    }

    fn secrets_issue(&mut self, task: &str, scope: &Scope) -> Result<IssuedSecrets, HostError> {
        let dir = IssuedSecrets::dir_for(&self.node.secrets_dir, task);
        self.op(format!("secrets_issue {}", dir.display()))?;
        std::fs::create_dir_all(&dir)?;
        let mut issued = Vec::new();
        for s in &scope.secrets {
            let Some(i) = &s.issue else { continue };
            let Some(from) = i.file() else { continue };
            let value = std::fs::read(from)?;
            let path = dir.join(&i.name);
            std::fs::write(&path, &value)?;
            issued.push(IssuedInfo {
                name: i.name.clone(),
                path,
                env: i.env.clone(),
                sha256: "00".repeat(32),
                len: value.len() as u64,
            });
        }
        self.held.insert(format!("secrets:{}", dir.display()));
        Ok(IssuedSecrets::adopt(&self.node.secrets_dir, task, issued))
    }

    fn secrets_destroy(&mut self, s: &mut IssuedSecrets) -> Result<(), HostError> {
        self.op(format!("secrets_destroy {}", s.dir().display()))?;
        match std::fs::remove_dir_all(s.dir()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.held.remove(&format!("secrets:{}", s.dir().display()));
        Ok(())
    }

    fn reset_drops(&mut self, slot: u32) -> Result<(), HostError> {
        self.op(format!("reset_drops {slot}"))
    }

    fn drops(&mut self, _slot: u32) -> u64 {
        0
    }

    fn egress_attach(&mut self, cg: &Cgroup, task: &str) -> Result<(), HostError> {
        self.op(format!("egress_attach {} {task}", cg.path().display()))?;
        self.held.insert(format!("egress:{task}"));
        Ok(())
    }

    fn egress_detach(&mut self, task: &str) -> Result<(), HostError> {
        self.op(format!("egress_detach {task}"))?;
        self.held.remove(&format!("egress:{task}"));
        Ok(())
    }

    fn bind(&mut self, slot: u32, _ids: &[u64], _scope: &CompiledScope) -> Result<(), HostError> {
        self.op(format!("bind {slot}"))?;
        self.held.insert(format!("bound:{slot}"));
        Ok(())
    }

    fn unbind(&mut self, slot: u32, _scope: Option<&CompiledScope>) -> Result<(), HostError> {
        self.op(format!("unbind {slot}"))?;
        self.held.remove(&format!("bound:{slot}"));
        Ok(())
    }

    fn dns_register(&mut self, task: crate::dns::TaskDns) -> Result<(), HostError> {
        self.op(format!("dns_register {}", task.slot))?;
        self.held.insert(format!("dns:{}", task.slot));
        Ok(())
    }

    fn dns_unregister(&mut self, slot: u32, _task: &str) {
        let _ = self.op(format!("dns_unregister {slot}"));
        self.held.remove(&format!("dns:{slot}"));
    }
}
