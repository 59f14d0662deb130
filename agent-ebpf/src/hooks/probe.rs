//! Minimal programs `warden probe` loads to learn what this kernel allows.
//! They are loaded, never attached, and do nothing.
use aya_ebpf::{
    macros::{cgroup_sock_addr, fentry},
    programs::{FEntryContext, SockAddrContext},
};

/// Loads only where trampolines (fentry/fexit/fmod_ret, BPF LSM) are allowed. The loader
/// picks the attach target from the kernel's BTF; the section name is only a default.
#[fentry(function = "do_unlinkat")]
pub fn probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

/// cgroup `connect4`: allow everything.
#[cgroup_sock_addr(connect4)]
pub fn probe_connect4(_ctx: SockAddrContext) -> i32 {
    1
}
