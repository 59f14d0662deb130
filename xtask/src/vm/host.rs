//! Host tools the VM tier needs, installed only when missing: QEMU (10.x: the host release's
//! backports on Debian 12, whose own 7.2 crashes 6.12 guests) and a static busybox.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::apt::Apt;
use crate::util::output;

pub const QEMU: &str = "qemu-system-x86_64";
/// From `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";
/// The oldest QEMU that boots every kernel of the matrix reliably under TCG.
const QEMU_MIN_MAJOR: u32 = 10;
/// QEMU's x86 system emulator and what must come from the same suite as it.
const QEMU_PACKAGES: [&str; 4] = ["qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios"];

pub struct Tools {
    pub qemu: PathBuf,
    pub qemu_version: String,
    pub busybox: PathBuf,
}

/// QEMU's version line if a new enough one is installed.
fn qemu_version() -> Option<String> {
    let v = output(Command::new(QEMU).arg("--version")).ok()?;
    let line = v.lines().next()?.to_string();
    let major: u32 = line.split("version ").nth(1)?.split('.').next()?.parse().ok()?;
    (major >= QEMU_MIN_MAJOR).then_some(line)
}

fn busybox_static_installed() -> bool {
    let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", "busybox-static"]));
    status.is_ok_and(|s| s == "install ok installed") && Path::new(BUSYBOX).is_file()
}

/// Installs what is missing; does nothing (and needs no network) when all is there.
pub fn ensure(apt: &Apt, lists_ok: bool, cache: &Path) -> anyhow::Result<Tools> {
    let need_qemu = qemu_version().is_none();
    let need_busybox = !busybox_static_installed();
    if need_qemu || need_busybox {
        if !lists_ok {
            bail!(
                "QEMU {QEMU_MIN_MAJOR}+ or busybox-static is missing and the package lists could not be fetched"
            );
        }
        let mut debs = Vec::new();
        if need_qemu {
            debs = qemu_debs(apt, cache)?;
        }
        let names: &[&str] = if need_busybox { &["busybox-static"] } else { &[] };
        eprintln!("vm: installing {}", describe(&debs, names));
        apt.install(&debs, names)?;
    }
    let qemu_version = qemu_version()
        .with_context(|| format!("{QEMU} {QEMU_MIN_MAJOR}+ is still missing after the install"))?;
    if !busybox_static_installed() {
        bail!("busybox-static is still missing after the install");
    }
    let qemu = PathBuf::from(output(Command::new("sh").args(["-c", &format!("command -v {QEMU}")]))?);
    Ok(Tools { qemu, qemu_version, busybox: PathBuf::from(BUSYBOX) })
}

fn describe(debs: &[PathBuf], names: &[&str]) -> String {
    debs.iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .chain(names.iter().map(|s| s.to_string()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The QEMU packages as `.deb` files in the cache, downloaded once.
fn qemu_debs(apt: &Apt, cache: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = cache.join("debs");
    let suite =
        if apt.codename == "bookworm" { "bookworm-backports".to_string() } else { apt.codename.clone() };
    let cached = |name: &str| -> Option<PathBuf> {
        fs::read_dir(&dir).ok()?.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
        })
    };
    let missing: Vec<String> =
        QEMU_PACKAGES.iter().filter(|n| cached(n).is_none()).map(|n| format!("{n}/{suite}")).collect();
    if !missing.is_empty() {
        eprintln!("vm: downloading {}", missing.join(" "));
        apt.download(&missing, &dir)?;
    }
    QEMU_PACKAGES
        .iter()
        .map(|n| cached(n).with_context(|| format!("{n}: no .deb in {}", dir.display())))
        .collect()
}
