//! Builds the eBPF object (agent-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker that `cargo xtask setup` installs; the object lands
//! in OUT_DIR and is embedded into `warden`.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    let pkg = aya_build::Package { name: "agent-ebpf", root_dir: root, ..Default::default() };
    println!("cargo:rerun-if-changed={}/../agent-common/src", env!("CARGO_MANIFEST_DIR"));
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default())
}
