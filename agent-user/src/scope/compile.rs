//! Compilation: a validated [`Scope`] → what the kernel and the sandbox need.
//!
//! - exec: the (dev, inode) of every allowed file, symlinks resolved now — identity, not name;
//! - egress: LPM trie entries (slot, prefix) → port rules, with the rules of every containing
//!   network folded in, so the longest-prefix match alone decides;
//! - files: a Landlock plan; denied subtrees inside granted ones are carved out by granting
//!   the siblings along the path instead (Landlock only adds access), so anything created
//!   later next to a denied path is denied too (fail closed);
//! - unix sockets (fallback engine): `UNIX_RULES` entries by name, see [`unix_rules`];
//! - syscalls: the seccomp deny list.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read,
    net::IpAddr,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use agent_common::maps::{EGRESS_PORT_RULES, EgressRules, PortRule, file_rule, sandbox_flags};

use super::Mode;
use super::{EgressRule, Scope, ScopeError, raw::Grant, raw::Protocol};
use crate::sandbox::seccomp::SocketPolicy;

/// A file identified by what it is, not what it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileId {
    /// Userspace `st_dev`.
    pub dev: u64,
    pub ino: u64,
    /// The canonical path it was resolved to.
    pub path: PathBuf,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let canon = fs::canonicalize(path)?;
        let md = fs::metadata(&canon)?;
        Ok(FileId { dev: md.dev(), ino: md.ino(), path: canon })
    }
}

/// One entry of the egress trie for a sandbox: `prefix_len` counts the 32 slot bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressEntry {
    pub prefix_len: u32,
    pub addr: [u8; 16],
    pub rules: EgressRules,
}

/// What the Landlock domain grants; every other read or write is refused. (Execution is
/// judged by exec identity in the kernel, where refusals are recorded.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LandlockPlan {
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    /// Directories that may be listed (with everything beneath): the read roots, whole.
    /// Carving a denied path out of a root grants the root's children instead of the root,
    /// which would make the root itself (`ls /`) unlistable; listing shows names, never
    /// contents (on the fallback engine a denied directory's names are listable).
    pub list: Vec<PathBuf>,
}

/// Object rules for the BPF LSM engine (`FILE_RULES`): (dev, inode) → bits, stored small.
pub use super::file_rules::{FileRule, FileRules};

/// A `UNIX_RULES` entry (fallback engine): `name` is the key's path bytes — a path followed
/// by `/` (everything beneath) or by one NUL (the name itself) —, `bits` the `file_rule` bits
/// of that path and every ancestor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixRule {
    pub name: Vec<u8>,
    pub bits: u32,
}

/// The node daemon's call endpoint (`daemon/inside.rs`), when there is one: every task may
/// connect to it (it judges callers by their cgroup), like its own broker.
static CALL_SOCKET: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes the call endpoint at `p` reachable from every task compiled from now on.
pub fn allow_call_socket(p: PathBuf) {
    let _ = CALL_SOCKET.set(p);
}

/// The call endpoint every task may reach, if set.
pub fn call_socket() -> Option<&'static PathBuf> {
    CALL_SOCKET.get()
}

/// Names under which other names resolve through magic links (the task's own `/proc`, and
/// `/dev/fd`, `/dev/std*` into it): a unix socket named through them cannot be judged by
/// name. Other symlinks are followed at compile time (see [`unix_rules`]).
const UNIX_OPAQUE: &[&str] = &["/proc", "/dev/fd", "/dev/stdin", "/dev/stdout", "/dev/stderr"];

/// Rules for the fallback engine's unix-socket programs, which see the *name* a task
/// connects to (`sun_path`), not the file: a name under a `deny` path is refused, and when
/// `read` is restricted (`Some`) a name under none of its paths is refused too — the rule of
/// the BPF LSM engine's `unix_stream_connect`/`unix_may_send`, which judge the socket's
/// file like opening it for reading. `allow` names are reachable whatever their ancestors say
/// (the task's own broker).
///
/// Names are judged as given, so every rule is also written under the names that reach it
/// through the symlinks at the top of the tree (`/var/run` → `/run`, `/lib` → `/usr/lib`,
/// ... two levels down from `/`): such a symlink is an entry of its own with its target's
/// verdict, and the rules beneath its target are repeated beneath it.
pub fn unix_rules(deny: &[PathBuf], read: Option<&[PathBuf]>, allow: &[PathBuf]) -> Vec<UnixRule> {
    use std::os::unix::ffi::OsStrExt;
    let mut own: Vec<(PathBuf, u32)> = Vec::new();
    for d in deny {
        own.push((d.clone(), file_rule::DENY));
    }
    for r in read.into_iter().flatten() {
        own.push((r.clone(), file_rule::READ));
    }
    for o in UNIX_OPAQUE {
        own.push((PathBuf::from(o), file_rule::OPAQUE));
    }
    let fold = |p: &Path| own.iter().filter(|(r, _)| p.starts_with(r)).fold(0, |acc, (_, b)| acc | b);
    let mut names: BTreeMap<PathBuf, u32> = BTreeMap::new();
    for (p, _) in &own {
        names.insert(p.clone(), fold(p));
    }
    // Top-level symlinks: each one gets its target's verdict, and the rules beneath the
    // target are repeated beneath it.
    let mut links = Vec::new();
    let mut dirs = vec![PathBuf::from("/")];
    if let Ok(rd) = fs::read_dir("/") {
        for e in rd.flatten() {
            let p = e.path();
            if matches!(p.to_str(), Some("/proc" | "/sys")) {
                continue;
            }
            match e.file_type() {
                Ok(t) if t.is_symlink() => links.push(p),
                Ok(t) if t.is_dir() => dirs.push(p),
                _ => {}
            }
        }
    }
    for d in dirs.iter().skip(1) {
        if let Ok(rd) = fs::read_dir(d) {
            links.extend(
                rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_symlink())).map(|e| e.path()),
            );
        }
    }
    for l in links {
        let Ok(target) = fs::canonicalize(&l) else { continue };
        if target == l {
            continue;
        }
        let beneath: Vec<(PathBuf, u32)> = names
            .iter()
            .filter_map(|(p, b)| p.strip_prefix(&target).ok().map(|rest| (l.join(rest), *b)))
            .collect();
        let bits = fold(&target);
        if bits != 0 || !beneath.is_empty() {
            names.entry(l.clone()).or_insert(bits);
        }
        for (p, b) in beneath {
            names.entry(p).or_insert(b);
        }
    }
    for a in allow {
        names.insert(a.clone(), file_rule::READ);
    }
    let mut out = Vec::new();
    for (p, bits) in names {
        let b = p.as_os_str().as_bytes();
        if b == b"/" {
            out.push(UnixRule { name: b"/".to_vec(), bits });
            continue;
        }
        // `sun_path` holds 108 bytes: no name beneath a longer path can be given.
        if b.is_empty() || b.len() + 1 > agent_common::maps::UNIX_PATH_KEY - 4 {
            continue;
        }
        for end in [b'/', 0] {
            let mut name = b.to_vec();
            name.push(end);
            out.push(UnixRule { name, bits });
        }
    }
    out
}

/// Regular files enumerated beneath one denied directory (so a hard link to one of them
/// elsewhere is still refused); beyond this only the directory walk protects them.
const DENY_ENUM_LIMIT: usize = 4096;

/// A secret with the identities of its tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledSecret {
    pub file: FileId,
    pub tools: Vec<FileId>,
}

/// Protected paths of a scope, canonical: what names the rule of a refusal the kernel reports
/// by path (the fallback engine's Landlock denials).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protected {
    /// `files.deny` and the protected credential locations.
    pub deny: Vec<PathBuf>,
    /// The secrets' files.
    pub secrets: Vec<PathBuf>,
    /// System control paths no task may write.
    pub control: Vec<PathBuf>,
    /// The node's software, configuration and state, and its users' login files: no task
    /// writes them unless the scope grants `system` (empty then).
    pub system: Vec<PathBuf>,
    /// `files.read` / `files.write` roots; `None`: not restricted.
    pub read_roots: Option<Vec<PathBuf>>,
    pub write_roots: Option<Vec<PathBuf>>,
}

/// Which engine-specific tables a compile builds. Each is a snapshot of the filesystem at
/// compile time and together they are most of a compiled scope (on a test node ≈ 1,400 object
/// rules and a few hundred carve-out paths per task, ≈ 230 KiB): a process builds only the
/// ones it uses, so the node daemon does not keep 256 copies of tables nothing reads
/// (`docs/benchmarks.md`, daemon memory). What is built is built exactly as in a full compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Build {
    /// The Landlock plan: used by whoever launches a task's processes on the fallback engine
    /// (`warden run`, the `task exec` client), never by the daemon.
    pub landlock: bool,
    /// Object rules for the BPF LSM engine's maps.
    pub file_rules: bool,
    /// Unix-socket name rules for the fallback engine's maps.
    pub unix_rules: bool,
}

impl Build {
    /// Every table (`warden scope check`, tests, offline tools).
    pub const ALL: Build = Build { landlock: true, file_rules: true, unix_rules: true };

    /// What a process on `engine` (BPF LSM when `lsm`) needs: the map tables of its engine
    /// when it binds them (`bind`), the Landlock plan when it launches processes on the
    /// fallback engine (`launch`).
    pub fn for_engine(lsm: bool, bind: bool, launch: bool) -> Build {
        Build { landlock: launch && !lsm, file_rules: bind && lsm, unix_rules: bind && !lsm }
    }
}

/// Everything a task's sandbox is built from.
#[derive(Debug, Clone)]
pub struct CompiledScope {
    pub scope: Scope,
    /// `None`: any executable may run.
    pub exec: Option<Vec<FileId>>,
    /// `exec.allow` directory entries: any executable below one may run, also one the task
    /// writes there during the task (judged by the directory's identity, on both engines).
    pub exec_dirs: Vec<FileId>,
    pub secrets: Vec<CompiledSecret>,
    /// `None`: egress not restricted.
    pub egress: Option<Vec<EgressEntry>>,
    /// Empty unless built ([`Build::landlock`]).
    pub landlock: LandlockPlan,
    /// Object rules for the BPF LSM engine; empty unless built ([`Build::file_rules`]).
    pub file_rules: FileRules,
    /// Unix-socket name rules for the fallback engine; empty unless built
    /// ([`Build::unix_rules`]).
    pub unix_rules: Vec<UnixRule>,
    /// Syscalls refused with EPERM: (name, number).
    pub seccomp_deny: Vec<(&'static str, i64)>,
    /// Which sockets `socket`/`socketpair` may create (seccomp, both engines).
    pub sockets: SocketPolicy,
    /// `agent_common::maps::sandbox_flags` for the kernel.
    pub flags: u32,
    /// Every file that may be executed (allowed programs and their ELF interpreters),
    /// canonical: the sandbox's mount namespace makes each read-only.
    pub exec_paths: Vec<PathBuf>,
    /// The `files.write` roots as they resolve now (empty when writes are not restricted):
    /// the sandbox's mount namespace mounts them `noexec`.
    pub write_roots: Vec<PathBuf>,
    /// Protected paths, for naming the rule of a refusal reported by path (shared with the
    /// refusal reader's copy of the task, `kaudit::TaskInfo`).
    pub protected: std::sync::Arc<Protected>,
    /// The scope is a call's: its processes may not create children in other cgroups
    /// (`clone3` answers `ENOSYS`, `sandbox/seccomp.rs`).
    pub call: bool,
}

impl CompiledScope {
    /// Warnings about `exec.allow` directory entries the task can write into: whatever it
    /// writes there may run (arbitrary code), which is what a build directory is for — but
    /// it must be meant.
    pub fn exec_dir_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.exec_dirs {
            let d = &d.path;
            if self.scope.write.is_none() {
                out.push(format!(
                    "exec.allow: {}/ is a directory and files.write is not restricted: the task can write any \
                     program there and run it (arbitrary code); restrict files.write if that is not meant",
                    d.display()
                ));
            } else if let Some(w) = self.write_roots.iter().find(|w| d.starts_with(w) || w.starts_with(d)) {
                out.push(format!(
                    "exec.allow: {}/ is writable by the task (files.write {}): anything it writes there may \
                     run (arbitrary code), and that directory is not mounted noexec",
                    d.display(),
                    w.display()
                ));
            }
        }
        out
    }

    /// Whether an executable that ran as `exe` lies below an `exec.allow` directory.
    pub fn in_exec_dir(&self, exe: &Path) -> bool {
        self.exec_dirs.iter().any(|d| exe.starts_with(&d.path))
    }
}

/// Credential locations protected unless the scope grants `credentials`.
fn credential_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = [
        "/etc/shadow",
        "/etc/gshadow",
        "/var/run/secrets/kubernetes.io",
        "/run/secrets/kubernetes.io",
        "/root/.ssh",
        "/root/.aws",
        "/root/.kube",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Ok(rd) = fs::read_dir("/home") {
        for e in rd.flatten() {
            for d in [".ssh", ".aws", ".kube"] {
                v.push(e.path().join(d));
            }
        }
    }
    v
}

/// Control sockets (and the runtime directories holding them) of the node's services: a root
/// client of any of them starts processes outside every sandbox — a container runtime runs a
/// privileged container, the init's private socket and the system bus start units, a user's
/// bus reaches that user's service manager, the kubelet's sockets hand out devices. Denied
/// like `files.deny` (connect and open, both engines) unless granted `node-services`.
const SERVICE_SOCKETS: &[&str] = &[
    "/run/docker.sock",
    "/run/docker",
    "/run/containerd",
    "/run/crio",
    "/run/podman",
    "/run/k3s",
    "/run/libvirt",
    "/run/lxd",
    "/run/snapd.socket",
    "/run/snapd-snap.socket",
    "/run/systemd/private",
    "/run/systemd/transient",
    "/run/dbus/system_bus_socket",
    "/var/snap/lxd/common/lxd/unix.socket",
    "/var/lib/kubelet/pod-resources",
    "/var/lib/kubelet/device-plugins",
];

/// The node's service sockets that exist now ([`SERVICE_SOCKETS`], each user's bus and service
/// manager under `/run/user/*`): absent ones are left out, so that no new name is refused next
/// to where they would be (a service started after the task is not covered).
fn service_sockets() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = SERVICE_SOCKETS.iter().map(PathBuf::from).collect();
    if let Ok(rd) = fs::read_dir("/run/user") {
        for e in rd.flatten() {
            v.extend(["bus", "systemd"].iter().map(|f| e.path().join(f)));
        }
    }
    v.retain(|p| fs::symlink_metadata(p).is_ok());
    v
}

/// Node files no task may write: sysfs and procfs as a whole (cgroups — an escape —, bpffs,
/// `/sys/power`, `/sys/kernel`, `/proc/sys`, `/proc/sysrq-trigger`, ...), Warden's runtime
/// directory (API socket, state), and Warden's own executable wherever it is installed: a
/// task that replaced it (rename it away, put its own beside) would run as the next `warden`
/// the user starts at the terminal, or as the daemon after its restart.
fn control_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        ["/sys", "/sys/fs/cgroup", "/sys/fs/bpf", "/proc", "/run/warden"].iter().map(PathBuf::from).collect();
    if let Ok(m) = crate::sandbox::cgroup2_mount() {
        v.push(m);
    }
    if let Ok(exe) = std::env::current_exe() {
        v.push(exe);
    }
    v
}

/// The node's programs, libraries, configuration and state. What a task writes there outlives
/// it and runs outside its sandbox: a program or library every process of the node loads
/// (`/usr`, `/lib*`, `/etc/ld.so.preload`), a cron job, a systemd unit, an account
/// (`/etc/passwd`), a package database, the boot loader, the node's logs.
const SYSTEM_DIRS: &[&str] = &[
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/usr",
    "/boot",
    "/etc",
    "/var/lib",
    "/var/spool",
    "/var/log",
];

/// Files a login of a node user runs (relative to the home directory): a task that writes one
/// runs code as that user, outside the sandbox, at the next login or session.
const LOGIN_FILES: &[&str] = &[
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".pam_environment",
    ".config/autostart",
    ".config/environment.d",
    ".config/systemd",
];

/// Paths no task may write unless the scope grants `system` ([`SYSTEM_DIRS`] and the login
/// files of root and of every home directory under `/home`), as written (canonicalized by the
/// caller).
fn system_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    let mut homes = vec![PathBuf::from("/root")];
    if let Ok(rd) = fs::read_dir("/home") {
        homes.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for h in homes {
        v.extend(LOGIN_FILES.iter().map(|f| h.join(f)));
    }
    v
}

/// Entries of `/dev` every program may use; every other device (disks — whose blocks hold
/// every file, denied ones included —, input devices, `/dev/kmsg`, `/dev/mem`, watchdogs,
/// consoles, ...) is a node device, neither readable nor writable unless granted `devices`.
const ORDINARY_DEVICES: &[&str] = &[
    "null",
    "zero",
    "full",
    "random",
    "urandom",
    "tty",
    "pts",
    "ptmx",
    "shm",
    "mqueue",
    "fd",
    "stdin",
    "stdout",
    "stderr",
    "log",
    "core",
    "hugepages",
];

/// Node devices present now (new device nodes appear in no grant: refused too).
fn node_devices() -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir("/dev") else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| !e.file_name().to_str().is_some_and(|n| ORDINARY_DEVICES.contains(&n)))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// Warden's own evidence and keys, out of every task's reach whatever its scope grants: the
/// default key and state directory, plus what the running `warden run` or daemon registered
/// with [`protect_evidence`] (its `--key`, `--log`, node log, state directory, pins).
static EVIDENCE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Where Warden keeps node keys and state by default.
pub const NODE_STATE_DIR: &str = "/var/lib/warden";

/// Registers paths no task of this process may read or write (see [`evidence_paths`]).
/// Relative paths are taken from the current directory.
pub fn protect_evidence(paths: impl IntoIterator<Item = PathBuf>) {
    let mut g = EVIDENCE.lock().unwrap_or_else(|e| e.into_inner());
    for p in paths {
        let p = std::path::absolute(&p).unwrap_or(p);
        if !g.contains(&p) {
            g.push(p);
        }
    }
}

/// Every protected evidence path: [`NODE_STATE_DIR`] and the registered ones.
pub fn evidence_paths() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from(NODE_STATE_DIR)];
    v.extend(EVIDENCE.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned());
    v
}

/// An evidence file (`what`, e.g. `--log`) that the scope's `files.write` grants explicitly:
/// refused at start, because protecting it would carve the rest of that grant (nothing new
/// could be created next to it). With `files.write` omitted the file is protected instead.
pub fn evidence_in_write_grant(scope: &Scope, what: &str, path: &Path) -> Result<(), ScopeError> {
    let Some(write) = &scope.write else { return Ok(()) };
    let p = canonical_prefix(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    for w in write {
        let w = canonical_prefix(w);
        if p.starts_with(&w) {
            return Err(scope.error(
                &w.display().to_string(),
                "files.write",
                format!(
                    "{what} {} is inside this writable grant: the task could rewrite or erase its own \
                     evidence; put {what} outside every path in files.write",
                    p.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Always readable: the pseudo-devices every program expects, and procfs (other processes'
/// `environ`/`mem`/`maps` stay protected: the Landlock domain refuses ptrace-mode access to
/// processes outside it).
const ALWAYS_READ: &[&str] =
    &["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/proc"];
/// Always writable. `/dev/tty` is the caller's controlling terminal: a task runs in a session
/// of its own with none (opening it fails with ENXIO), but tools probe it (git, pip), and a
/// refusal there would be a false one.
const ALWAYS_WRITE: &[&str] = &["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"];

/// Canonicalizes the existing part of `p` and appends the rest (so a protected path behind a
/// symlink, e.g. /var/run → /run, is protected where it really is).
fn canonical_prefix(p: &Path) -> PathBuf {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name().map(|n| n.to_os_string()), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return p.to_path_buf(),
        }
    }
    let mut out = fs::canonicalize(&existing).unwrap_or(existing);
    for r in rest.into_iter().rev() {
        out.push(r);
    }
    out
}

/// Paths to grant so that everything under `roots` except the `denied` subtrees is covered.
///
/// A root that is denied (or inside a denied path) is dropped. A root with denied paths
/// beneath it is replaced by its children, recursively, down to the deepest existing ancestor
/// of each denied path; new entries created there later are covered by no rule (denied).
pub fn carve(roots: &[PathBuf], denied: &[PathBuf]) -> Vec<PathBuf> {
    fn rec(root: &Path, denied: &[PathBuf], out: &mut Vec<PathBuf>, depth: usize) {
        // A rule is placed on what a path resolves to: granting a symlink would grant its
        // target (possibly a denied file). Targets are judged on their own.
        if denied.iter().any(|d| root.starts_with(d)) || (depth > 0 && root.is_symlink()) {
            return;
        }
        let below: Vec<&PathBuf> =
            denied.iter().filter(|d| d.starts_with(root) && d.as_path() != root).collect();
        if below.is_empty() {
            out.push(root.to_path_buf());
            return;
        }
        if depth > 32 || !root.is_dir() || root.is_symlink() {
            return;
        }
        let Ok(rd) = fs::read_dir(root) else { return };
        let mut children: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        children.sort();
        for c in children {
            rec(&c, denied, out, depth + 1);
        }
    }
    let mut out = Vec::new();
    for r in roots {
        rec(r, denied, &mut out, 0);
    }
    out.sort();
    out.dedup();
    out
}

/// Builds egress trie entries for `slot`. Errors if a prefix collects more port rules than a
/// trie value holds.
pub fn egress_entries(rules: &[EgressRule], slot: u32) -> Result<Vec<EgressEntry>, String> {
    // (addr, prefix over 128 bits) of every rule's network, as IPv6 (IPv4 mapped).
    let norm = |r: &EgressRule| -> ([u8; 16], u32) {
        match r.net.addr() {
            IpAddr::V4(a) => (a.to_ipv6_mapped().octets(), 96 + u32::from(r.net.prefix_len())),
            IpAddr::V6(a) => (a.octets(), u32::from(r.net.prefix_len())),
        }
    };
    let contains = |outer: &([u8; 16], u32), inner: &([u8; 16], u32)| -> bool {
        if outer.1 > inner.1 {
            return false;
        }
        let o = u128::from_be_bytes(outer.0);
        let i = u128::from_be_bytes(inner.0);
        let mask = if outer.1 == 0 { 0 } else { u128::MAX << (128 - outer.1) };
        o & mask == i & mask
    };
    let port_rules = |r: &EgressRule| -> Vec<PortRule> {
        let protocol = match r.protocol {
            Protocol::Any => 0,
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        };
        if r.ports.is_empty() {
            vec![PortRule { lo: 0, hi: u16::MAX, protocol, ..Default::default() }]
        } else {
            r.ports.iter().map(|p| PortRule { lo: p.lo, hi: p.hi, protocol, ..Default::default() }).collect()
        }
    };
    let nets: Vec<([u8; 16], u32)> = rules.iter().map(norm).collect();
    let mut by_prefix: BTreeMap<([u8; 16], u32), Vec<PortRule>> = BTreeMap::new();
    for (i, net) in nets.iter().enumerate() {
        let mut acc: Vec<PortRule> = Vec::new();
        for (j, other) in nets.iter().enumerate() {
            if contains(other, net) {
                for pr in port_rules(&rules[j]) {
                    if !acc.contains(&pr) {
                        acc.push(pr);
                    }
                }
            }
        }
        let _ = i;
        if acc.len() > EGRESS_PORT_RULES {
            return Err(format!(
                "{}/{} is covered by {} port rules; at most {EGRESS_PORT_RULES} may apply to one network \
                 (merge port ranges)",
                rules[i].net.addr(),
                rules[i].net.prefix_len(),
                acc.len()
            ));
        }
        by_prefix.insert(*net, acc);
    }
    Ok(by_prefix
        .into_iter()
        .map(|((addr, plen), prs)| {
            let mut v = EgressRules { count: prs.len() as u32, ..Default::default() };
            v.rules[..prs.len()].copy_from_slice(&prs);
            let _ = slot;
            EgressEntry { prefix_len: 32 + plen, addr, rules: v }
        })
        .collect())
}

/// The directory where new names must be refused so that `p` stays denied (see
/// `file_rule::NO_NEW`): its parent, or the deepest existing ancestor when `p` does not exist.
fn no_new_dir(p: &Path) -> Option<PathBuf> {
    let mut cur = if p.exists() { p.parent()? } else { p };
    while !cur.exists() {
        cur = cur.parent()?;
    }
    fs::canonicalize(cur).ok()
}

/// Object rules for the BPF LSM engine: grants on the roots themselves (the kernel walks up
/// from each opened file), denials on denied objects and on the regular files beneath them,
/// and no new names next to what is denied (where the fallback's carve-out refuses them too).
///
/// Warden's own evidence directories and the node's service sockets (`whole`: the state
/// directory, the pins, `/run/containerd`, ...) are denied as directories only: the walk up
/// from any file beneath reaches them (they are shallow), and nothing links those files
/// elsewhere (a new link of one is refused: its source walks up to the denial). Enumerating
/// the daemon's directories made every task's table hold every running task's pins and state
/// file, so the shared map filled at about 100 tasks; a container runtime's directory holds
/// its containers' mounted root filesystems.
fn lsm_file_rules(
    scope: &Scope,
    deny_all: &[PathBuf],
    secret_paths: &[PathBuf],
    exec_paths: &[PathBuf],
    control: &[PathBuf],
    system: &[PathBuf],
    whole: &[PathBuf],
) -> FileRules {
    // Objects are resolved as `FileId::of` does; only (dev, inode) is kept.
    let mut by_id: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    let mut add = |p: &Path, bits: u32| {
        if let Ok(md) = fs::canonicalize(p).and_then(fs::metadata) {
            *by_id.entry((md.dev(), md.ino())).or_insert(0) |= bits;
        }
    };
    for p in scope.read.iter().flatten().chain(exec_paths) {
        add(p, file_rule::READ);
    }
    for p in ALWAYS_READ {
        add(Path::new(p), file_rule::READ);
    }
    for p in scope.write.iter().flatten() {
        add(p, file_rule::WRITE);
    }
    for p in ALWAYS_WRITE {
        add(Path::new(p), file_rule::WRITE);
    }
    for p in control_paths() {
        add(&p, file_rule::DENY_WRITE);
    }
    for p in system {
        add(p, file_rule::DENY_SYSTEM);
    }
    for d in deny_all {
        if secret_paths.iter().any(|s| s == d) {
            continue;
        }
        add(d, file_rule::DENY);
        if whole.contains(d) {
            continue;
        }
        let mut n = 0;
        let mut stack = vec![d.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                let p = e.path();
                if secret_paths.contains(&p) {
                    continue;
                }
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() && n < DENY_ENUM_LIMIT {
                    add(&p, file_rule::DENY);
                    n += 1;
                }
            }
        }
    }
    for s in secret_paths {
        add(s, file_rule::SECRET);
    }
    for p in deny_all.iter().chain(secret_paths).chain(control).chain(system) {
        if let Some(dir) = no_new_dir(p) {
            add(&dir, file_rule::NO_NEW);
        }
    }
    FileRules::share(by_id.into_iter().map(|((dev, ino), bits)| FileRule { dev, ino, bits }).collect())
}

/// What the kernel's egress programs decide for these trie entries: the longest matching
/// prefix, then its port rules (used to re-judge recordings against a scope).
pub fn egress_allows(entries: &[EgressEntry], addr: IpAddr, port: u16, protocol: u8) -> bool {
    let a = match addr {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let key = u128::from_be_bytes(a);
    let best = entries
        .iter()
        .filter(|e| {
            let plen = e.prefix_len - 32;
            let mask = if plen == 0 { 0 } else { u128::MAX << (128 - plen) };
            u128::from_be_bytes(e.addr) & mask == key & mask
        })
        .max_by_key(|e| e.prefix_len);
    best.is_some_and(|e| {
        e.rules.rules[..e.rules.count as usize]
            .iter()
            .any(|r| (r.protocol == 0 || r.protocol == protocol) && r.lo <= port && port <= r.hi)
    })
}

/// `PT_INTERP` of a 64-bit little-endian ELF file, if it has one.
pub fn elf_interpreter(path: &Path) -> Option<PathBuf> {
    let mut f = fs::File::open(path).ok()?;
    let mut buf = Vec::new();
    f.by_ref().take(1 << 20).read_to_end(&mut buf).ok()?;
    if buf.len() < 64 || &buf[..4] != b"\x7fELF" || buf[4] != 2 || buf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| buf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| buf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let phoff = u64_at(0x20)?;
    let phentsize = u16_at(0x36)?;
    let phnum = u16_at(0x38)?;
    for i in 0..phnum.min(256) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = buf.get(ph..ph + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))?;
        if p_type == 3 {
            let off = u64_at(ph + 8)?;
            let size = u64_at(ph + 32)?;
            let raw = buf.get(off..off.checked_add(size)?)?;
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            return Some(PathBuf::from(String::from_utf8_lossy(&raw[..end]).into_owned()));
        }
    }
    None
}

/// The interpreter named on a `#!` line, if `path` is a script.
pub fn shebang(path: &Path) -> Option<PathBuf> {
    let mut f = fs::File::open(path).ok()?;
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf).ok()?;
    let head = &buf[..n];
    if !head.starts_with(b"#!") {
        return None;
    }
    let line = head[2..].split(|&b| b == b'\n').next()?;
    let text = String::from_utf8_lossy(line);
    text.split_whitespace().next().map(PathBuf::from)
}

/// Syscalls every sandbox is refused, unless granted: (name, number). Node-level calls (the
/// machine, its mounts, modules, clocks, swap, accounting, port I/O, the kernel log) are never
/// granted; capabilities are not the only guard (a scope may grant them, a kernel may have a
/// bug), and the refusal is the same on both engines.
pub fn seccomp_list(grants: &BTreeSet<Grant>) -> Vec<(&'static str, i64)> {
    // Newer than the libc crate's tables (x86-64 numbers).
    const SYS_OPEN_TREE_ATTR: i64 = 467;
    const SYS_NFSSERVCTL: i64 = 180;
    let mut v: Vec<(&'static str, i64)> = vec![
        ("bpf", libc::SYS_bpf),
        // Mounts, old and new API.
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("open_tree_attr", SYS_OPEN_TREE_ATTR),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("pivot_root", libc::SYS_pivot_root),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("quotactl", libc::SYS_quotactl),
        ("quotactl_fd", libc::SYS_quotactl_fd),
        // Kernel code and the machine itself.
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("reboot", libc::SYS_reboot),
        ("acct", libc::SYS_acct),
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
        ("syslog", libc::SYS_syslog),
        ("uselib", libc::SYS_uselib),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("nfsservctl", SYS_NFSSERVCTL),
        // Clocks.
        ("settimeofday", libc::SYS_settimeofday),
        ("clock_settime", libc::SYS_clock_settime),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("adjtimex", libc::SYS_adjtimex),
        // Host identity, the terminal, whole-filesystem watches and handles.
        ("sethostname", libc::SYS_sethostname),
        ("setdomainname", libc::SYS_setdomainname),
        ("vhangup", libc::SYS_vhangup),
        ("fanotify_init", libc::SYS_fanotify_init),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ];
    if !grants.contains(&Grant::Ptrace) {
        v.extend([
            ("ptrace", libc::SYS_ptrace),
            ("process_vm_readv", libc::SYS_process_vm_readv),
            ("process_vm_writev", libc::SYS_process_vm_writev),
            ("pidfd_getfd", libc::SYS_pidfd_getfd),
            ("kcmp", libc::SYS_kcmp),
        ]);
    }
    if !grants.contains(&Grant::IoUring) {
        v.extend([
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("io_uring_enter", libc::SYS_io_uring_enter),
            ("io_uring_register", libc::SYS_io_uring_register),
        ]);
    }
    if !grants.contains(&Grant::PerfEvents) {
        v.push(("perf_event_open", libc::SYS_perf_event_open));
    }
    if !grants.contains(&Grant::Keyring) {
        v.extend([
            ("add_key", libc::SYS_add_key),
            ("request_key", libc::SYS_request_key),
            ("keyctl", libc::SYS_keyctl),
        ]);
    }
    v
}

/// The socket families and types the scope grants beyond Unix, TCP, UDP and `NETLINK_ROUTE`.
pub fn socket_policy(grants: &BTreeSet<Grant>) -> SocketPolicy {
    SocketPolicy {
        raw: grants.contains(&Grant::NetRaw),
        packet: grants.contains(&Grant::NetPacket),
        netlink: grants.contains(&Grant::NetNetlink),
        other: grants.contains(&Grant::NetOther),
    }
}

impl CompiledScope {
    /// Controls of this scope that the engine cannot enforce (`task_start.unenforced`): the
    /// fallback engine cannot tell a secret's tools from the task's other processes.
    pub fn unenforced(&self, lsm_engine: bool) -> Vec<String> {
        let mut v = Vec::new();
        if self.scope.mode == Mode::Enforce && !lsm_engine && !self.secrets.is_empty() {
            v.push("secrets-by-tool".to_string());
        }
        v
    }

    /// Resolves identities and builds every table. Filesystem errors (a missing executable,
    /// a script whose interpreter is not allowed) are scope errors at their line.
    pub fn compile(scope: &Scope) -> Result<Self, ScopeError> {
        Self::compile_with(scope, None, Build::ALL)
    }

    /// [`CompiledScope::compile`] for a scope whose paths were placed in a container's root
    /// ([`crate::k8s::root::Root::place`]): the interpreters that executables and scripts
    /// name are the container's too.
    pub fn compile_in(scope: &Scope, root: Option<&crate::k8s::root::Root>) -> Result<Self, ScopeError> {
        Self::compile_with(scope, root, Build::ALL)
    }

    /// [`CompiledScope::compile_in`], building only the tables `build` names (the others are
    /// left empty); everything else, the checks included, is the same.
    pub fn compile_with(
        scope: &Scope,
        root: Option<&crate::k8s::root::Root>,
        build: Build,
    ) -> Result<Self, ScopeError> {
        let place = |p: PathBuf| match root {
            Some(r) => r.resolve(&p).unwrap_or(p),
            None => fs::canonicalize(&p).unwrap_or(p),
        };
        // exec: identities, plus the paths Landlock must let exec (ELF interpreters included).
        let mut exec_paths: Vec<PathBuf> = Vec::new();
        let mut exec_dirs: Vec<FileId> = Vec::new();
        let exec = match &scope.exec_allow {
            None => None,
            Some(all) => {
                let mut ids = Vec::new();
                let mut paths = Vec::new();
                for p in all {
                    let id = FileId::of(p).map_err(|e| {
                        scope.error(&p.display().to_string(), "exec.allow", format!("{}: {e}", p.display()))
                    })?;
                    if id.path.is_dir() {
                        if id.path == Path::new("/") {
                            return Err(scope.error(
                                &p.display().to_string(),
                                "exec.allow",
                                "/ as a directory entry allows every program; omit exec.allow instead".into(),
                            ));
                        }
                        exec_dirs.push(id);
                    } else {
                        paths.push(p);
                    }
                }
                for p in paths.iter().copied() {
                    let id = FileId::of(p).map_err(|e| {
                        scope.error(&p.display().to_string(), "exec.allow", format!("{}: {e}", p.display()))
                    })?;
                    let md = fs::metadata(&id.path).map_err(|e| {
                        scope.error(&p.display().to_string(), "exec.allow", format!("{}: {e}", p.display()))
                    })?;
                    if !md.is_file() || md.permissions().mode() & 0o111 == 0 {
                        return Err(scope.error(
                            &p.display().to_string(),
                            "exec.allow",
                            format!("{} is not an executable file", p.display()),
                        ));
                    }
                    exec_paths.push(id.path.clone());
                    if let Some(interp) = elf_interpreter(&id.path) {
                        exec_paths.push(place(interp));
                    }
                    ids.push(id);
                }
                // A script runs only if its interpreter may run too.
                for (p, id) in paths.iter().zip(&ids) {
                    if let Some(interp) = shebang(&id.path) {
                        let allowed = FileId::of(&place(interp.clone()))
                            .map(|i| ids.iter().any(|a| a.dev == i.dev && a.ino == i.ino))
                            .unwrap_or(false);
                        if !allowed {
                            return Err(scope.error(
                                &p.display().to_string(),
                                "exec.allow",
                                format!(
                                    "{} is a script for {}, which is not allowed; add {} to exec.allow",
                                    p.display(),
                                    interp.display(),
                                    interp.display()
                                ),
                            ));
                        }
                    }
                }
                Some(ids)
            }
        };
        let mut secrets = Vec::new();
        for (i, s) in scope.secrets.iter().enumerate() {
            let field = format!("secrets[{i}].path");
            // Brokered secrets are no file: the broker, not a file rule, hands them out.
            if s.issue.as_ref().is_some_and(|i| i.brokered()) {
                continue;
            }
            if let Some(issue) = &s.issue
                && s.path.as_os_str().is_empty()
            {
                return Err(scope.error(
                    &issue.name,
                    &format!("secrets[{i}].name"),
                    "issued secrets are materialised when a task starts (warden run, warden task start); \
                     they cannot be compiled on their own"
                        .into(),
                ));
            }
            let file = FileId::of(&s.path).map_err(|e| {
                scope.error(&s.path.display().to_string(), &field, format!("{}: {e}", s.path.display()))
            })?;
            let mut tools = Vec::new();
            for t in &s.tools {
                tools.push(FileId::of(t).map_err(|e| {
                    scope.error(
                        &t.display().to_string(),
                        &format!("secrets[{i}].tools"),
                        format!("{}: {e}", t.display()),
                    )
                })?);
            }
            secrets.push(CompiledSecret { file, tools });
        }
        let egress = match &scope.egress {
            None => None,
            Some(rules) => {
                Some(egress_entries(rules, 0).map_err(|e| scope.error("egress", "network.egress", e))?)
            }
        };

        // Landlock.
        let canon = |v: &[PathBuf]| v.iter().map(|p| canonical_prefix(p)).collect::<Vec<_>>();
        let mut deny_all = canon(&scope.deny);
        if !scope.grants.contains(&Grant::Credentials) {
            deny_all.extend(canon(&credential_paths()));
        }
        if !scope.grants.contains(&Grant::Devices) {
            deny_all.extend(node_devices());
        }
        // The node's service sockets, denied as directories (see `lsm_file_rules`).
        let services = if scope.grants.contains(&Grant::NodeServices) || root.is_some() {
            Vec::new()
        } else {
            canon(&service_sockets())
        };
        deny_all.extend(services.iter().cloned());
        // Warden's evidence and keys: no grant lifts this.
        deny_all.extend(canon(&evidence_paths()));
        // Secrets are carved out of their parents like denied paths, then granted file by file.
        let secret_paths: Vec<PathBuf> = secrets.iter().map(|s| s.file.path.clone()).collect();
        let mut deny_read = deny_all.clone();
        deny_read.extend(secret_paths.iter().cloned());
        let mut deny_write = deny_read.clone();
        deny_write.extend(canon(&control_paths()));
        // The node's own files, on the node (a container's root is its image's, not the node's).
        let system = if scope.grants.contains(&Grant::System) || root.is_some() {
            Vec::new()
        } else {
            let system = canon(&system_paths());
            if let Some(w) = scope.write.iter().flatten().find(|w| {
                let w = canonical_prefix(w);
                system.iter().any(|s| w.starts_with(s))
            }) {
                return Err(scope.error(
                    &w.display().to_string(),
                    "files.write",
                    format!(
                        "{} is part of the node's programs, configuration or state (protected.system), which \
                         a task writes only with `grant: [system]`; grant it, or write somewhere else",
                        w.display()
                    ),
                ));
            }
            system
        };
        deny_write.extend(system.iter().cloned());
        let root = vec![PathBuf::from("/")];
        let read_roots = scope.read.as_ref().map(|v| canon(v)).unwrap_or_else(|| root.clone());
        let write_roots = scope.write.as_ref().map(|v| canon(v)).unwrap_or_else(|| root.clone());
        let write_roots_now: Vec<PathBuf> = match &scope.write {
            Some(v) => canon(v).into_iter().filter(|p| p.exists()).collect(),
            None => Vec::new(),
        };
        let landlock = if build.landlock {
            let mut read = carve(&read_roots, &deny_read);
            read.extend(ALWAYS_READ.iter().map(PathBuf::from));
            read.extend(secret_paths.iter().cloned());
            // Executables and their loaders must be readable to be mapped.
            read.extend(exec_paths.iter().cloned());
            // Programs in an exec.allow directory must be readable to run (their loader maps
            // them).
            read.extend(exec_dirs.iter().map(|d| d.path.clone()));
            let mut list: Vec<PathBuf> = read_roots.iter().filter(|p| p.is_dir()).cloned().collect();
            list.sort();
            list.dedup();
            let mut write = carve(&write_roots, &deny_write);
            write.extend(ALWAYS_WRITE.iter().map(PathBuf::from));
            // Connecting to a unix socket is writing to it: the task's own broker is reachable
            // although it lies below the secrets directory (often below protected /run/warden).
            write.extend(scope.broker.iter().cloned());
            write.extend(call_socket().cloned());
            for v in [&mut read, &mut write] {
                v.retain(|p| p.exists());
                v.sort();
                v.dedup();
            }
            LandlockPlan { read, write, list }
        } else {
            LandlockPlan::default()
        };

        let readable_exec: Vec<PathBuf> =
            exec_paths.iter().cloned().chain(exec_dirs.iter().map(|d| d.path.clone())).collect();
        let file_rules = if build.file_rules {
            lsm_file_rules(
                scope,
                &deny_all,
                &secret_paths,
                &readable_exec,
                &canon(&control_paths()),
                &system,
                &[canon(&evidence_paths()), services].concat(),
            )
        } else {
            FileRules::default()
        };
        let unix_rules = if build.unix_rules {
            // Node devices are no sockets (and are many): left out of the unix rules.
            let devices = node_devices();
            let unix_deny: Vec<PathBuf> =
                deny_all.iter().chain(&secret_paths).filter(|p| !devices.contains(p)).cloned().collect();
            let unix_read: Option<Vec<PathBuf>> = scope.read.as_ref().map(|r| {
                canon(r)
                    .into_iter()
                    .chain(readable_exec.iter().cloned())
                    .chain(ALWAYS_READ.iter().map(PathBuf::from))
                    .collect()
            });
            let unix_allow: Vec<PathBuf> = scope.broker.iter().chain(call_socket()).cloned().collect();
            unix_rules(&unix_deny, unix_read.as_deref(), &unix_allow)
        } else {
            Vec::new()
        };
        let protected = std::sync::Arc::new(Protected {
            deny: deny_all,
            secrets: secret_paths,
            control: canon(&control_paths()),
            system,
            read_roots: scope.read.as_ref().map(|v| canon(v)),
            write_roots: scope.write.as_ref().map(|v| canon(v)),
        });
        let mut flags = 0;
        if scope.read.is_some() {
            flags |= sandbox_flags::READ_RESTRICTED;
        }
        if scope.write.is_some() {
            flags |= sandbox_flags::WRITE_RESTRICTED;
        }
        if exec.is_some() {
            flags |= sandbox_flags::EXEC_RESTRICTED;
        }
        if !exec_dirs.is_empty() {
            flags |= sandbox_flags::EXEC_DIRS;
        }
        if egress.is_some() {
            flags |= sandbox_flags::NET_RESTRICTED;
        }
        if scope.dns.is_some() {
            flags |= sandbox_flags::DNS_REDIRECT;
        }
        if scope.mode == Mode::Audit {
            flags |= sandbox_flags::AUDIT;
        }
        Ok(CompiledScope {
            scope: scope.clone(),
            exec,
            exec_dirs,
            secrets,
            egress,
            landlock,
            file_rules,
            unix_rules,
            seccomp_deny: seccomp_list(&scope.grants),
            sockets: socket_policy(&scope.grants),
            call: false,
            flags,
            exec_paths: {
                exec_paths.sort();
                exec_paths.dedup();
                exec_paths
            },
            write_roots: write_roots_now,
            protected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::raw::PortRange;
    use ipnet::IpNet;
    use proptest::prelude::*;
    use std::os::unix::fs::symlink;

    fn rule(net: &str, ports: &[(u16, u16)], protocol: Protocol) -> EgressRule {
        EgressRule {
            net: net.parse::<IpNet>().unwrap(),
            ports: ports.iter().map(|&(lo, hi)| PortRange { lo, hi }).collect(),
            protocol,
        }
    }

    /// Reference semantics: allowed if any rule's network contains the address and a port
    /// rule matches.
    fn reference(rules: &[EgressRule], addr: IpAddr, port: u16, proto: u8) -> bool {
        let addr = match addr {
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
            v4 => v4,
        };
        rules.iter().any(|r| {
            let contains = match (r.net, addr) {
                (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
                (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
                (IpNet::V6(n), IpAddr::V4(a)) => n.contains(&a.to_ipv6_mapped()),
                _ => false,
            };
            let pmatch = match r.protocol {
                Protocol::Any => true,
                Protocol::Tcp => proto == 6,
                Protocol::Udp => proto == 17,
            };
            contains && pmatch && (r.ports.is_empty() || r.ports.iter().any(|p| p.lo <= port && port <= p.hi))
        })
    }

    fn kernel(entries: &[EgressEntry], addr: IpAddr, port: u16, proto: u8) -> bool {
        egress_allows(entries, addr, port, proto)
    }

    #[test]
    fn folds_shorter_prefixes_into_longer_ones() {
        let rules = vec![
            rule("10.0.0.0/8", &[(443, 443)], Protocol::Tcp),
            rule("10.1.0.0/16", &[(53, 53)], Protocol::Udp),
        ];
        let e = egress_entries(&rules, 0).unwrap();
        assert_eq!(e.len(), 2);
        let inner = e.iter().find(|x| x.prefix_len == 32 + 96 + 16).unwrap();
        assert_eq!(inner.rules.count, 2, "10.1/16 carries its own rule and 10/8's");
        assert!(kernel(&e, "10.1.2.3".parse().unwrap(), 443, 6));
        assert!(kernel(&e, "10.1.2.3".parse().unwrap(), 53, 17));
        assert!(!kernel(&e, "10.2.0.1".parse().unwrap(), 53, 17));
        assert!(!kernel(&e, "11.0.0.1".parse().unwrap(), 443, 6));
        // IPv4-mapped IPv6 is judged as IPv4.
        assert!(kernel(&e, "::ffff:10.1.2.3".parse().unwrap(), 443, 6));
    }

    proptest! {
        #[test]
        fn kernel_matching_equals_reference_semantics(
            nets in proptest::collection::vec((0u8..4, 0u8..=32, any::<bool>(), 1u16..100, 0u16..20, 0u8..3), 1..6),
            probes in proptest::collection::vec((0u8..4, any::<u8>(), 1u16..130, any::<bool>(), any::<bool>()), 1..30),
        ) {
            let rules: Vec<EgressRule> = nets.iter().map(|&(a, plen, all_ports, lo, span, proto)| {
                let net: IpNet = format!("10.{a}.0.0/{plen}").parse::<IpNet>().unwrap().trunc();
                let ports = if all_ports { vec![] } else { vec![PortRange { lo, hi: lo + span }] };
                let protocol = [Protocol::Any, Protocol::Tcp, Protocol::Udp][proto as usize];
                EgressRule { net, ports, protocol }
            }).collect();
            let entries = egress_entries(&rules, 0).unwrap();
            for &(a, b, port, tcp, mapped) in &probes {
                let v4: std::net::Ipv4Addr = format!("10.{a}.{b}.1").parse().unwrap();
                let addr = if mapped { IpAddr::V6(v4.to_ipv6_mapped()) } else { IpAddr::V4(v4) };
                let proto = if tcp { 6 } else { 17 };
                prop_assert_eq!(kernel(&entries, addr, port, proto), reference(&rules, addr, port, proto));
            }
        }
    }

    #[test]
    fn carve_grants_siblings_of_denied_paths() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for p in ["a/secret", "a/ok", "b"] {
            fs::create_dir_all(r.join(p)).unwrap();
        }
        fs::write(r.join("a/file"), "x").unwrap();
        symlink(r.join("a/secret"), r.join("a/link")).unwrap();
        let got = carve(&[r.to_path_buf()], &[r.join("a/secret")]);
        assert_eq!(got, vec![r.join("a/file"), r.join("a/ok"), r.join("b")]);
        // A root inside a denied path is dropped; no denial under a root keeps it whole.
        assert!(carve(&[r.join("a/secret")], &[r.join("a")]).is_empty());
        assert_eq!(carve(&[r.join("b")], &[r.join("a")]), vec![r.join("b")]);
        // A denied path that does not exist yet: its existing parent is expanded, so it stays
        // denied when created later.
        assert_eq!(carve(&[r.join("b")], &[r.join("b/later")]), Vec::<PathBuf>::new());
    }

    #[test]
    fn finds_elf_interpreters_and_shebangs() {
        let sh = fs::canonicalize("/bin/sh").unwrap();
        let interp = elf_interpreter(&sh).expect("/bin/sh is a dynamic ELF");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("s");
        fs::write(&s, "#!/bin/sh -e\necho\n").unwrap();
        assert_eq!(shebang(&s), Some(PathBuf::from("/bin/sh")));
        assert_eq!(shebang(&sh), None);
        fs::write(d.path().join("junk"), b"\x7fELF\x02\x01garbage").unwrap();
        assert_eq!(elf_interpreter(&d.path().join("junk")), None);
    }

    fn compile_text(t: &str) -> Result<CompiledScope, ScopeError> {
        CompiledScope::compile(&Scope::parse(t, Path::new("s.yaml")).unwrap())
    }

    #[test]
    fn compiles_exec_identities_and_refuses_bad_entries() {
        let c = compile_text("version: 1\ntask: t\nexec:\n  allow: [/bin/sh]\n").unwrap();
        let id = FileId::of(Path::new("/bin/sh")).unwrap();
        assert_eq!(c.exec.as_ref().unwrap(), &vec![id]);
        assert!(c.flags & sandbox_flags::EXEC_RESTRICTED != 0);
        assert!(
            c.landlock.read.iter().any(|p| p.to_string_lossy().contains("ld-linux")),
            "loader may be mapped"
        );
        let e =
            compile_text("version: 1\ntask: t\nexec:\n  allow: [/bin/sh, /nonexistent/tool]\n").unwrap_err();
        assert!(e.to_string().starts_with("s.yaml:4: exec.allow: /nonexistent/tool"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("run.py");
        fs::write(&script, "#!/usr/bin/env python3\n").unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        let e =
            compile_text(&format!("version: 1\ntask: t\nexec:\n  allow: [/bin/sh, {}]\n", script.display()))
                .unwrap_err();
        assert!(e.to_string().contains("is a script for /usr/bin/env"), "{e}");
    }

    #[test]
    fn lsm_file_rules_bind_objects() {
        let d = tempfile::tempdir().unwrap();
        let r = fs::canonicalize(d.path()).unwrap();
        fs::create_dir_all(r.join("deny/sub")).unwrap();
        fs::write(r.join("deny/sub/f"), "x").unwrap();
        fs::write(r.join("deny/token"), "t").unwrap();
        let text = format!(
            "version: 1\ntask: t\nexec:\n  allow: [/usr/bin/cat]\nfiles:\n  read: [{r}]\n  deny: [{r}/deny]\nsecrets:\n  - path: {r}/deny/token\n    tools: [/usr/bin/cat]\n",
            r = r.display()
        );
        let c = compile_text(&text).unwrap();
        let bits = |p: &Path| {
            let id = FileId::of(p).unwrap();
            c.file_rules.get(id.dev, id.ino)
        };
        assert_eq!(bits(&r).map(|b| b & !file_rule::NO_NEW), Some(file_rule::READ));
        assert_eq!(bits(&r.join("deny")).map(|b| b & !file_rule::NO_NEW), Some(file_rule::DENY));
        assert_eq!(
            bits(&r.join("deny/sub/f")),
            Some(file_rule::DENY),
            "files beneath are denied by identity"
        );
        assert_eq!(
            bits(&r.join("deny/token")),
            Some(file_rule::SECRET),
            "a secret is not denied, it is guarded"
        );
        assert_eq!(bits(Path::new("/dev/null")).map(|b| b & file_rule::WRITE), Some(file_rule::WRITE));
        let cg = crate::sandbox::cgroup2_mount().unwrap();
        assert_eq!(bits(&cg).map(|b| b & file_rule::DENY_WRITE), Some(file_rule::DENY_WRITE));
        // Nothing new next to a denied path: its parent, or the deepest existing ancestor of
        // one that does not exist yet (the fallback's carve-out refuses those names too).
        assert_eq!(bits(&r).map(|b| b & file_rule::NO_NEW), Some(file_rule::NO_NEW));
        assert_eq!(bits(&r.join("deny")).map(|b| b & file_rule::NO_NEW), Some(file_rule::NO_NEW));
        assert_eq!(no_new_dir(&r.join("deny/not/yet")), Some(r.join("deny")));
        assert!(
            c.flags & sandbox_flags::READ_RESTRICTED != 0 && c.flags & sandbox_flags::WRITE_RESTRICTED == 0
        );
    }

    /// `lsm_file_rules` as it was before the tables were stored small and shared (paths
    /// kept, one table per task): the reference the kernel map's contents are compared with.
    fn reference_file_rules(
        scope: &Scope,
        deny_all: &[PathBuf],
        secret_paths: &[PathBuf],
        exec_paths: &[PathBuf],
        control: &[PathBuf],
        evidence: &[PathBuf],
    ) -> Vec<(u64, u64, u32)> {
        let mut by_id: BTreeMap<(u64, u64), (FileId, u32)> = BTreeMap::new();
        let mut add = |p: &Path, bits: u32| {
            if let Ok(id) = FileId::of(p) {
                by_id.entry((id.dev, id.ino)).or_insert((id, 0)).1 |= bits;
            }
        };
        for p in scope.read.iter().flatten().chain(exec_paths) {
            add(p, file_rule::READ);
        }
        for p in ALWAYS_READ {
            add(Path::new(p), file_rule::READ);
        }
        for p in scope.write.iter().flatten() {
            add(p, file_rule::WRITE);
        }
        for p in ALWAYS_WRITE {
            add(Path::new(p), file_rule::WRITE);
        }
        for p in control_paths() {
            add(&p, file_rule::DENY_WRITE);
        }
        for d in deny_all {
            if secret_paths.iter().any(|s| s == d) {
                continue;
            }
            add(d, file_rule::DENY);
            if evidence.contains(d) {
                continue;
            }
            let mut n = 0;
            let mut stack = vec![d.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(rd) = fs::read_dir(&dir) else { continue };
                for e in rd.flatten() {
                    let Ok(ft) = e.file_type() else { continue };
                    let p = e.path();
                    if secret_paths.contains(&p) {
                        continue;
                    }
                    if ft.is_dir() {
                        stack.push(p);
                    } else if ft.is_file() && n < DENY_ENUM_LIMIT {
                        add(&p, file_rule::DENY);
                        n += 1;
                    }
                }
            }
        }
        for s in secret_paths {
            add(s, file_rule::SECRET);
        }
        for p in deny_all.iter().chain(secret_paths).chain(control) {
            if let Some(dir) = no_new_dir(p) {
                add(&dir, file_rule::NO_NEW);
            }
        }
        by_id.into_iter().map(|((dev, ino), (_, bits))| (dev, ino, bits)).collect()
    }

    /// The kernel map gets exactly what it got before the tables were stored small and shared,
    /// for a node-like scope (the protected defaults, a daemon's evidence directory that grows
    /// as tasks start, a denied tree with a secret inside, symlinked and missing paths), task
    /// after task, also for tables shared before the node changed.
    #[test]
    fn file_rules_are_the_tables_of_before() {
        let d = tempfile::tempdir().unwrap();
        let r = fs::canonicalize(d.path()).unwrap();
        for p in ["deny/sub/deeper", "state/tasks", "pins/v1/maps", "work", "vault"] {
            fs::create_dir_all(r.join(p)).unwrap();
        }
        for p in ["deny/a", "deny/sub/b", "deny/sub/deeper/c", "state/daemon.json", "pins/v1/maps/EVENTS"] {
            fs::write(r.join(p), p).unwrap();
        }
        fs::write(r.join("deny/token"), "t").unwrap();
        fs::write(r.join("vault/key"), "k").unwrap();
        std::fs::hard_link(r.join("deny/a"), r.join("work/a-link")).unwrap();
        symlink(r.join("deny/sub"), r.join("work/sub-link")).unwrap();
        let text = format!(
            "version: 1\ntask: t\nexec:\n  allow: [/usr/bin/cat, /bin/sh]\nfiles:\n  read: [{r}, /usr, /etc]\n  \
             write: [{r}/work, /tmp]\n  deny: [{r}/deny, {r}/work/sub-link, {r}/missing/later, {r}/vault]\n\
             secrets:\n  - path: {r}/deny/token\n    tools: [/usr/bin/cat]\n  - path: {r}/vault/key\n    tools: [/usr/bin/cat]\n",
            r = r.display()
        );
        let scope = Scope::parse(&text, Path::new("s.yaml")).unwrap();
        let evidence = [r.join("state"), r.join("pins"), r.join("node.key")];
        let args = || {
            let canon = |v: &[PathBuf]| v.iter().map(|p| canonical_prefix(p)).collect::<Vec<_>>();
            let mut deny_all = canon(&scope.deny);
            deny_all.extend(canon(&credential_paths()));
            deny_all.extend(node_devices());
            // Not `evidence_paths()`: other tests register temporary directories there, which
            // may vanish between the two tables.
            deny_all.extend(canon(&[PathBuf::from(NODE_STATE_DIR)]));
            deny_all.extend(canon(&evidence));
            let secrets = vec![r.join("deny/token"), r.join("vault/key")];
            let exec = vec![fs::canonicalize("/usr/bin/cat").unwrap(), fs::canonicalize("/bin/sh").unwrap()];
            (deny_all, secrets, exec, canon(&control_paths()))
        };
        let canon_evidence = || {
            let mut v = vec![canonical_prefix(Path::new(NODE_STATE_DIR))];
            v.extend(evidence.iter().map(|p| canonical_prefix(p)));
            v
        };
        let mut kept = Vec::new();
        for task in 0..40 {
            // What each task start adds below the daemon's protected directories.
            fs::write(r.join(format!("state/tasks/t{task}.json")), "{}").unwrap();
            fs::create_dir_all(r.join(format!("pins/v1/tasks/t{task}"))).unwrap();
            for l in ["connect4", "connect6", "sendmsg4"] {
                fs::write(r.join(format!("pins/v1/tasks/t{task}/{l}")), l).unwrap();
            }
            if task % 10 == 9 {
                fs::remove_file(r.join(format!("state/tasks/t{}.json", task - 5))).unwrap();
            }
            let (deny_all, secrets, exec, control) = args();
            let opaque = canon_evidence();
            let want = reference_file_rules(&scope, &deny_all, &secrets, &exec, &control, &opaque);
            let got = lsm_file_rules(&scope, &deny_all, &secrets, &exec, &control, &[], &opaque);
            let got_v: Vec<(u64, u64, u32)> = got.iter().map(|f| (f.dev, f.ino, f.bits)).collect();
            assert_eq!(got_v, want, "task {task}");
            assert!(want.len() > 40, "a realistic table: {}", want.len());
            kept.push((got, want));
        }
        for (i, (got, want)) in kept.iter().enumerate() {
            let got_v: Vec<(u64, u64, u32)> = got.iter().map(|f| (f.dev, f.ino, f.bits)).collect();
            assert_eq!(&got_v, want, "task {i}, after later tasks");
        }
        // Most of the 40 tables are kept as differences, not copies.
        let own: usize = kept.iter().map(|(g, _)| g.own_bytes()).sum();
        let whole: usize = kept.iter().map(|(_, w)| w.len() * std::mem::size_of::<FileRule>()).sum();
        assert!(own * 4 < whole, "{own} bytes of their own of {whole}");
        // The hard link to a denied file is denied by identity.
        let link = FileId::of(&r.join("work/a-link")).unwrap();
        assert_eq!(kept[0].0.get(link.dev, link.ino).map(|b| b & file_rule::DENY), Some(file_rule::DENY));
        // Warden's evidence directories are denied as directories: a task's table does not
        // grow with the tasks started before it (the shared map filled at ~100 tasks).
        assert_eq!(kept[0].0.len(), kept[39].0.len(), "tables grew with the running tasks");
        let pins = FileId::of(&r.join("pins")).unwrap();
        assert_eq!(kept[39].0.get(pins.dev, pins.ino).map(|b| b & file_rule::DENY), Some(file_rule::DENY));
        let pin = FileId::of(&r.join("pins/v1/tasks/t3/connect4")).unwrap();
        assert_eq!(kept[39].0.get(pin.dev, pin.ino), None);
    }

    /// What the kernel's unix programs find for a (judgeable) name: the longest entry that
    /// prefixes the NUL-terminated name.
    fn unix_lookup(rules: &[UnixRule], name: &str) -> u32 {
        let mut key = name.as_bytes().to_vec();
        key.push(0);
        rules.iter().filter(|r| key.starts_with(&r.name)).max_by_key(|r| r.name.len()).map_or(0, |r| r.bits)
    }

    #[test]
    fn unix_rules_judge_names_like_the_file_rules() {
        let d = tempfile::tempdir().unwrap();
        let r = fs::canonicalize(d.path()).unwrap();
        let (deny, read) = (vec![r.join("a/deny")], vec![r.join("a")]);
        let broker = r.join("a/deny/broker.sock");
        let rules = unix_rules(&deny, Some(&read), std::slice::from_ref(&broker));
        let at = |p: &str| unix_lookup(&rules, &format!("{}/{p}", r.display()));
        assert_eq!(at("a/s.sock"), file_rule::READ);
        assert_eq!(at("a"), file_rule::READ, "the name itself");
        assert_ne!(at("a/deny/s.sock") & file_rule::DENY, 0, "beneath a denied path");
        assert_ne!(at("a/deny") & file_rule::DENY, 0, "the denied name itself");
        assert_eq!(at("a/denyx.sock"), file_rule::READ, "components, not bytes");
        assert_eq!(at("b.sock"), 0, "outside files.read");
        assert_eq!(at("a/deny/broker.sock"), file_rule::READ, "the task's broker stays reachable");
        assert_ne!(unix_lookup(&rules, "/proc/self/root/x.sock") & file_rule::OPAQUE, 0);
        assert_ne!(unix_lookup(&rules, "/dev/fd/3/x.sock") & file_rule::OPAQUE, 0);
        // Names through the symlinks at the top of the tree get the verdict of their target.
        if fs::canonicalize("/var/run").is_ok_and(|t| t == Path::new("/run")) {
            let rules = unix_rules(&[PathBuf::from("/run/secret-svc")], None, &[]);
            assert_ne!(unix_lookup(&rules, "/var/run/secret-svc/api.sock") & file_rule::DENY, 0);
            assert_eq!(unix_lookup(&rules, "/var/run/other.sock") & file_rule::DENY, 0);
        }
    }

    #[test]
    fn evidence_is_denied_whatever_the_scope_grants() {
        let d = tempfile::tempdir().unwrap();
        let r = fs::canonicalize(d.path()).unwrap();
        fs::write(r.join("node.key"), "k").unwrap();
        fs::write(r.join("other"), "o").unwrap();
        protect_evidence([r.join("node.key"), r.join("events.jsonl")]);
        let c = compile_text(&format!(
            "version: 1\ntask: t\nfiles:\n  read: [{r}]\ngrant: [credentials, devices]\n",
            r = r.display()
        ))
        .unwrap();
        let covered = |plan: &[PathBuf], p: &Path| plan.iter().any(|g| p.starts_with(g));
        for p in [r.join("node.key"), r.join("events.jsonl")] {
            assert!(!covered(&c.landlock.read, &p), "{} readable", p.display());
            assert!(!covered(&c.landlock.write, &p), "{} writable", p.display());
        }
        assert!(covered(&c.landlock.read, &r.join("other")), "the rest of the grant stays");
        let key = FileId::of(&r.join("node.key")).unwrap();
        assert!(
            c.file_rules.get(key.dev, key.ino).is_some_and(|b| b & file_rule::DENY != 0),
            "by identity too"
        );
        // An explicit write grant around the log is an error; elsewhere it is not.
        let s = Scope::parse(
            &format!("version: 1\ntask: t\nfiles:\n  write: [{}]\n", r.display()),
            Path::new("s.yaml"),
        )
        .unwrap();
        let e = evidence_in_write_grant(&s, "--log", &r.join("events.jsonl")).unwrap_err().to_string();
        assert!(e.starts_with("s.yaml:4: files.write:") && e.contains("--log"), "{e}");
        assert!(evidence_in_write_grant(&s, "--log", Path::new("/var/log/warden/x.jsonl")).is_ok());
    }

    #[test]
    fn node_devices_and_sockets_are_protected_defaults() {
        let c = compile_text("version: 1\ntask: t\n").unwrap();
        let covered = |plan: &[PathBuf], p: &str| plan.iter().any(|g| Path::new(p).starts_with(g));
        for p in ["/sys/power/state", "/proc/sys/kernel/hostname", "/dev/kmsg"] {
            assert!(!covered(&c.landlock.write, p), "{p} writable");
        }
        assert!(!covered(&c.landlock.read, "/dev/kmsg"), "node devices are not readable");
        assert!(covered(&c.landlock.write, "/dev/null") && covered(&c.landlock.read, "/dev/urandom"));
        for n in ["reboot", "mount_setattr", "perf_event_open", "keyctl", "swapon", "settimeofday"] {
            assert!(c.seccomp_deny.iter().any(|(m, _)| *m == n), "{n} refused");
        }
        assert_eq!(c.sockets, SocketPolicy::default());
        let g =
            compile_text("version: 1\ntask: t\ngrant: [perf-events, keyring, net-raw, devices]\n").unwrap();
        assert!(!g.seccomp_deny.iter().any(|(m, _)| *m == "perf_event_open" || *m == "keyctl"));
        assert!(g.sockets.raw && !g.sockets.packet);
        assert!(covered(&g.landlock.read, "/dev/kmsg"), "granted devices");
    }

    /// The node's programs, configuration and state and its users' login files are not
    /// writable unless granted, on both engines' tables; reads stay; an explicit write grant
    /// there without `system` is a scope error naming the line and the fix.
    #[test]
    fn the_nodes_own_files_are_protected_from_writes() {
        let c = compile_text("version: 1\ntask: t\n").unwrap();
        let covered =
            |plan: &[PathBuf], p: &str| plan.iter().any(|g| canonical_prefix(Path::new(p)).starts_with(g));
        for p in [
            "/etc/passwd",
            "/etc/ld.so.preload",
            "/usr/bin/env",
            "/bin/sh",
            "/var/lib/dpkg/status",
            "/var/spool/cron/x",
            "/var/log/syslog",
            "/root/.bashrc",
            "/boot/x",
        ] {
            assert!(!covered(&c.landlock.write, p), "{p} writable");
        }
        for p in ["/etc/passwd", "/usr/bin/env", "/root/.bashrc"] {
            assert!(covered(&c.landlock.read, p), "{p} readable");
        }
        for p in ["/var/tmp/x", "/dev/null"] {
            assert!(covered(&c.landlock.write, p), "{p} stays writable");
        }
        let bits = |c: &CompiledScope, p: &str| {
            let id = FileId::of(Path::new(p)).ok()?;
            c.file_rules.get(id.dev, id.ino)
        };
        for p in ["/etc", "/usr", "/var/lib"] {
            assert_eq!(bits(&c, p).map(|b| b & file_rule::DENY_SYSTEM), Some(file_rule::DENY_SYSTEM), "{p}");
        }
        assert!(c.protected.system.iter().any(|p| p == Path::new("/etc")));
        let g = compile_text("version: 1\ntask: t\ngrant: [system]\n").unwrap();
        assert!(covered(&g.landlock.write, "/etc/passwd") && g.protected.system.is_empty());
        assert_eq!(bits(&g, "/etc").unwrap_or(0) & file_rule::DENY_SYSTEM, 0);
        let e = compile_text("version: 1\ntask: t\nfiles:\n  write: [/tmp, /etc/myagent]\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/etc/myagent") && msg.contains("grant: [system]"), "{msg}");
        compile_text("version: 1\ntask: t\ngrant: [system]\nfiles:\n  write: [/etc/myagent]\n").unwrap();
        // A root above them (`/`, `/var`) keeps them carved out.
        let root = compile_text("version: 1\ntask: t\nfiles:\n  write: [/var]\n").unwrap();
        assert!(covered(&root.landlock.write, "/var/tmp/x") && !covered(&root.landlock.write, "/var/lib/x"));
    }

    /// A compile that builds only some tables builds them exactly as the full compile does:
    /// the `task exec` client's Landlock plan is `warden scope check`'s, the daemon's map
    /// tables are what a full compile would bind. (Paths under `/proc/<pid>` come and go
    /// between two compiles: left out of the comparison.)
    #[test]
    fn partial_builds_are_the_full_compiles_tables() {
        let s =
            Scope::parse("version: 1\ntask: t\nexec:\n  allow: [/bin/sh]\n", Path::new("s.yaml")).unwrap();
        let stable = |v: &[PathBuf]| -> Vec<PathBuf> {
            v.iter()
                .filter(|p| !p.starts_with("/proc") || p.as_path() == Path::new("/proc"))
                .cloned()
                .collect()
        };
        let same_plan = |a: &LandlockPlan, b: &LandlockPlan| {
            stable(&a.read) == stable(&b.read) && stable(&a.write) == stable(&b.write) && a.list == b.list
        };
        let full = CompiledScope::compile(&s).unwrap();
        assert!(!full.landlock.read.is_empty() && !full.file_rules.is_empty() && !full.unix_rules.is_empty());
        let with =
            |lsm, bind, launch| CompiledScope::compile_with(&s, None, Build::for_engine(lsm, bind, launch));

        let client = with(false, false, true).unwrap();
        assert!(same_plan(&client.landlock, &full.landlock), "the client's Landlock plan is the full one");
        assert!(client.file_rules.is_empty() && client.unix_rules.is_empty());
        assert_eq!(client.protected, full.protected);

        let daemon = with(false, true, false).unwrap();
        assert_eq!(daemon.landlock, LandlockPlan::default(), "the daemon launches nothing");
        assert!(daemon.file_rules.is_empty(), "no BPF LSM rules on the fallback engine");
        assert_eq!(daemon.unix_rules, full.unix_rules);
        assert_eq!(
            (&daemon.exec, &daemon.seccomp_deny, daemon.flags),
            (&full.exec, &full.seccomp_deny, full.flags)
        );

        let lsm = with(true, true, false).unwrap();
        assert_eq!(lsm.file_rules, full.file_rules);
        assert!(lsm.unix_rules.is_empty() && lsm.landlock == LandlockPlan::default());
        // A launcher on the BPF LSM engine applies no Landlock domain.
        assert_eq!(with(true, false, true).unwrap().landlock, LandlockPlan::default());
    }

    #[test]
    fn protected_defaults_shape_the_landlock_plan() {
        let c = compile_text("version: 1\ntask: t\n").unwrap();
        let shadow = PathBuf::from("/etc/shadow");
        assert!(!c.landlock.read.iter().any(|p| shadow.starts_with(p)), "shadow not readable");
        assert!(c.landlock.read.contains(&PathBuf::from("/usr")), "the rest of / is");
        assert_eq!(c.landlock.list, [PathBuf::from("/")], "and `ls /` works");
        let cg = crate::sandbox::cgroup2_mount().unwrap();
        assert!(
            !c.landlock.write.iter().any(|p| cg.starts_with(p) || p.starts_with(&cg)),
            "cgroups not writable"
        );
        assert!(c.seccomp_deny.iter().any(|(n, _)| *n == "bpf"));
        assert!(c.seccomp_deny.iter().any(|(n, _)| *n == "io_uring_setup"));
        let g = compile_text("version: 1\ntask: t\ngrant: [io-uring, credentials]\n").unwrap();
        assert!(!g.seccomp_deny.iter().any(|(n, _)| *n == "io_uring_setup"));
        assert!(g.landlock.read.iter().any(|p| shadow.starts_with(p)), "credentials granted");
    }
}
