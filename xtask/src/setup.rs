//! `cargo xtask setup`: installs, only when missing or broken, what building the
//! eBPF side needs: `rust-src` for the eBPF toolchain and bpf-linker 0.13.0
//! linked against that toolchain's own libLLVM (no system LLVM 22 exists here,
//! and no prebuilt bpf-linker can be downloaded).
use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::util::{output, run as run_cmd};

/// The toolchain that builds `agent-ebpf` (aya-build's default).
pub const EBPF_TOOLCHAIN: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The fake LLVM prefix bpf-linker is built against; its RUNPATH points here.
/// `WARDEN_LLVM_PREFIX` overrides it (used to rehearse a fresh machine).
fn llvm_prefix() -> PathBuf {
    std::env::var_os("WARDEN_LLVM_PREFIX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/llvm-rust"))
}

pub fn run() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut did = Vec::new();
    ensure_toolchain()?;
    if ensure_rust_src()? {
        did.push("added rust-src to the eBPF toolchain");
    }
    let libllvm = toolchain_libllvm()?;
    if ensure_llvm_prefix(&libllvm)? {
        did.push("made the LLVM prefix for bpf-linker");
    }
    if !bpf_linker_ok(&libllvm) {
        install_bpf_linker()?;
        if !bpf_linker_ok(&libllvm) {
            bail!("bpf-linker was built but still does not run against {}", libllvm.display());
        }
        did.push("built bpf-linker against the eBPF toolchain's libLLVM");
    }
    let took = t0.elapsed();
    if did.is_empty() {
        eprintln!("setup: nothing to do ({:.1}s)", took.as_secs_f64());
    } else {
        eprintln!("setup: {} ({:.1}s)", did.join("; "), took.as_secs_f64());
    }
    Ok(())
}

fn ensure_toolchain() -> anyhow::Result<()> {
    let ok = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "-vV"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "the `{EBPF_TOOLCHAIN}` Rust toolchain is missing: install one whose `rustc -vV` reports LLVM 22 \
             (`rustup toolchain install {EBPF_TOOLCHAIN} --profile minimal`)"
        );
    }
    Ok(())
}

fn sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(output(Command::new("rustup").args([
        "run",
        EBPF_TOOLCHAIN,
        "rustc",
        "--print",
        "sysroot",
    ]))?))
}

/// The eBPF toolchain's clippy, for the lint tier (a `--profile minimal` toolchain lacks it).
pub fn ensure_ebpf_clippy() -> anyhow::Result<()> {
    let ok = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "cargo", "clippy", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        run_cmd(Command::new("rustup").args(["component", "add", "clippy", "--toolchain", EBPF_TOOLCHAIN]))?;
    }
    Ok(())
}

/// Returns true when it had to install rust-src.
fn ensure_rust_src() -> anyhow::Result<bool> {
    let lib = sysroot()?.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if lib.exists() {
        return Ok(false);
    }
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]))?;
    Ok(true)
}

/// The toolchain's own libLLVM (`lib/libLLVM.so.<ver>-rust-...`).
fn toolchain_libllvm() -> anyhow::Result<PathBuf> {
    let lib = sysroot()?.join("lib");
    let found = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        });
    found.with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))
}

fn llvm_major(libllvm: &Path) -> anyhow::Result<String> {
    let name = libllvm.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    // libLLVM.so.22.1-rust-1.97.0-nightly → 22
    let ver = name.trim_start_matches("libLLVM.so.");
    let major = ver.split(['.', '-']).next().unwrap_or_default();
    if major.parse::<u32>().is_err() {
        bail!("cannot read the LLVM version from {name}");
    }
    Ok(major.to_string())
}

/// A fake LLVM prefix: llvm-sys only asks `llvm-config` for the version and links `libLLVM.so`.
fn ensure_llvm_prefix(libllvm: &Path) -> anyhow::Result<bool> {
    let prefix = &llvm_prefix();
    let name = libllvm.file_name().context("libLLVM file name")?;
    let major = llvm_major(libllvm)?;
    let config_text = format!("#!/bin/sh\necho {major}.1.0\n");
    let links = [prefix.join("lib/libLLVM.so"), prefix.join("lib").join(name)];
    let config = prefix.join("bin/llvm-config");
    let good = links.iter().all(|l| fs::read_link(l).ok().as_deref() == Some(libllvm))
        && fs::read_to_string(&config).ok().as_deref() == Some(config_text.as_str());
    if good {
        return Ok(false);
    }
    fs::create_dir_all(prefix.join("lib"))?;
    fs::create_dir_all(prefix.join("bin"))?;
    for l in &links {
        let _ = fs::remove_file(l);
        symlink(libllvm, l).with_context(|| format!("linking {}", l.display()))?;
    }
    fs::write(&config, config_text)?;
    fs::set_permissions(&config, fs::Permissions::from_mode(0o755))?;
    Ok(true)
}

/// bpf-linker runs and loads the toolchain's current libLLVM.
fn bpf_linker_ok(libllvm: &Path) -> bool {
    let Ok(v) = output(Command::new("bpf-linker").arg("--version")) else { return false };
    if !v.contains(BPF_LINKER_VERSION) {
        return false;
    }
    let Ok(path) = which_bpf_linker() else { return false };
    let Ok(ldd) = output(Command::new("ldd").arg(&path)) else { return false };
    let name = libllvm.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    ldd.lines().any(|l| l.trim_start().starts_with(name) && !l.contains("not found"))
}

fn which_bpf_linker() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(output(Command::new("sh").args(["-c", "command -v bpf-linker"]))?))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the eBPF toolchain's libLLVM (about 3 minutes)"
    );
    let major = llvm_major(&toolchain_libllvm()?)?;
    run_cmd(
        Command::new("cargo")
            .args([
                "+stable",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .env("LLVM_PREFIX", llvm_prefix())
            .current_dir(std::env::temp_dir()),
    )
}
