//! Warden's kernel programs.
//!
//! Data flow: a hook (`hooks/`) looks the current task's cgroup up in `WATCHED`
//! (one map lookup: unwatched tasks pay nothing more), builds a constant-size
//! record in the ring buffer (`emit`), and counts what it could not reserve per
//! sandbox. Kernel struct offsets come from the loader (`offsets`), resolved
//! from the running kernel's BTF.
#![no_std]
#![no_main]

mod emit;
mod hooks;
mod maps;
mod offsets;
mod path;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
