//! Every map the kernel programs use. Sizes here are defaults: the loader sets
//! the real ones at load time (`EbpfLoader::map_max_entries`).
use agent_common::maps::{
    DEFAULT_MAX_CGROUPS, DEFAULT_MAX_DNS_SOCKETS, DEFAULT_MAX_EGRESS, DEFAULT_MAX_EXEC,
    DEFAULT_MAX_FILE_RULES, DEFAULT_MAX_TASKS, DEFAULT_MAX_UNIX_RULES, DEFAULT_RING_BYTES, DnsConfig,
    DnsOrig, DropCounters, EgressAddr, EgressRules, ExecKey, FileKey, Sandbox, SecretToolKey, UnixPathKey,
    stat,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

/// All records, in reservation order. Size set at load (default 4 MiB).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// cgroup v2 id → sandbox. Userspace inserts a sandbox's own cgroup (and any child cgroups
/// that exist when it binds one); `cgroup_mkdir` adds children created later, so a task in
/// a child cgroup of a sandbox belongs to that sandbox with a single lookup per event.
#[map]
pub static WATCHED: HashMap<u64, Sandbox> = HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

/// Per-CPU, per-sandbox-slot counters of records lost to a full ring buffer.
#[map]
pub static DROPS: PerCpuArray<DropCounters> = PerCpuArray::with_max_entries(DEFAULT_MAX_TASKS, 0);

/// Per-CPU global counters, indexed by `agent_common::maps::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Test hook (feature `test-hooks`, absent from production objects): executables (sandbox
/// slot, dev, ino) the LSM `bprm_check_security` refuses, filled by the VM tier's basic LSM test.
#[cfg(feature = "test-hooks")]
#[map]
pub static EXEC_DENY: HashMap<ExecKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_CGROUPS, 0);

/// Executables (sandbox slot, kernel dev_t, inode) a sandbox with `EXEC_RESTRICTED` may run.
#[map]
pub static EXEC_ALLOW: HashMap<ExecKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_EXEC, 0);

/// Allowed egress per sandbox: longest-prefix match on (slot, destination), value = the port
/// rules that apply there. `BPF_F_NO_PREALLOC` is mandatory for LPM tries.
#[map]
pub static EGRESS: LpmTrie<EgressAddr, EgressRules> = LpmTrie::with_max_entries(DEFAULT_MAX_EGRESS, 1);

/// The node resolver's address range and port (one entry), for sandboxes with
/// `DNS_REDIRECT`. Written by userspace before any such sandbox is bound.
#[map]
pub static DNS_CONFIG: Array<DnsConfig> = Array::with_max_entries(1, 0);

/// Socket cookie → where its last redirected DNS datagram was addressed, so `recvmsg`
/// reports the reply as coming from there. LRU: entries of closed sockets age out.
#[map]
pub static DNS_ORIG: LruHashMap<u64, DnsOrig> = LruHashMap::with_max_entries(DEFAULT_MAX_DNS_SOCKETS, 0);

/// Object rules per sandbox: (slot, dev, ino) → `agent_common::maps::file_rule` bits. A rule on a
/// directory applies beneath it (BPF LSM engine).
#[map]
pub static FILE_RULES: HashMap<FileKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_FILE_RULES, 0);

/// (slot, secret, tool) triples: which executables may open which secret (BPF LSM engine).
#[map]
pub static SECRET_TOOLS: HashMap<SecretToolKey, u32> = HashMap::with_max_entries(DEFAULT_MAX_EXEC, 0);

/// Path-named unix sockets per sandbox, by name (fallback engine: the cgroup
/// `connect_unix`/`sendmsg_unix` programs see the name the task gave, not the file): longest
/// match on (slot, path), value = `file_rule` bits of the matched path and its ancestors.
#[map]
pub static UNIX_RULES: LpmTrie<UnixPathKey, u32> = LpmTrie::with_max_entries(DEFAULT_MAX_UNIX_RULES, 1);

/// Where the unix programs build a `UNIX_RULES` key and check the name, byte by byte, in a
/// `bpf_loop` callback: state kept in map memory is unknown to the verifier, so the callback's
/// states converge at once.
#[repr(C)]
pub struct UnixScratch {
    /// The lookup key, `{prefix_len, UnixPathKey}` as the LPM trie reads it.
    pub prefix_len: u32,
    pub key: UnixPathKey,
    /// Bytes in the current path component, and how many of them are dots.
    pub seg: u32,
    pub dots: u32,
    /// Non-zero once the name was found unjudgeable.
    pub bad: u32,
    pub _pad0: u32,
}

/// Per-CPU scratch of the unix programs.
#[map]
pub static UNIX_SCRATCH: PerCpuArray<UnixScratch> = PerCpuArray::with_max_entries(1, 0);

/// A path being built from dentry names, back to front: it is `buf[pos..PATH_LEN]`.
#[repr(C)]
pub struct PathScratch {
    /// Kept here rather than on the stack, so the verifier sees an unknown value and the walk
    /// callback's states converge instead of being re-checked once per possible length.
    pub pos: u32,
    /// Always zero: read where a value the verifier cannot know is wanted (see `lsm.rs`).
    pub zero: u32,
    /// Written and read back to hide a value from the verifier (see `lsm.rs`).
    pub tmp: u32,
    pub _pad0: u32,
    /// Twice `PATH_LEN`: a name of up to `PATH_LEN - 1` bytes copied at any offset below
    /// `PATH_LEN` stays inside it (what the verifier checks).
    pub buf: [u8; 2 * agent_common::abi::PATH_LEN],
}

/// Per-CPU scratch where the BPF LSM engine builds a path from dentry names (hooks where
/// `bpf_d_path` is not allowed).
#[map]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Adds one to a global counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(c) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// The sandbox the current task belongs to, if any. This is the only work an
/// unwatched task pays for.
#[inline(always)]
pub fn current_sandbox() -> Option<(u64, Sandbox)> {
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { aya_ebpf::helpers::bpf_get_current_cgroup_id() };
    // SAFETY: value is Copy and read immediately.
    let sandbox = unsafe { WATCHED.get(cgroup_id) }.copied()?;
    Some((cgroup_id, sandbox))
}
