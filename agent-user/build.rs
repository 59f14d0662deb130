//! Builds the eBPF object (agent-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker that `cargo xtask setup` installs; the object lands
//! in OUT_DIR and is embedded into `warden`.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    // The test-only kernel surface goes into the object only for the privileged tests.
    let features: &[&str] =
        if std::env::var_os("CARGO_FEATURE_TEST_HOOKS").is_some() { &["test-hooks"] } else { &[] };
    let pkg = aya_build::Package { name: "agent-ebpf", root_dir: root, features, ..Default::default() };
    println!("cargo:rerun-if-changed={}/../agent-common/src", env!("CARGO_MANIFEST_DIR"));
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default())
}
