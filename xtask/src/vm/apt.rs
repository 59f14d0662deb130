//! Debian packages for the VM tier, through a private apt configuration.
//!
//! The machine's own apt sources and state are never changed: a sources file of our own (the
//! host's Debian mirror, plus the suites the kernels and QEMU come from) and our own lists and
//! archive directories live in the cache, and are passed to `apt-get`/`apt-cache` with
//! `-o Dir::...`. The dpkg status database is the machine's, so installs are real installs.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::util::{output, run};

/// Lists older than this are refreshed before they are used.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Where the kernels and QEMU come from.
#[derive(Debug)]
struct Mirrors {
    archive: String,
    security: String,
}

/// The private apt configuration under `<cache>/apt`.
pub struct Apt {
    dir: PathBuf,
    /// The host's Debian codename (`bookworm`).
    pub codename: String,
    mirrors: Mirrors,
}

impl Apt {
    pub fn new(cache: &Path) -> anyhow::Result<Self> {
        let codename = host_codename()?;
        let mirrors = host_mirrors(&codename)?;
        Ok(Self { dir: cache.join("apt"), codename, mirrors })
    }

    /// Every suite the VM tier takes packages from: the kernels (Debian 12 and 13, their
    /// backports and security updates) and QEMU (the host's backports).
    fn all_sources(&self) -> String {
        let Mirrors { archive, security } = &self.mirrors;
        let mut s =
            String::from("# Written by `cargo xtask vm`; used only through -o Dir::Etc::sourcelist.\n");
        for suite in [
            "bookworm",
            "bookworm-updates",
            "bookworm-backports",
            "trixie",
            "trixie-updates",
            "trixie-backports",
        ] {
            s.push_str(&format!("deb {archive} {suite} main\n"));
        }
        for suite in ["bookworm-security", "trixie-security"] {
            s.push_str(&format!("deb {security} {suite} main\n"));
        }
        s
    }

    /// The suites an install may take dependencies from: the host's release only (its updates,
    /// security updates and backports), so nothing from a newer release lands on the host.
    fn install_sources(&self) -> String {
        let Mirrors { archive, security } = &self.mirrors;
        let c = &self.codename;
        format!(
            "# Written by `cargo xtask vm`; used only for installs through -o Dir::Etc::sourcelist.\n\
             deb {archive} {c} main\ndeb {archive} {c}-updates main\ndeb {archive} {c}-backports main\n\
             deb {security} {c}-security main\n"
        )
    }

    fn sources_file(&self) -> PathBuf {
        self.dir.join("sources.list")
    }

    fn install_sources_file(&self) -> PathBuf {
        self.dir.join("sources-install.list")
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("lists-updated")
    }

    /// `-o` options that point apt at the private configuration, with `sources` as sources list.
    fn opts(&self, sources: &Path) -> Vec<String> {
        let state = self.dir.join("state");
        let cache = self.dir.join("cache");
        [
            format!("Dir::Etc::sourcelist={}", sources.display()),
            "Dir::Etc::sourceparts=-".into(),
            format!("Dir::State={}", state.display()),
            format!("Dir::Cache={}", cache.display()),
            // Our directories are root's; apt's download sandbox user could not write them.
            "APT::Sandbox::User=root".into(),
            "Acquire::Languages=none".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    fn apt_get(&self, sources: &Path) -> Command {
        let mut c = Command::new("apt-get");
        c.args(self.opts(sources)).env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn apt_cache(&self) -> Command {
        let mut c = Command::new("apt-cache");
        c.args(self.opts(&self.sources_file()));
        c
    }

    /// Makes sure the private lists exist and are fresh (`apt-get update` only when they are
    /// missing, older than a day, the sources changed, or `force`). Returns whether lists are
    /// usable; a failed refresh of existing lists is only a warning (the cache may suffice).
    pub fn ensure_lists(&self, force: bool) -> anyhow::Result<bool> {
        for d in ["state/lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(self.dir.join(d))
                .with_context(|| format!("creating {}", self.dir.join(d).display()))?;
        }
        let mut changed = false;
        for (file, text) in
            [(self.sources_file(), self.all_sources()), (self.install_sources_file(), self.install_sources())]
        {
            if fs::read_to_string(&file).ok().as_deref() != Some(text.as_str()) {
                fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
                changed = true;
            }
        }
        let age = fs::metadata(self.stamp())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let have_lists = age.is_some();
        if !force && !changed && age.is_some_and(|a| a < LISTS_MAX_AGE) {
            return Ok(true);
        }
        eprintln!("vm: refreshing the private apt lists ({})", self.dir.display());
        let mut c = self.apt_get(&self.sources_file());
        c.args(["-q", "update"]);
        match output(&mut c) {
            Ok(_) => {
                fs::write(self.stamp(), "")?;
                Ok(true)
            }
            Err(e) if have_lists => {
                eprintln!("vm: warning: apt-get update failed, using the old lists: {e:#}");
                Ok(true)
            }
            Err(e) => {
                eprintln!("vm: warning: apt-get update failed and there are no lists yet: {e:#}");
                Ok(false)
            }
        }
    }

    /// Package names matching a POSIX extended regex, from the private lists.
    pub fn search_names(&self, regex: &str) -> anyhow::Result<Vec<String>> {
        let out = output(self.apt_cache().args(["search", "--names-only", regex]))?;
        Ok(out.lines().filter_map(|l| l.split(" - ").next()).map(|s| s.trim().to_string()).collect())
    }

    /// `apt-get download` of `specs` (`name` or `name/suite`) into `dest`.
    pub fn download(&self, specs: &[String], dest: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dest)?;
        let mut c = self.apt_get(&self.sources_file());
        c.args(["-q", "download"]).args(specs).current_dir(dest);
        run(&mut c)
    }

    /// Installs local `.deb` files and named packages from the host's release, after checking
    /// with a simulation that the install removes nothing.
    pub fn install(&self, debs: &[PathBuf], names: &[&str]) -> anyhow::Result<()> {
        let targets: Vec<String> =
            debs.iter().map(|d| d.display().to_string()).chain(names.iter().map(|s| s.to_string())).collect();
        let mut sim = self.apt_get(&self.install_sources_file());
        sim.args(["-s", "install", "--no-install-recommends"]).args(&targets);
        let plan = output(&mut sim)?;
        let removals: Vec<&str> = plan.lines().filter(|l| l.starts_with("Remv ")).collect();
        if !removals.is_empty() {
            bail!(
                "installing {} would remove packages from this machine; refusing:\n{}",
                targets.join(" "),
                removals.join("\n")
            );
        }
        let mut c = self.apt_get(&self.install_sources_file());
        c.args(["-y", "-q", "-o", "DPkg::Lock::Timeout=300", "install", "--no-install-recommends"])
            .args(&targets);
        run(&mut c)
    }
}

/// `VERSION_CODENAME` from `/etc/os-release`.
fn host_codename() -> anyhow::Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("no VERSION_CODENAME in /etc/os-release: the VM tier needs a Debian host")
}

/// The Debian archive and security mirrors this machine's own apt sources use.
fn host_mirrors(codename: &str) -> anyhow::Result<Mirrors> {
    let mut entries = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else { continue };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(parse_deb822(&text)),
            Some("list") => entries.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    let find = |suite: &str| {
        entries.iter().find(|(_, s)| s == suite).map(|(u, _)| u.trim_end_matches('/').to_string())
    };
    let archive = find(codename).with_context(|| format!("no apt source for `{codename}` in /etc/apt"))?;
    let security = find(&format!("{codename}-security"))
        .with_context(|| format!("no apt source for `{codename}-security` in /etc/apt"))?;
    Ok(Mirrors { archive, security })
}

/// (URI, suite) pairs of `deb` entries in a deb822 `.sources` file.
fn parse_deb822(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb") || field("Enabled").iter().any(|v| v == "no") {
            continue;
        }
        for uri in field("URIs") {
            for suite in field("Suites") {
                out.push((uri.clone(), suite));
            }
        }
    }
    out
}

/// (URI, suite) pairs of `deb` lines in a one-line-style `.list` file.
fn parse_one_line(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let rest = l.strip_prefix("deb ")?.trim_start();
            // Skip `[ option=value ... ]`.
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1.trim_start(),
                None => rest,
            };
            let mut it = rest.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\n\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security/\nSuites: bookworm-security\n";
        let e = parse_deb822(deb822);
        assert_eq!(e[0], ("http://mirror.example/debian".into(), "bookworm".into()));
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].1, "bookworm-security");
        let list = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n\
                    deb-src http://m.example/debian bookworm main\n";
        assert_eq!(parse_one_line(list), vec![("http://m.example/debian".into(), "bookworm".into())]);
    }
}
