//! Map keys, values and default sizes shared by the kernel programs and the loader.

/// Name of the ring buffer all records go through.
pub const EVENTS: &str = "EVENTS";
/// Name of the cgroup id → [`Sandbox`] map.
pub const WATCHED: &str = "WATCHED";
/// Name of the per-CPU per-slot drop counters ([`DropCounters`]).
pub const DROPS: &str = "DROPS";
/// Name of the per-CPU global counters ([`stat`]).
pub const STATS: &str = "STATS";

/// Default ring buffer size (bytes). 4 MiB: 256 KiB dropped ~46% at 250k events/s.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;
/// Default number of sandbox slots (concurrent tasks per node).
pub const DEFAULT_MAX_TASKS: u32 = 1024;
/// Default number of cgroups that may map to sandboxes (sandboxes and their children).
pub const DEFAULT_MAX_CGROUPS: u32 = 8192;

/// Bits of [`Sandbox::flags`].
pub mod sandbox_flags {
    /// Only files in `EXEC_ALLOW` may be executed.
    pub const EXEC_RESTRICTED: u32 = 1 << 0;
    /// Only destinations in `EGRESS` may be connected to / sent to.
    pub const NET_RESTRICTED: u32 = 1 << 1;
    /// Audit mode: record would-be denials as "audit", refuse nothing.
    pub const AUDIT: u32 = 1 << 2;
    /// BPF LSM engine: the LSM programs judge this sandbox (files, processes, bpf, mount, ...).
    pub const LSM: u32 = 1 << 3;
    /// Only paths with a `READ` rule on them or an ancestor may be read.
    pub const READ_RESTRICTED: u32 = 1 << 4;
    /// Only paths with a `WRITE` rule on them or an ancestor may be written.
    pub const WRITE_RESTRICTED: u32 = 1 << 5;
    /// Egress by name: the task's DNS (port 53 to any address, and anything sent to the
    /// resolver's port) is redirected to Warden's resolver at the slot's own loopback address
    /// (see [`DnsConfig`]); the resolver adds what it answers to `EGRESS`, with an expiry.
    pub const DNS_REDIRECT: u32 = 1 << 6;
    /// `EXEC_ALLOW` holds directories ([`exec_allow::DIR`]): a file below one may run too,
    /// found by walking the executed file's ancestors. Sandboxes without the flag pay nothing.
    pub const EXEC_DIRS: u32 = 1 << 7;
}

/// Values of `EXEC_ALLOW` entries.
pub mod exec_allow {
    /// The object is an allowed executable.
    pub const FILE: u32 = 1;
    /// The object is a directory: executables anywhere below it may run (`exec.allow`
    /// directory entries: programs the task builds there).
    pub const DIR: u32 = 2;
}

/// Name of the file rules map (key [`FileKey`], value bit set of [`file_rule`]).
pub const FILE_RULES: &str = "FILE_RULES";
/// Name of the secret-tools map (key [`SecretToolKey`], value `u32` reserved).
pub const SECRET_TOOLS: &str = "SECRET_TOOLS";
/// Default number of file rules over all sandboxes.
pub const DEFAULT_MAX_FILE_RULES: u32 = 65536;

/// Bits of a `FILE_RULES` value. A rule applies to the object and everything beneath it
/// (the kernel walks from the opened file up through its ancestors, across mounts).
pub mod file_rule {
    /// May be read.
    pub const READ: u32 = 1 << 0;
    /// May be written.
    pub const WRITE: u32 = 1 << 1;
    /// Never opened (files.deny, credentials); wins over everything.
    pub const DENY: u32 = 1 << 2;
    /// Never written (system control files).
    pub const DENY_WRITE: u32 = 1 << 3;
    /// The object itself is a secret: only its tools may open it.
    pub const SECRET: u32 = 1 << 4;
    /// No new names directly in this directory: it holds a denied, secret or control path, or
    /// is the deepest existing ancestor of one that does not exist yet, so what is created
    /// there later is refused (fail closed, as the fallback engine's Landlock carve-out).
    pub const NO_NEW: u32 = 1 << 5;
    /// `UNIX_RULES` only: names beneath resolve elsewhere through magic links (`/proc`,
    /// `/dev/fd`), so a unix socket named through them cannot be judged by its name.
    pub const OPAQUE: u32 = 1 << 6;
    /// Never written unless the scope grants `system`: the node's programs, libraries,
    /// configuration and state, and its users' login files (see `scope::compile`).
    pub const DENY_SYSTEM: u32 = 1 << 7;
}

/// Name of the LPM trie the fallback engine judges path-named unix sockets with (key: prefix
/// length + [`UnixPathKey`], value: [`file_rule`] bits of the longest matching path).
pub const UNIX_RULES: &str = "UNIX_RULES";
/// Name of the per-CPU scratch where a `UNIX_RULES` lookup key is built.
pub const UNIX_SCRATCH: &str = "UNIX_SCRATCH";
/// Default number of `UNIX_RULES` entries over all sandboxes: a minimal scope compiles to
/// about 40 (protected paths and their symlinked names), so 128 per slot of the default
/// [`DEFAULT_MAX_TASKS`]. The trie is not preallocated: entries cost memory only when written.
pub const DEFAULT_MAX_UNIX_RULES: u32 = 128 * DEFAULT_MAX_TASKS;
/// Bytes of a socket path in [`UnixPathKey`]: `sun_path` holds at most 108, and the bytes
/// after the name are always zero (an exact-name entry ends in one NUL).
pub const UNIX_PATH_KEY: usize = 112;

/// Data part of a `UNIX_RULES` LPM trie key: the slot (big-endian, always matched in full),
/// then the socket's path, NUL-padded. A rule on directory `P` is two entries: `P/` (what is
/// beneath) and `P\0` (the name itself), each with a prefix of `32 + 8 * (len(P) + 1)` bits;
/// userspace folds every rule on an ancestor into the entry, so the longest match decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixPathKey {
    pub slot_be: [u8; 4],
    pub path: [u8; UNIX_PATH_KEY],
}
crate::assert_layout!(UnixPathKey, size = 116, slot_be @ 0, path @ 4);
/// Prefix length of a lookup key (slot and the whole path buffer).
pub const UNIX_FULL_PREFIX: u32 = 32 + 8 * UNIX_PATH_KEY as u32;

impl Default for UnixPathKey {
    fn default() -> Self {
        Self { slot_be: [0; 4], path: [0; UNIX_PATH_KEY] }
    }
}

/// Key of `FILE_RULES`: an object (kernel dev_t, inode) for one sandbox slot.
pub type FileKey = ExecKey;

/// Key of `SECRET_TOOLS`: (slot, secret, tool executable) identities.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SecretToolKey {
    pub slot: u32,
    pub secret_dev: u32,
    pub secret_ino: u64,
    pub tool_dev: u32,
    pub _pad0: u32,
    pub tool_ino: u64,
}
crate::assert_layout!(SecretToolKey, size = 32, slot @ 0, secret_dev @ 4, secret_ino @ 8, tool_dev @ 16,
    tool_ino @ 24);

/// Value of the `WATCHED` map: which sandbox a cgroup belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Index into per-slot maps (`DROPS`, later the scope maps); `< max_tasks`.
    pub slot: u32,
    /// Bit set of [`sandbox_flags`].
    pub flags: u32,
}
crate::assert_layout!(Sandbox, size = 8, slot @ 0, flags @ 4);

/// Value of the per-CPU `DROPS` array, indexed by sandbox slot: records the kernel could not
/// reserve in the ring buffer, by kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Failed reservations, all kinds.
    pub total: u64,
    pub exec: u64,
    pub fork: u64,
    pub exit: u64,
    pub connect: u64,
    /// Denials whose record was lost (the denial itself still happened).
    pub denials: u64,
}
crate::assert_layout!(DropCounters, size = 48, total @ 0, exec @ 8, fork @ 16, exit @ 24, connect @ 32,
    denials @ 40);

/// Indices into the per-CPU `STATS` array of `u64` counters.
pub mod stat {
    /// Child cgroups the kernel added to `WATCHED` because their parent was watched.
    pub const CGROUP_INHERITED: u32 = 0;
    /// Child cgroups that could not be added (map full).
    pub const CGROUP_INHERIT_FAILED: u32 = 1;
    /// Kernel reads (probe_read) that failed while building a record.
    pub const READ_FAILED: u32 = 2;
    /// Ring-buffer fill (bytes waiting to be read) a program saw when it last submitted a
    /// record on this CPU. A gauge, not a counter: take the maximum over CPUs, not the sum.
    pub const RING_FILL: u32 = 3;
    /// Number of entries.
    pub const COUNT: u32 = 8;
}

#[cfg(feature = "user")]
mod pod {
    macro_rules! pod {
        ($($t:ident),*) => {$(
            // SAFETY: `#[repr(C)]` integers only, explicitly padded (layout asserted above);
            // every bit pattern is valid.
            unsafe impl aya::Pod for super::$t {}
        )*};
    }
    pod!(
        Sandbox,
        DropCounters,
        EgressAddr,
        PortRule,
        EgressRules,
        SecretToolKey,
        DnsConfig,
        DnsOrig,
        UnixPathKey
    );
}

/// Name of the exec allowlist map (key [`ExecKey`], value `u32` reserved).
pub const EXEC_ALLOW: &str = "EXEC_ALLOW";
/// Name of the egress LPM trie (key: prefix length + [`EgressAddr`], value [`EgressRules`]).
pub const EGRESS: &str = "EGRESS";
/// Default number of egress prefixes over all sandboxes.
pub const DEFAULT_MAX_EGRESS: u32 = 16384;
/// Default number of allowed executables over all sandboxes.
pub const DEFAULT_MAX_EXEC: u32 = 65536;

/// Data part of an `EGRESS` LPM trie key (the trie key is `{prefix_len: u32, data}`). The
/// prefix counts the 32 bits of `slot_be` (always matched in full) followed by bits of
/// `addr` (IPv6; IPv4 as IPv4-mapped IPv6, so `a.b.c.d/n` is `::ffff:a.b.c.d/(96+n)` and a
/// v4-mapped v6 destination is judged as its IPv4 address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressAddr {
    /// Sandbox slot, big-endian so it forms the leading bits.
    pub slot_be: [u8; 4],
    pub addr: [u8; 16],
}
crate::assert_layout!(EgressAddr, size = 20, slot_be @ 0, addr @ 4);
/// Prefix length that covers a slot and a full address (a lookup key).
pub const EGRESS_FULL_PREFIX: u32 = 32 + 128;

/// Port rules carried per prefix.
pub const EGRESS_PORT_RULES: usize = 16;

/// One allowed (protocol, port range). `protocol` 0 = any, else IPPROTO_TCP/UDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRule {
    pub lo: u16,
    pub hi: u16,
    pub protocol: u8,
    pub _pad0: [u8; 3],
    /// `bpf_ktime_get_boot_ns()` after which the rule no longer applies (an address the
    /// resolver answered, for the record's TTL); 0 = never (a CIDR rule).
    pub expires_ns: u64,
}
crate::assert_layout!(PortRule, size = 16, lo @ 0, hi @ 2, protocol @ 4, expires_ns @ 8);

/// Value of the `EGRESS` trie: the port rules of every scope rule whose network contains the
/// matched prefix (userspace folds shorter prefixes into longer ones, so the longest match
/// alone decides).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressRules {
    /// Valid entries in `rules`.
    pub count: u32,
    pub _pad0: u32,
    pub rules: [PortRule; EGRESS_PORT_RULES],
}
crate::assert_layout!(EgressRules, size = 264, count @ 0, rules @ 8);

/// Name of the one-entry array holding the node resolver's [`DnsConfig`].
pub const DNS_CONFIG: &str = "DNS_CONFIG";
/// Name of the LRU map socket cookie → [`DnsOrig`] (where a redirected query was sent).
pub const DNS_ORIG: &str = "DNS_ORIG";
/// Default number of sockets whose redirected DNS destination is remembered (LRU).
pub const DEFAULT_MAX_DNS_SOCKETS: u32 = 65536;

/// Where the kernel redirects a `DNS_REDIRECT` sandbox's DNS: sandbox slot `s` is sent to the
/// IPv4 loopback address `addr_base + s`, port `port`. The resolver learns the slot from the
/// address the datagram or connection arrived on, which only the kernel chose.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsConfig {
    /// First address (host byte order), inside 127.0.0.0/8.
    pub addr_base: u32,
    /// Addresses in the range (slots at or past it are refused, not redirected).
    pub slots: u32,
    /// The resolver's UDP and TCP port (host byte order); 0 = no resolver: DNS is refused.
    pub port: u16,
    pub _pad0: u16,
    pub _pad1: u32,
}
crate::assert_layout!(DnsConfig, size = 16, addr_base @ 0, slots @ 4, port @ 8);

/// Value of `DNS_ORIG`: the destination a redirected UDP query was sent to, so replies read
/// with `recvmsg` appear to come from it (stub resolvers check the source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrig {
    /// IPv6; IPv4 as IPv4-mapped IPv6.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad0: u16,
    pub _pad1: u32,
}
crate::assert_layout!(DnsOrig, size = 24, addr @ 0, port @ 16);

/// Key of the `EXEC_DENY` map: an executable (kernel dev_t, inode) for one sandbox slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecKey {
    pub slot: u32,
    /// Kernel `dev_t` (`major << 20 | minor`).
    pub dev: u32,
    pub ino: u64,
}
crate::assert_layout!(ExecKey, size = 16, slot @ 0, dev @ 4, ino @ 8);
#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` integers, no padding holes.
unsafe impl aya::Pod for ExecKey {}
