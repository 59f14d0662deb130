//! Small helpers shared by the tasks.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// Runs a command, echoing it (and how long it took: the suite's logs show where its time
/// goes), and fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let t0 = std::time::Instant::now();
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    eprintln!("+ ({:.1}s) {}", t0.elapsed().as_secs_f64(), short(cmd));
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// A command's program name and first few arguments, for timing lines.
fn short(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program()).file_name().unwrap_or_default().to_string_lossy().into_owned();
    let args: Vec<String> = cmd.get_args().take(6).map(|a| a.to_string_lossy().into_owned()).collect();
    format!("{program} {}", args.join(" "))
}

/// Runs a command and returns its stdout (trimmed); fails on a non-zero exit.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `cargo` as invoked by this xtask.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

/// Target directory of the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the `warden` binary and returns its path.
pub fn build_warden(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    // Selecting warden-tests too gives the same feature resolution as `cargo test -p
    // warden-tests`, so agent-user is not rebuilt between the two.
    c.args(["build", "--package", "agent-user", "--package", "warden-tests", "--bin", "warden"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(target_dir().join(if release { "release" } else { "debug" }).join("warden"))
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Installs Debian `package` when `binary` is missing (`apt-get update` first if the install
/// fails on stale lists). Idempotent: does nothing when the binary exists.
pub fn ensure_apt(binary: &str, package: &str) -> anyhow::Result<()> {
    if Path::new(binary).exists() {
        return Ok(());
    }
    eprintln!("setup: installing {package} (for {binary})");
    let install =
        || Command::new("apt-get").args(["install", "-y", "--no-install-recommends", package]).status();
    if !install().map(|s| s.success()).unwrap_or(false) {
        run(Command::new("apt-get").arg("update"))?;
        run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends", package]))?;
    }
    if !Path::new(binary).exists() {
        bail!("{package} installed but {binary} is missing");
    }
    Ok(())
}
