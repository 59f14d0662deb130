//! Re-link when bpf-linker changes (a new nightly can rename its libLLVM).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
