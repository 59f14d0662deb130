//! Builds the eBPF object (agent-ebpf) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker that `cargo xtask setup` installs; the object lands
//! in OUT_DIR and is embedded into `warden`.
//!
//! aya-build builds in a cargo target directory under OUT_DIR, which every build of this
//! crate has its own of (each profile, each feature set, clippy's): each compiled `core` and
//! the eBPF crate's proc-macros from scratch, four times in a CI run. Here that directory is a
//! link to one shared per feature set, `<target>/ebpf-build/<features>`, so only the first
//! build compiles them and the others find the eBPF crate fresh (or rebuild just it). A lock
//! held across the build and the copy into OUT_DIR keeps two builds from interleaving.
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf");
    // The test-only kernel surface goes into the object only for the privileged tests.
    let features: &[&str] =
        if std::env::var_os("CARGO_FEATURE_TEST_HOOKS").is_some() { &["test-hooks"] } else { &[] };
    let pkg = aya_build::Package { name: "agent-ebpf", root_dir: root, features, ..Default::default() };
    println!("cargo:rerun-if-changed={}/../agent-common/src", env!("CARGO_MANIFEST_DIR"));
    let out_dir =
        PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow::anyhow!("OUT_DIR not set"))?);
    let _lock = match shared_target_dir(&out_dir, features) {
        Some(shared) => Some(link_shared(&out_dir, &shared)?),
        None => None,
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::default())
}

/// `<target>/ebpf-build/<features>`: the workspace's target directory is the ancestor of
/// OUT_DIR that holds cargo's `CACHEDIR.TAG`.
fn shared_target_dir(out_dir: &Path, features: &[&str]) -> Option<PathBuf> {
    let target = out_dir.ancestors().skip(1).find(|d| d.join("CACHEDIR.TAG").is_file())?;
    let name = if features.is_empty() { "default".to_string() } else { features.join("+") };
    Some(target.join("ebpf-build").join(name))
}

/// Points aya-build's target directory (`OUT_DIR/aya-build/target/agent-ebpf`) at `shared`
/// and returns the lock on it, held until the object is copied into OUT_DIR.
fn link_shared(out_dir: &Path, shared: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(shared)?;
    let lock = std::fs::File::create(shared.with_extension("lock"))?;
    lock.lock()?;
    let parent = out_dir.join("aya-build/target");
    std::fs::create_dir_all(&parent)?;
    let link = parent.join("agent-ebpf");
    if std::fs::read_link(&link).ok().as_deref() != Some(shared) {
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link)?,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(shared, &link)?;
    }
    Ok(lock)
}
