//! Loader: BTF offsets, loading and attaching the kernel programs as one unit (a *sensor*);
//! the maps userspace drives are in `tables`.
pub mod btf;
pub mod engine;
pub mod pin;
pub mod probe;
pub mod raw_unix;
mod tables;
#[cfg(feature = "test-hooks")]
mod testing;

use agent_common::{
    config::{KernelOffsets, OFFSETS_GLOBAL},
    maps,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, Lsm, links::FdLink},
};

pub use self::{
    btf::KernelBtf,
    engine::{Engine, EngineChoice, select_engine},
    pin::PinLayout,
};

/// The eBPF object built by `build.rs` from `agent-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Errors from loading or driving the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("cannot parse kernel BTF for aya: {0}")]
    AyaBtf(#[from] aya::BtfError),
    #[error("cannot load the eBPF object: {0} (are you root, with CAP_BPF and CAP_PERFMON?)")]
    Load(#[from] aya::EbpfError),
    #[error("program `{name}`: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("map `{name}`: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("cannot open cgroup {0}: {1}")]
    Cgroup(String, std::io::Error),
    #[error("cannot count possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("map or program `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("pinning `{what}`: {source}")]
    Pin { what: String, source: aya::pin::PinError },
    #[error("program `{name}`: its attachment cannot be pinned: {source}")]
    Link { name: &'static str, source: aya::programs::links::LinkError },
    #[error(transparent)]
    Unix(#[from] raw_unix::RawError),
    #[error(
        "map `{name}` is full: raise `maps.{setting}` in the daemon config (`warden run`: the same \
         limit) or end tasks; nothing of this task's scope was left in the kernel"
    )]
    Full { name: &'static str, setting: &'static str },
    #[error("pinned state {path}: {source}")]
    PinDir { path: String, source: std::io::Error },
    #[error(
        "LSM hook `{hook}` takes {found:?} parameters on this kernel, `{name}` was written for {expected}"
    )]
    HookPrototype { name: &'static str, hook: &'static str, expected: usize, found: Option<usize> },
}

impl LoadError {
    /// A map insert that failed because the map is full (`E2BIG` from hash maps, `ENOSPC`
    /// from LPM tries) becomes [`LoadError::Full`], naming the setting that sizes it.
    pub fn full_or_self(self) -> Self {
        if let LoadError::Map { name, source: aya::maps::MapError::SyscallError(e) } = &self
            && matches!(e.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC))
        {
            let setting = match *name {
                maps::EXEC_ALLOW => "max_exec",
                maps::EGRESS => "max_egress",
                maps::FILE_RULES => "max_file_rules",
                maps::UNIX_RULES => "max_unix_rules",
                maps::SECRET_TOOLS => "max_exec",
                _ => return self,
            };
            return LoadError::Full { name, setting };
        }
        self
    }
}

/// Sizes chosen at load time (also the daemon config's `maps` section, so strict: unknown
/// fields are errors, omitted ones keep their defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadOptions {
    /// Ring buffer bytes (a power-of-two multiple of the page size).
    pub ring_bytes: u32,
    /// Sandbox slots.
    pub max_tasks: u32,
    /// cgroups that may belong to sandboxes.
    pub max_cgroups: u32,
    /// Allowed executables, over all sandboxes (also sizes the secret-tool table).
    pub max_exec: u32,
    /// Egress prefixes, over all sandboxes.
    pub max_egress: u32,
    /// File rules (BPF LSM engine), over all sandboxes.
    pub max_file_rules: u32,
    /// Unix-socket name rules (fallback engine), over all sandboxes.
    pub max_unix_rules: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: maps::DEFAULT_RING_BYTES,
            max_tasks: maps::DEFAULT_MAX_TASKS,
            max_cgroups: maps::DEFAULT_MAX_CGROUPS,
            max_exec: maps::DEFAULT_MAX_EXEC,
            max_egress: maps::DEFAULT_MAX_EGRESS,
            max_file_rules: maps::DEFAULT_MAX_FILE_RULES,
            max_unix_rules: maps::DEFAULT_MAX_UNIX_RULES,
        }
    }
}

/// The cgroup sock_addr programs that judge egress (and redirect DNS, restoring the reply's
/// source on `recvmsg`), attached to each sandbox cgroup.
pub const EGRESS_PROGRAMS: [&str; 8] = [
    "egress_connect4",
    "egress_connect6",
    "egress_sendmsg4",
    "egress_sendmsg6",
    "egress_recvmsg4",
    "egress_recvmsg6",
    "egress_getpeername4",
    "egress_getpeername6",
];

/// The BPF LSM engine's programs: (program, hook, the hook's parameter count). A program
/// reads the previous verdict (`ret`) right after the hook's own parameters, so a hook whose
/// prototype differs on the running kernel is refused before loading (the `bpf` hook, which
/// gained a parameter in 6.14, has one program per prototype).
pub const LSM_PROGRAMS: [(&str, &str, usize); 22] = [
    ("lsm_bprm_check", "bprm_check_security", 1),
    ("lsm_file_open", "file_open", 1),
    ("lsm_mmap_file", "mmap_file", 4),
    ("lsm_file_mprotect", "file_mprotect", 3),
    ("lsm_task_kill", "task_kill", 4),
    ("lsm_ptrace", "ptrace_access_check", 2),
    ("lsm_bpf", "bpf", 3),
    ("lsm_sb_mount", "sb_mount", 5),
    ("lsm_move_mount", "move_mount", 2),
    ("lsm_kernel_read_file", "kernel_read_file", 3),
    ("lsm_kernel_load_data", "kernel_load_data", 2),
    ("lsm_path_mknod", "path_mknod", 4),
    ("lsm_path_mkdir", "path_mkdir", 3),
    ("lsm_path_symlink", "path_symlink", 3),
    ("lsm_path_unlink", "path_unlink", 2),
    ("lsm_path_rmdir", "path_rmdir", 2),
    ("lsm_path_truncate", "path_truncate", 1),
    ("lsm_path_chmod", "path_chmod", 2),
    ("lsm_path_link", "path_link", 3),
    ("lsm_path_rename", "path_rename", 5),
    ("lsm_unix_stream_connect", "unix_stream_connect", 3),
    ("lsm_unix_may_send", "unix_may_send", 2),
];

/// The process-lifecycle tracepoints every sensor attaches.
pub const SCHED_PROGRAMS: [&str; 5] =
    ["sched_process_exec", "sched_process_fork", "sched_process_exit", "cgroup_mkdir", "cgroup_rmdir"];

/// Loads the object with the running kernel's offsets and the given sizes. Programs are
/// not loaded into the kernel yet. With `pins`, the shared maps are the ones pinned there
/// (re-adopted when present, created and pinned when not).
pub fn load_object(
    offsets: &KernelOffsets,
    opts: &LoadOptions,
    aya_btf: Option<&aya::Btf>,
    pins: Option<&PinLayout>,
) -> Result<Ebpf, LoadError> {
    // `new` reads the kernel's BTF itself; `None` uses that copy (freed with the loader)
    // instead of keeping a second one alive at the process's memory peak.
    let mut loader = EbpfLoader::new();
    if let Some(b) = aya_btf {
        loader.btf(Some(b));
    }
    loader
        .override_global(OFFSETS_GLOBAL, offsets, true)
        .map_max_entries(maps::EVENTS, opts.ring_bytes)
        .map_max_entries(maps::WATCHED, opts.max_cgroups)
        .map_max_entries(maps::DROPS, opts.max_tasks)
        .map_max_entries(maps::EXEC_ALLOW, opts.max_exec)
        .map_max_entries(maps::EGRESS, opts.max_egress)
        .map_max_entries(maps::FILE_RULES, opts.max_file_rules)
        .map_max_entries(maps::SECRET_TOOLS, opts.max_exec)
        .map_max_entries(maps::UNIX_RULES, opts.max_unix_rules);
    if let Some(p) = pins {
        for name in pin::PINNED_MAPS {
            loader.map_pin_path(name, p.map_path(name));
        }
    }
    #[cfg(feature = "test-hooks")]
    testing::configure(&mut loader, opts, pins);
    Ok(loader.load(EBPF_OBJECT)?)
}

/// Pins an attachment at `path`: it stays attached after this process closes it.
fn pin_link(link: FdLink, path: &std::path::Path) -> Result<(), LoadError> {
    link.pin(path).map(drop).map_err(|source| LoadError::Pin { what: path.display().to_string(), source })
}

/// The program `name` of `ebpf`, as its concrete type.
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingMap(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Loaded and attached programs plus their maps. Dropping it detaches everything.
pub struct Sensor {
    /// Egress program attachments (declared before `ebpf` so they are released first).
    egress_links: Vec<aya::programs::cgroup_sock_addr::CgroupSockAddrLink>,
    /// Unix-socket program attachments of sandboxes whose links are not pinned.
    unix_links: Vec<std::os::fd::OwnedFd>,
    /// The fallback engine's unix-socket programs, or why this kernel does not load them.
    unix: Result<raw_unix::UnixPrograms, String>,
    lsm_engine: bool,
    /// Where attachments and maps are pinned (node daemon), if anywhere.
    pins: Option<PinLayout>,
    /// Node-wide attachments that were already pinned and were kept instead of attached again.
    adopted: Vec<&'static str>,
    ebpf: Ebpf,
    ring: Option<RingBuf<MapData>>,
    /// The kernel's BTF as aya reads it (≈ 13 MiB), for loading programs; `None` once
    /// [`Sensor::release_btf`] dropped it (read again if a program is loaded later).
    aya_btf: Option<aya::Btf>,
    /// `bpf_lsm_<hook>` parameter counts of the running kernel, for the LSM programs.
    lsm_hook_params: Vec<(&'static str, Option<usize>)>,
    pub offsets: KernelOffsets,
}

impl Sensor {
    /// Resolves offsets from the running kernel, loads, and attaches the lifecycle programs.
    /// Everything is released when the sensor is dropped.
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        Self::load_with(opts, None)
    }

    /// Like [`Sensor::load`], but maps and attachments are pinned under `pins` and outlive
    /// the process. Attachments already pinned there are re-adopted, not attached twice.
    pub fn load_pinned(opts: &LoadOptions, pins: &PinLayout) -> Result<Self, LoadError> {
        pins.create_dirs()
            .map_err(|source| LoadError::PinDir { path: pins.dir().display().to_string(), source })?;
        Self::load_with(opts, Some(pins))
    }

    fn load_with(opts: &LoadOptions, pins: Option<&PinLayout>) -> Result<Self, LoadError> {
        // Dropped before aya reads the BTF again: btf-rs's tables of the running kernel take
        // ≈ 35 MiB, which would otherwise add to aya's at the process's peak.
        let (offsets, lsm_hook_params) = {
            let kbtf = KernelBtf::from_sys()?;
            let offsets = kbtf.kernel_offsets()?;
            let params: Vec<(&'static str, Option<usize>)> = LSM_PROGRAMS
                .iter()
                .map(|(_, hook, _)| (*hook, kbtf.func_params(&format!("bpf_lsm_{hook}"))))
                .collect();
            (offsets, params)
        };
        let mut ebpf = load_object(&offsets, opts, None, pins)?;
        // Read after the object's load, whose loader held (and freed) its own copy.
        let aya_btf = aya::Btf::from_sys_fs()?;
        let mut adopted = Vec::new();
        for name in SCHED_PROGRAMS {
            let pin_path = pins.map(|p| p.link_path(name));
            if pin_path.as_ref().is_some_and(|p| p.exists()) {
                adopted.push(name);
                continue;
            }
            let prog: &mut BtfTracePoint = program(&mut ebpf, name)?;
            prog.load(name, &aya_btf).map_err(|source| LoadError::Program { name, source })?;
            let id = prog.attach().map_err(|source| LoadError::Program { name, source })?;
            if let Some(path) = pin_path {
                let link = prog.take_link(id).map_err(|source| LoadError::Program { name, source })?;
                pin_link(FdLink::from(link), &path)?;
            }
        }
        for name in EGRESS_PROGRAMS {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(|source| LoadError::Program { name, source })?;
        }
        // Before the ring buffer leaves `ebpf`: the unix programs are relocated against its maps.
        let unix = raw_unix::UnixPrograms::load(&ebpf, EBPF_OBJECT, &aya_btf).map_err(|e| {
            tracing::warn!(error = %e, "pathname unix-socket connects are not judged on this kernel (fallback engine)");
            e.to_string()
        });
        let ring = ebpf.take_map(maps::EVENTS).ok_or(LoadError::MissingMap(maps::EVENTS))?;
        let ring = RingBuf::try_from(ring).map_err(|source| LoadError::Map { name: maps::EVENTS, source })?;
        Ok(Self {
            egress_links: Vec::new(),
            unix_links: Vec::new(),
            unix,
            lsm_engine: false,
            pins: pins.cloned(),
            adopted,
            ebpf,
            ring: Some(ring),
            aya_btf: Some(aya_btf),
            lsm_hook_params,
            offsets,
        })
    }

    /// Attaches the egress programs to a sandbox cgroup (descendants inherit them). The links
    /// go away with the cgroup or with the sensor.
    pub fn attach_egress(&mut self, cgroup: &crate::sandbox::Cgroup) -> Result<(), LoadError> {
        self.attach_egress_inner(cgroup, None)
    }

    /// Attaches the egress programs to the sandbox cgroup of `task` and pins the links under
    /// the task's pin directory, so they outlive this process (a pinned sensor; otherwise as
    /// [`Sensor::attach_egress`]). Links already pinned for the task are kept. Other links
    /// on the cgroup stay: during a migration the old and the new version both judge.
    pub fn attach_task_egress(
        &mut self,
        cgroup: &crate::sandbox::Cgroup,
        task: &str,
    ) -> Result<(), LoadError> {
        self.attach_egress_inner(cgroup, Some(task))
    }

    fn attach_egress_inner(
        &mut self,
        cgroup: &crate::sandbox::Cgroup,
        task: Option<&str>,
    ) -> Result<(), LoadError> {
        let dir = std::fs::File::open(cgroup.path())
            .map_err(|e| LoadError::Cgroup(cgroup.path().display().to_string(), e))?;
        let pin_dir = match (&self.pins, task) {
            (Some(p), Some(t)) => {
                let d = p.task_dir(t);
                std::fs::create_dir_all(&d)
                    .map_err(|source| LoadError::PinDir { path: d.display().to_string(), source })?;
                Some(d)
            }
            _ => None,
        };
        for name in EGRESS_PROGRAMS {
            let pin_path = pin_dir.as_ref().map(|d| d.join(name));
            if pin_path.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            // Through a bpf_link (what aya uses where the kernel has them), "single" is the
            // default mode, and links always coexist with other links on the cgroup.
            let link = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| LoadError::Program { name, source })?;
            // Keep the attachment for the cgroup's lifetime, not the program object's.
            let owned = prog.take_link(link).map_err(|source| LoadError::Program { name, source })?;
            match pin_path {
                Some(path) => {
                    let fd = FdLink::try_from(owned).map_err(|source| LoadError::Link { name, source })?;
                    pin_link(fd, &path)?;
                }
                None => self.egress_links.push(owned),
            }
        }
        // The fallback engine judges path-named unix sockets here too (the BPF LSM engine at
        // its own hooks, by the socket's file).
        if !self.lsm_engine
            && let Ok(unix) = &self.unix
        {
            let todo: Vec<&str> = raw_unix::UNIX_PROGRAMS
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| !pin_dir.as_ref().is_some_and(|d| d.join(n).exists()))
                .collect();
            if !todo.is_empty() {
                use std::os::fd::AsFd;
                for (name, link) in unix.attach(dir.as_fd())? {
                    if !todo.contains(&name) {
                        continue;
                    }
                    match &pin_dir {
                        Some(d) => raw_unix::pin(&link, &d.join(name))?,
                        None => self.unix_links.push(link),
                    }
                }
            }
        }
        Ok(())
    }

    /// Why path-named unix sockets are not judged by this sensor's fallback engine (the
    /// kernel refused the cgroup unix programs: before 6.7), or `None` when they are.
    pub fn unix_unjudged(&self) -> Option<&str> {
        self.unix.as_ref().err().map(String::as_str)
    }

    /// Detaches the pinned egress programs of `task` (their pins are removed).
    pub fn detach_task_egress(&mut self, task: &str) -> Result<usize, LoadError> {
        match &self.pins {
            Some(p) => p
                .remove_task(task)
                .map_err(|source| LoadError::PinDir { path: p.task_dir(task).display().to_string(), source }),
            None => Ok(0),
        }
    }

    /// Whether the BPF LSM engine of this sensor's pin version is pinned (a previous daemon
    /// attached it): [`Sensor::attach_lsm_engine`] then adopts it.
    pub fn lsm_engine_pinned(&self) -> bool {
        self.pins.as_ref().is_some_and(|p| LSM_PROGRAMS.iter().any(|(name, ..)| p.link_path(name).exists()))
    }

    /// Node-wide attachments found pinned at load and kept (a restarted daemon re-adopting).
    pub fn adopted(&self) -> &[&'static str] {
        &self.adopted
    }

    /// The pin layout of a pinned sensor.
    pub fn pins(&self) -> Option<&PinLayout> {
        self.pins.as_ref()
    }

    /// Loads and attaches every program of the BPF LSM engine. Fails (and leaves nothing
    /// attached) on kernels that refuse BPF LSM; callers fall back to the fallback engine.
    pub fn attach_lsm_engine(&mut self) -> Result<(), LoadError> {
        let mut attached = Vec::new();
        // The `bpf` hook gained a parameter in 6.14: one program per prototype.
        let bpf_prog = if self.offsets.lsm_bpf_ret == 4 { "lsm_bpf_k" } else { "lsm_bpf" };
        for (name, hook, params) in LSM_PROGRAMS {
            let (name, params) = if name == "lsm_bpf" {
                (bpf_prog, self.offsets.lsm_bpf_ret as usize)
            } else {
                (name, params)
            };
            if self.pins.as_ref().is_some_and(|p| p.link_path(name).exists()) {
                self.adopted.push(name);
                continue;
            }
            let found = self.lsm_hook_params.iter().find(|(h, _)| *h == hook).and_then(|(_, n)| *n);
            let r = (|| {
                if found != Some(params) {
                    return Err(LoadError::HookPrototype { name, hook, expected: params, found });
                }
                let btf = match &mut self.aya_btf {
                    Some(b) => &*b,
                    slot => &*slot.insert(aya::Btf::from_sys_fs()?),
                };
                let prog: &mut Lsm = program(&mut self.ebpf, name)?;
                prog.load(hook, btf).map_err(|source| LoadError::Program { name, source })?;
                let link = prog.attach().map_err(|source| LoadError::Program { name, source })?;
                Ok::<_, LoadError>(link)
            })();
            match r {
                Ok(link) => attached.push((name, link)),
                Err(e) => {
                    for (n, link) in attached {
                        if let Some(Ok(p)) = self.ebpf.program_mut(n).map(<&mut Lsm>::try_from) {
                            let _ = p.detach(link);
                        }
                    }
                    return Err(e);
                }
            }
        }
        // Pinned only once every hook is attached: a half engine is never left behind.
        if let Some(pins) = self.pins.clone() {
            for (name, id) in attached {
                let prog: &mut Lsm = program(&mut self.ebpf, name)?;
                let link = prog.take_link(id).map_err(|source| LoadError::Program { name, source })?;
                pin_link(FdLink::from(link), &pins.link_path(name))?;
            }
        }
        self.lsm_engine = true;
        Ok(())
    }

    /// Drops the kernel BTF kept for loading programs (≈ 13 MiB of a daemon's heap): for a
    /// process that has attached its engine. A later program load reads it again.
    pub fn release_btf(&mut self) {
        self.aya_btf = None;
    }

    /// The kernel BTF, read again if [`Sensor::release_btf`] dropped it.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn btf(&mut self) -> Result<&aya::Btf, LoadError> {
        if self.aya_btf.is_none() {
            self.aya_btf = Some(aya::Btf::from_sys_fs()?);
        }
        Ok(self.aya_btf.as_ref().expect("just set"))
    }

    /// Whether the BPF LSM engine is attached.
    pub fn lsm_engine(&self) -> bool {
        self.lsm_engine
    }

    /// The ring buffer; can be taken once.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }
}

/// Converts a userspace `st_dev` to the kernel's internal `dev_t` (`major << 20 | minor`).
pub fn user_dev_to_kernel(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xfffff)
}
