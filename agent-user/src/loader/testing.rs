//! Test-only kernel surface (feature `test-hooks`, enabled by the privileged tests): drives
//! the kernel outside the task lifecycle. Production builds have none of it, and their eBPF
//! object has no `EXEC_DENY` map.
use agent_common::maps::{self, Sandbox};
use aya::{Ebpf, EbpfLoader, programs::Lsm};

use super::{LoadError, LoadOptions, PinLayout, Sensor, program};

/// Sizes (and pins) the test-only maps.
pub(super) fn configure(loader: &mut EbpfLoader<'_>, opts: &LoadOptions, pins: Option<&PinLayout>) {
    loader.map_max_entries("EXEC_DENY", opts.max_cgroups);
    if let Some(p) = pins {
        loader.map_pin_path("EXEC_DENY", p.map_path("EXEC_DENY"));
    }
}

impl Sensor {
    /// Loads and attaches the BPF LSM `bprm_check_security` program, which refuses (EPERM)
    /// executables listed in `EXEC_DENY` for the caller's sandbox. Fails on kernels without
    /// BPF LSM (see `warden probe`).
    pub fn attach_lsm_exec(&mut self) -> Result<(), LoadError> {
        const NAME: &str = "lsm_bprm_check";
        self.btf()?;
        let btf = self.aya_btf.as_ref().expect("read just now");
        let prog: &mut Lsm = program(&mut self.ebpf, NAME)?;
        prog.load("bprm_check_security", btf).map_err(|source| LoadError::Program { name: NAME, source })?;
        prog.attach().map_err(|source| LoadError::Program { name: NAME, source })?;
        Ok(())
    }

    /// Refuses the file (kernel `dev_t`, inode) to sandbox `slot` at exec (LSM engine).
    pub fn deny_exec(&mut self, slot: u32, kernel_dev: u32, ino: u64) -> Result<(), LoadError> {
        const NAME: &str = "EXEC_DENY";
        let mut map = self.hash_map::<maps::ExecKey, u32>(NAME)?;
        map.insert(maps::ExecKey { slot, dev: kernel_dev, ino }, 1, 0)
            .map_err(|source| LoadError::Map { name: NAME, source })
    }

    /// Marks cgroups as belonging to the sandbox in `slot`.
    pub fn watch(&mut self, cgroup_ids: &[u64], slot: u32) -> Result<(), LoadError> {
        let mut w = self.watched()?;
        for id in cgroup_ids {
            w.insert(id, Sandbox { slot, flags: 0 }, 0)
                .map_err(|source| LoadError::Map { name: maps::WATCHED, source })?;
        }
        Ok(())
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}
