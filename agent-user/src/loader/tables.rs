//! The maps userspace drives, apart from loading and attaching (`super`): a compiled scope
//! written into the kernel tables and the watch entry (the control path's last stage), the
//! egress trie and DNS configuration, and the counters read back (drops, stats, ring fill).
use agent_common::maps::{self, DropCounters, Sandbox};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};

use super::{LoadError, Sensor, user_dev_to_kernel};
use crate::scope::compile::CompiledScope;

impl Sensor {
    /// Writes a compiled scope's kernel state for `slot` and then marks `cgroup_ids` as that
    /// sandbox (the watch entry goes last, so no check ever sees half a scope).
    /// A table that fills up leaves nothing of the scope behind (what was written is removed).
    pub fn bind(&mut self, slot: u32, cgroup_ids: &[u64], scope: &CompiledScope) -> Result<(), LoadError> {
        if let Err(e) = self.write_scope_tables(slot, scope, true) {
            let _ = self.write_scope_tables(slot, scope, false);
            return Err(e.full_or_self());
        }
        let mut flags = scope.flags;
        if self.lsm_engine {
            flags |= maps::sandbox_flags::LSM;
        }
        let mut w = self.watched()?;
        for id in cgroup_ids {
            w.insert(id, Sandbox { slot, flags }, 0)
                .map_err(|source| LoadError::Map { name: maps::WATCHED, source })?;
        }
        Ok(())
    }

    /// Removes everything `bind` wrote for `slot`: the watch entries first (checks stop
    /// applying to the sandbox at once), then the scope tables, and with egress by name every
    /// address the resolver granted the slot.
    pub fn unbind(&mut self, slot: u32, scope: &CompiledScope) -> Result<(), LoadError> {
        self.unwatch_slot(slot)?;
        self.write_scope_tables(slot, scope, false)?;
        if scope.flags & maps::sandbox_flags::DNS_REDIRECT != 0 {
            self.clear_egress_slot(slot)?;
        }
        Ok(())
    }

    /// Removes every egress-trie entry of `slot` (resolved addresses included, also those a
    /// previous daemon granted). Returns how many.
    pub fn clear_egress_slot(&mut self, slot: u32) -> Result<usize, LoadError> {
        let m = self.ebpf.map_mut(maps::EGRESS).ok_or(LoadError::MissingMap(maps::EGRESS))?;
        let mut trie: LpmTrie<&mut MapData, maps::EgressAddr, maps::EgressRules> =
            LpmTrie::try_from(m).map_err(|source| LoadError::Map { name: maps::EGRESS, source })?;
        let keys: Vec<Key<maps::EgressAddr>> =
            trie.keys().filter_map(Result::ok).filter(|k| k.data().slot_be == slot.to_be_bytes()).collect();
        for k in &keys {
            let _ = trie.remove(k);
        }
        Ok(keys.len())
    }

    /// Where the kernel sends the DNS of `DNS_REDIRECT` sandboxes (the node resolver).
    pub fn set_dns_config(&mut self, cfg: maps::DnsConfig) -> Result<(), LoadError> {
        let m = self.ebpf.map_mut(maps::DNS_CONFIG).ok_or(LoadError::MissingMap(maps::DNS_CONFIG))?;
        let mut a: Array<&mut MapData, maps::DnsConfig> =
            Array::try_from(m).map_err(|source| LoadError::Map { name: maps::DNS_CONFIG, source })?;
        a.set(0, cfg, 0).map_err(|source| LoadError::Map { name: maps::DNS_CONFIG, source })
    }

    /// A handle of its own on the egress trie, for the resolver to add what it answers
    /// while the sensor goes on binding and unbinding sandboxes.
    pub fn egress_handle(&self) -> Result<LpmTrie<MapData, maps::EgressAddr, maps::EgressRules>, LoadError> {
        let name = maps::EGRESS;
        let Some(Map::LpmTrie(data)) = self.ebpf.map(name) else { return Err(LoadError::MissingMap(name)) };
        let id = data.info().map_err(|source| LoadError::Map { name, source })?.id();
        let own = MapData::from_id(id).map_err(|source| LoadError::Map { name, source })?;
        LpmTrie::try_from(Map::LpmTrie(own)).map_err(|source| LoadError::Map { name, source })
    }

    pub(super) fn hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<&mut MapData, K, V>, LoadError> {
        let m = self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
        HashMap::try_from(m).map_err(|source| LoadError::Map { name, source })
    }

    /// Inserts (or removes) every table entry of `scope` for `slot`: the exec allowlist, the
    /// egress trie and, under the BPF LSM engine, the file and secret rules. Removal ignores
    /// entries that are already gone.
    pub(super) fn write_scope_tables(
        &mut self,
        slot: u32,
        scope: &CompiledScope,
        insert: bool,
    ) -> Result<(), LoadError> {
        fn set<K: aya::Pod, V: aya::Pod>(
            m: &mut HashMap<&mut MapData, K, V>,
            name: &'static str,
            key: K,
            value: V,
            insert: bool,
        ) -> Result<(), LoadError> {
            if insert {
                m.insert(key, value, 0).map_err(|source| LoadError::Map { name, source })
            } else {
                let _ = m.remove(&key);
                Ok(())
            }
        }
        if let Some(exec) = &scope.exec {
            let mut m = self.hash_map::<maps::ExecKey, u32>(maps::EXEC_ALLOW)?;
            for f in exec {
                let key = maps::ExecKey { slot, dev: user_dev_to_kernel(f.dev), ino: f.ino };
                set(&mut m, maps::EXEC_ALLOW, key, maps::exec_allow::FILE, insert)?;
            }
            for d in &scope.exec_dirs {
                let key = maps::ExecKey { slot, dev: user_dev_to_kernel(d.dev), ino: d.ino };
                set(&mut m, maps::EXEC_ALLOW, key, maps::exec_allow::DIR, insert)?;
            }
        }
        if let Some(entries) = &scope.egress {
            let m = self.ebpf.map_mut(maps::EGRESS).ok_or(LoadError::MissingMap(maps::EGRESS))?;
            let mut trie: LpmTrie<&mut MapData, maps::EgressAddr, maps::EgressRules> =
                LpmTrie::try_from(m).map_err(|source| LoadError::Map { name: maps::EGRESS, source })?;
            for e in entries {
                let key =
                    Key::new(e.prefix_len, maps::EgressAddr { slot_be: slot.to_be_bytes(), addr: e.addr });
                if insert {
                    trie.insert(&key, e.rules, 0)
                        .map_err(|source| LoadError::Map { name: maps::EGRESS, source })?;
                } else {
                    let _ = trie.remove(&key);
                }
            }
        }
        if !self.lsm_engine {
            let name = maps::UNIX_RULES;
            let m = self.ebpf.map_mut(name).ok_or(LoadError::MissingMap(name))?;
            let mut trie: LpmTrie<&mut MapData, maps::UnixPathKey, u32> =
                LpmTrie::try_from(m).map_err(|source| LoadError::Map { name, source })?;
            for r in &scope.unix_rules {
                let mut data = maps::UnixPathKey { slot_be: slot.to_be_bytes(), ..Default::default() };
                data.path[..r.name.len()].copy_from_slice(&r.name);
                let key = Key::new(32 + 8 * r.name.len() as u32, data);
                if insert {
                    trie.insert(&key, r.bits, 0).map_err(|source| LoadError::Map { name, source })?;
                } else {
                    let _ = trie.remove(&key);
                }
            }
            return Ok(());
        }
        let mut rules = self.hash_map::<maps::FileKey, u32>(maps::FILE_RULES)?;
        for r in scope.file_rules.iter() {
            let key = maps::FileKey { slot, dev: user_dev_to_kernel(r.dev), ino: r.ino };
            set(&mut rules, maps::FILE_RULES, key, r.bits, insert)?;
        }
        let mut tools = self.hash_map::<maps::SecretToolKey, u32>(maps::SECRET_TOOLS)?;
        for s in &scope.secrets {
            for t in &s.tools {
                let key = maps::SecretToolKey {
                    slot,
                    secret_dev: user_dev_to_kernel(s.file.dev),
                    secret_ino: s.file.ino,
                    tool_dev: user_dev_to_kernel(t.dev),
                    _pad0: 0,
                    tool_ino: t.ino,
                };
                set(&mut tools, maps::SECRET_TOOLS, key, 1, insert)?;
            }
        }
        Ok(())
    }

    pub(super) fn watched(&mut self) -> Result<HashMap<&mut MapData, u64, Sandbox>, LoadError> {
        self.hash_map(maps::WATCHED)
    }

    /// Removes every cgroup bound to `slot` (including children the kernel added).
    pub fn unwatch_slot(&mut self, slot: u32) -> Result<usize, LoadError> {
        let mut w = self.watched()?;
        let ids: Vec<u64> =
            w.iter().filter_map(Result::ok).filter(|(_, s)| s.slot == slot).map(|(k, _)| k).collect();
        for id in &ids {
            let _ = w.remove(id);
        }
        Ok(ids.len())
    }

    /// Records lost to a full ring buffer for `slot`, summed over CPUs.
    pub fn drops(&self, slot: u32) -> Result<DropCounters, LoadError> {
        let m = self.ebpf.map(maps::DROPS).ok_or(LoadError::MissingMap(maps::DROPS))?;
        let a: PerCpuArray<&MapData, DropCounters> =
            PerCpuArray::try_from(m).map_err(|source| LoadError::Map { name: maps::DROPS, source })?;
        let per_cpu = a.get(&slot, 0).map_err(|source| LoadError::Map { name: maps::DROPS, source })?;
        Ok(per_cpu.iter().fold(DropCounters::default(), |acc, d| DropCounters {
            total: acc.total + d.total,
            exec: acc.exec + d.exec,
            fork: acc.fork + d.fork,
            exit: acc.exit + d.exit,
            connect: acc.connect + d.connect,
            denials: acc.denials + d.denials,
        }))
    }

    /// Zeroes the drop counters of `slot` (before reusing it).
    pub fn reset_drops(&mut self, slot: u32) -> Result<(), LoadError> {
        let m = self.ebpf.map_mut(maps::DROPS).ok_or(LoadError::MissingMap(maps::DROPS))?;
        let mut a: PerCpuArray<&mut MapData, DropCounters> =
            PerCpuArray::try_from(m).map_err(|source| LoadError::Map { name: maps::DROPS, source })?;
        let n = aya::util::nr_cpus().map_err(|(_, e)| LoadError::Cpus(e))?;
        let zeros =
            aya::maps::PerCpuValues::try_from(vec![DropCounters::default(); n]).map_err(LoadError::Cpus)?;
        a.set(slot, zeros, 0).map_err(|source| LoadError::Map { name: maps::DROPS, source })
    }

    /// Global kernel counters (`agent_common::maps::stat`), summed over CPUs.
    pub fn stats(&self) -> Result<Vec<u64>, LoadError> {
        let m = self.ebpf.map(maps::STATS).ok_or(LoadError::MissingMap(maps::STATS))?;
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(m).map_err(|source| LoadError::Map { name: maps::STATS, source })?;
        (0..maps::stat::COUNT)
            .map(|i| {
                a.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|source| LoadError::Map { name: maps::STATS, source })
            })
            .collect()
    }

    /// Ring-buffer fill in bytes: the most any CPU saw waiting when it last submitted a
    /// record (`stat::RING_FILL`, a per-CPU gauge, so the maximum, not the sum).
    pub fn ring_fill(&self) -> Result<u64, LoadError> {
        let m = self.ebpf.map(maps::STATS).ok_or(LoadError::MissingMap(maps::STATS))?;
        let a: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(m).map_err(|source| LoadError::Map { name: maps::STATS, source })?;
        let per_cpu = a
            .get(&maps::stat::RING_FILL, 0)
            .map_err(|source| LoadError::Map { name: maps::STATS, source })?;
        Ok(per_cpu.iter().copied().max().unwrap_or(0))
    }
}
