//! The fallback engine's in-process confinement, prepared in the parent and applied in the
//! child between fork and exec: a Landlock domain (files by hierarchy, execute, signal and
//! abstract-socket scoping, ptrace of processes outside the sandbox) and a seccomp filter
//! for the syscalls the scope forbids. Both log their refusals to the kernel's audit
//! subsystem, where Warden reads them (`crate::kaudit`): the domain is created with
//! `LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON` (by default Landlock stops logging at the first
//! exec, and the task's first instruction is already after one), the filter with
//! `SECCOMP_FILTER_FLAG_LOG`.
use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, Scope as LlScope,
};
use seccompiler::BpfProgram;
use std::os::raw::c_ulong;

use crate::scope::compile::CompiledScope;

/// Errors preparing confinement.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("Landlock is not available on this kernel ({0}); file rules cannot be enforced")]
    NoLandlock(String),
    #[error("building the Landlock ruleset: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("duplicating the Landlock ruleset descriptor: {0}")]
    RulesetDup(std::io::Error),
}

/// The highest Landlock ABI this build asks for (best effort below it).
const LANDLOCK_ABI: ABI = ABI::V6;

/// Landlock ABI version, from `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`.
pub fn landlock_abi() -> Result<i64, String> {
    // SAFETY: documented version query; no pointers dereferenced.
    let r = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    if r < 0 { Err(format!("landlock_create_ruleset: {}", std::io::Error::last_os_error())) } else { Ok(r) }
}

/// What to apply in the child.
pub struct Confinement {
    ruleset: Option<RulesetCreated>,
    /// A second descriptor of the same Landlock ruleset, for rules on objects that exist only
    /// after the fork (the procfs of the task's PID namespace).
    ruleset_fd: Option<std::os::fd::OwnedFd>,
    seccomp: Option<BpfProgram>,
    /// The unlogged `clone3` filter (`seccomp::build_no_clone3`), when the scope needs it.
    no_clone3: Option<BpfProgram>,
}

/// `struct landlock_path_beneath_attr` (packed in the kernel's UAPI).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}
const _: () = assert!(size_of::<PathBeneathAttr>() == 12);

/// `LANDLOCK_RULE_PATH_BENEATH`.
const LANDLOCK_RULE_PATH_BENEATH: libc::c_long = 1;

fn read_access() -> landlock::BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

fn write_access() -> landlock::BitFlags<AccessFs> {
    AccessFs::from_write(LANDLOCK_ABI) & !(AccessFs::MakeChar | AccessFs::MakeBlock)
}

impl Confinement {
    /// Syscalls the BPF LSM engine judges (and records) at its hooks instead of seccomp.
    pub const LSM_JUDGED: &[&str] = &[
        "bpf",
        "mount",
        "move_mount",
        "init_module",
        "finit_module",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
    ];

    /// Prepares what the child applies: for the fallback engine the Landlock ruleset and the
    /// seccomp program; for the BPF LSM engine only the seccomp program for what no LSM hook
    /// judges (io_uring setup, kexec, ...). In the parent: this opens files and allocates.
    pub fn prepare(c: &CompiledScope, lsm_engine: bool) -> Result<Self, ConfineError> {
        let seccomp = Self::seccomp(c, lsm_engine)?;
        let no_clone3 = Self::process_policy(c).no_clone3().then(super::seccomp::build_no_clone3);
        if lsm_engine {
            return Ok(Self { ruleset: None, ruleset_fd: None, seccomp, no_clone3 });
        }
        let abi = landlock_abi().map_err(ConfineError::NoLandlock)?;
        tracing::debug!(abi, "landlock");
        // Execute is not handled here: exec identity is judged at `sched_process_exec`, where a
        // denial is recorded (a Landlock refusal would leave no audit record).
        let mut rs = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(LANDLOCK_ABI) & !AccessFs::Execute)?
            .scope(LlScope::from_all(LANDLOCK_ABI))?
            .create()?
            // Log denials after exec too (ABI 7; best effort below, where nothing is logged).
            .log_new_exec(true)?;
        let list: landlock::BitFlags<AccessFs> = AccessFs::ReadDir.into();
        let rules = [
            (&c.landlock.read, read_access()),
            (&c.landlock.write, write_access()),
            (&c.landlock.list, list),
        ];
        for (paths, access) in rules {
            for p in paths {
                // Paths vanish (tmp files) between compile and now: skip those.
                let Ok(fd) = PathFd::new(p) else { continue };
                rs = rs.add_rule(PathBeneath::new(fd, access))?;
            }
        }
        let ruleset_fd: Option<std::os::fd::OwnedFd> =
            rs.try_clone().map_err(ConfineError::RulesetDup)?.into();
        Ok(Self { ruleset: Some(rs), ruleset_fd, seccomp, no_clone3 })
    }

    /// Lets the task read beneath `dir_fd` (an `O_PATH` descriptor). For the child between
    /// fork and exec, before [`Self::apply`]: one raw syscall.
    pub fn grant_read(&self, dir_fd: libc::c_int) -> std::io::Result<()> {
        self.grant_beneath(dir_fd, read_access())
    }

    /// Lets the task use the ptys of its own devpts instance (`dir_fd`, an `O_PATH`
    /// descriptor of its root: `boundary.rs`, `terminal_view`) — new ptys through
    /// `/dev/ptmx`, which hold nothing but what the task itself puts there. Between fork and
    /// exec, before [`Self::apply`].
    pub fn grant_ptys(&self, dir_fd: libc::c_int) -> std::io::Result<()> {
        let rw = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
        // The slaves, reached through `TIOCGPTPEER` at their place in the instance.
        self.grant_beneath(dir_fd, rw)?;
        // Its `ptmx`, reached through binds (`/dev/ptmx`): a bind's root is the file itself,
        // and Landlock's walk leaves a mount at its root for the mount point's parent.
        // SAFETY: openat(2) with a static NUL-terminated name; the descriptor is closed below.
        let ptmx = unsafe { libc::openat(dir_fd, c"ptmx".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if ptmx < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = self.grant_beneath(ptmx, rw);
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(ptmx) };
        r
    }

    fn grant_beneath(
        &self,
        dir_fd: libc::c_int,
        access: landlock::BitFlags<AccessFs>,
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let Some(rs) = &self.ruleset_fd else { return Ok(()) };
        let attr = PathBeneathAttr { allowed_access: access.bits(), parent_fd: dir_fd };
        // SAFETY: landlock_add_rule(2) reads `attr`, which outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                rs.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                &attr as *const PathBeneathAttr,
                0u32,
            )
        };
        if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
    }

    /// Lets the task read, write and set up its own terminal (`slave`, the pty Warden relays:
    /// `tty.rs`) by its path too, as `tty`, `ssh` and editors open it. In the parent.
    pub fn grant_terminal(&mut self, slave: std::os::fd::BorrowedFd<'_>) -> Result<(), ConfineError> {
        if let Some(rs) = self.ruleset.take() {
            let access = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
            self.ruleset = Some(rs.add_rule(PathBeneath::new(slave, access))?);
        }
        Ok(())
    }

    fn seccomp(c: &CompiledScope, lsm_engine: bool) -> Result<Option<BpfProgram>, ConfineError> {
        let deny: Vec<i64> = c
            .seccomp_deny
            .iter()
            .filter(|(name, _)| !(lsm_engine && Self::LSM_JUDGED.contains(name)))
            .map(|(_, nr)| *nr)
            .collect();
        // Always a filter: the ABI check and the socket families hold even with nothing denied.
        Ok(Some(super::seccomp::build_with(&deny, Self::process_policy(c), c.sockets)))
    }

    fn process_policy(c: &CompiledScope) -> super::seccomp::ProcessPolicy {
        super::seccomp::ProcessPolicy {
            no_clone3: c.call,
            userns: c.scope.grants.contains(&crate::scope::raw::Grant::Userns),
            setid: c.scope.grants.contains(&crate::scope::raw::Grant::System),
        }
    }

    /// Applies the confinement to the calling process. Meant for the child between fork and
    /// exec: only syscalls, no allocation. Fails if Landlock did not enforce anything.
    pub fn apply(&mut self) -> std::io::Result<()> {
        if let Some(rs) = self.ruleset.take() {
            let status = rs.restrict_self().map_err(|_| std::io::Error::last_os_error())?;
            if status.ruleset == RulesetStatus::NotEnforced {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSYS));
            }
        }
        if let Some(prog) = &self.seccomp {
            apply_filter(prog, SECCOMP_FILTER_FLAG_LOG)?;
        }
        if let Some(prog) = &self.no_clone3 {
            apply_filter(prog, 0)?;
        }
        Ok(())
    }
}

/// `SECCOMP_FILTER_FLAG_LOG`: log every action of the filter but `ALLOW`.
const SECCOMP_FILTER_FLAG_LOG: c_ulong = 2;
const SECCOMP_SET_MODE_FILTER: c_ulong = 1;

/// Installs `prog` with `flags` (`SECCOMP_FILTER_FLAG_LOG`: each refused call becomes an
/// audit record). Only syscalls: safe between fork and exec.
fn apply_filter(prog: &BpfProgram, flags: c_ulong) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| std::io::Error::from_raw_os_error(libc::E2BIG))?,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fprog points to `prog`'s instructions (same layout as `sock_filter`), which
    // outlive the call; the kernel copies them.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &raw const fprog) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
