//! The kernel matrix: which Debian cloud kernels the VM tier boots, resolved to the newest
//! package of each family in the private apt lists, downloaded once (`apt-get download`) and
//! unpacked (`dpkg-deb -x`) into the cache without installing anything.
use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::apt::Apt;
use crate::util::{output, run};

/// One column of the matrix.
pub struct Family {
    /// What `--kernel` takes.
    pub name: &'static str,
    pub about: &'static str,
    /// Whether a kernel release (`6.1.0-56-cloud-amd64`) belongs to the family.
    matches: fn(&str) -> bool,
}

pub const FAMILIES: &[Family] = &[
    Family {
        name: "6.1",
        about: "Debian 12 (bookworm) LTS kernel",
        matches: |r| r.starts_with("6.1.0-") && r.ends_with(FLAVOUR),
    },
    Family {
        name: "6.12",
        about: "Debian 13 (trixie) LTS kernel",
        matches: |r| r.starts_with("6.12.") && r.contains("+deb13") && r.ends_with(FLAVOUR),
    },
    Family {
        name: "newest",
        about: "the newest cloud kernel in trixie and its backports",
        matches: |r| r.ends_with(FLAVOUR),
    },
];

const FLAVOUR: &str = "-cloud-amd64";

/// Unsigned cloud kernel images: `linux-image-<release>-unsigned` up to 6.x, and
/// `linux-binary-unsigned-<release>` in the 7.x packaging.
const PACKAGE_REGEX: &str =
    "^linux-(image-[0-9].*-cloud-amd64-unsigned|binary-unsigned-[0-9].*-cloud-amd64)$";

/// The kernel release a package name carries, if it is a kernel image package we boot.
fn release_of(package: &str) -> Option<&str> {
    let r = package
        .strip_prefix("linux-binary-unsigned-")
        .or_else(|| package.strip_prefix("linux-image-").and_then(|r| r.strip_suffix("-unsigned")))?;
    (r.ends_with(FLAVOUR) && r.starts_with(|c: char| c.is_ascii_digit())).then_some(r)
}

/// Orders kernel releases by their numbers (`6.1.0-9` < `6.1.0-56`, `6.12.117` < `7.3.4`).
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<Result<u64, &str>> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            if digits > 0 {
                out.push(Ok(rest[..digits].parse().unwrap_or(u64::MAX)));
                rest = &rest[digits..];
            } else {
                let other = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
                out.push(Err(&rest[..other]));
                rest = &rest[other..];
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Err(x), Err(y)) => x.cmp(y),
            // A number sorts after a separator, so `6.12.115+deb13.1` > `6.12.115+deb13`.
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `6.1.0-56-cloud-amd64`
    pub release: String,
    pub package: String,
    pub version: String,
    /// The families it stands for (one kernel may be both `6.12` and `newest`).
    pub families: Vec<&'static str>,
    pub vmlinuz: PathBuf,
}

/// Picks the kernel of each wanted family (newest in the lists, else newest already cached),
/// then downloads and unpacks the ones not in the cache yet.
pub fn resolve(
    apt: &Apt,
    lists_ok: bool,
    cache: &Path,
    wanted: &[&'static Family],
) -> anyhow::Result<Vec<Kernel>> {
    let dir = cache.join("kernels");
    fs::create_dir_all(&dir)?;
    let available: Vec<String> = if lists_ok { apt.search_names(PACKAGE_REGEX)? } else { Vec::new() };
    let cached = cached_kernels(&dir);
    let newest_cached = |fam: &Family| {
        cached.iter().filter(|(r, _)| (fam.matches)(r)).max_by(|a, b| compare_releases(&a.0, &b.0)).cloned()
    };
    let mut kernels: Vec<Kernel> = Vec::new();
    for fam in wanted {
        let from_lists = available
            .iter()
            .filter_map(|p| release_of(p).map(|r| (r.to_string(), p.clone())))
            .filter(|(r, _)| (fam.matches)(r))
            .max_by(|a, b| compare_releases(&a.0, &b.0));
        let (release, package) = match from_lists {
            Some(c) => c,
            None => {
                let c = newest_cached(fam).with_context(|| {
                    format!("no `{}` kernel in the apt lists or in {}", fam.name, dir.display())
                })?;
                eprintln!("vm: warning: no `{}` kernel in the apt lists; using the cached {}", fam.name, c.0);
                c
            }
        };
        if let Some(k) = kernels.iter_mut().find(|k| k.release == release) {
            k.families.push(fam.name);
            continue;
        }
        let k = match fetch(apt, &dir, &release, &package) {
            Ok(k) => k,
            // A mirror drops superseded kernels; lists up to a day old can name one.
            Err(e) => {
                let (r, p) = newest_cached(fam).ok_or(e).with_context(|| format!("fetching {package}"))?;
                eprintln!("vm: warning: cannot fetch {package}; using the cached {r}");
                match kernels.iter_mut().find(|k| k.release == r) {
                    Some(k) => {
                        k.families.push(fam.name);
                        continue;
                    }
                    None => fetch(apt, &dir, &r, &p)?,
                }
            }
        };
        kernels.push(Kernel { families: vec![fam.name], ..k });
    }
    Ok(kernels)
}

/// (release, package) of every kernel already unpacked in the cache.
fn cached_kernels(dir: &Path) -> Vec<(String, String)> {
    let Ok(rd) = fs::read_dir(dir) else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.path().join("vmlinuz").is_file())
        .filter_map(|e| {
            let meta = fs::read_to_string(e.path().join("package")).ok()?;
            let package = meta.split_whitespace().next()?.to_string();
            Some((e.file_name().to_string_lossy().into_owned(), package))
        })
        .collect()
}

/// The cached kernel `release`, downloading and unpacking `package` first if needed.
fn fetch(apt: &Apt, dir: &Path, release: &str, package: &str) -> anyhow::Result<Kernel> {
    let kdir = dir.join(release);
    let vmlinuz = kdir.join("vmlinuz");
    let meta = kdir.join("package");
    if let (true, Ok(m)) = (vmlinuz.is_file(), fs::read_to_string(&meta)) {
        let mut it = m.split_whitespace();
        let (p, v) = (it.next().unwrap_or(package), it.next().unwrap_or("?"));
        return Ok(Kernel {
            release: release.into(),
            package: p.into(),
            version: v.into(),
            families: vec![],
            vmlinuz,
        });
    }
    eprintln!("vm: downloading {package}");
    let work = dir.join(format!(".{release}.partial"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    apt.download(&[package.to_string()], &work)?;
    let deb = fs::read_dir(&work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb in {}", work.display()))?;
    let version = output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
    let tree = work.join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let image = find_vmlinuz(&tree)?.with_context(|| format!("{package} holds no vmlinuz"))?;
    let staged = work.join("out");
    fs::create_dir_all(&staged)?;
    fs::copy(&image, staged.join("vmlinuz"))?;
    // The kernel's config, when the package has it, documents what was booted.
    if let Ok(rd) = fs::read_dir(tree.join("boot")) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("config-") {
                fs::copy(e.path(), staged.join("config"))?;
            }
        }
    }
    fs::write(staged.join("package"), format!("{package} {version}\n"))?;
    let _ = fs::remove_dir_all(&kdir);
    fs::rename(&staged, &kdir).with_context(|| format!("moving the kernel into {}", kdir.display()))?;
    fs::remove_dir_all(&work)?;
    Ok(Kernel {
        release: release.into(),
        package: package.into(),
        version,
        families: vec![],
        vmlinuz: kdir.join("vmlinuz"),
    })
}

/// `boot/vmlinuz-*` (6.x packaging) or `usr/lib/modules/*/vmlinuz*` (7.x packaging).
fn find_vmlinuz(tree: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut stack = vec![tree.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?.flatten() {
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.file_name().to_string_lossy().starts_with("vmlinuz") {
                return Ok(Some(e.path()));
            }
        }
    }
    Ok(None)
}

/// The families named by `--kernel` (all when empty).
pub fn select(names: &[String]) -> anyhow::Result<Vec<&'static Family>> {
    if names.is_empty() {
        return Ok(FAMILIES.iter().collect());
    }
    let mut out = Vec::new();
    for n in names.iter().flat_map(|n| n.split(',')) {
        let Some(f) = FAMILIES.iter().find(|f| f.name == n) else {
            let known: Vec<String> = FAMILIES.iter().map(|f| format!("{} ({})", f.name, f.about)).collect();
            bail!("unknown kernel `{n}`; known: {}", known.join(", "));
        };
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_order_by_their_numbers() {
        let mut v = vec![
            "6.12.117+deb13-cloud-amd64",
            "6.1.0-9-cloud-amd64",
            "7.3.4+deb13-cloud-amd64",
            "6.12.115+deb13.1-cloud-amd64",
            "6.1.0-56-cloud-amd64",
            "6.12.115+deb13-cloud-amd64",
            "7.2.12+deb13-cloud-amd64",
        ];
        v.sort_by(|a, b| compare_releases(a, b));
        assert_eq!(
            v,
            [
                "6.1.0-9-cloud-amd64",
                "6.1.0-56-cloud-amd64",
                "6.12.115+deb13-cloud-amd64",
                "6.12.115+deb13.1-cloud-amd64",
                "6.12.117+deb13-cloud-amd64",
                "7.2.12+deb13-cloud-amd64",
                "7.3.4+deb13-cloud-amd64",
            ]
        );
    }

    #[test]
    fn package_names_map_to_releases_and_families() {
        assert_eq!(release_of("linux-image-6.1.0-56-cloud-amd64-unsigned"), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(
            release_of("linux-binary-unsigned-7.3.4+deb13-cloud-amd64"),
            Some("7.3.4+deb13-cloud-amd64")
        );
        assert_eq!(release_of("linux-image-cloud-amd64"), None);
        assert_eq!(release_of("linux-image-6.12.117+deb13-cloud-amd64-dbg"), None);
        let fam = |n: &str| FAMILIES.iter().find(|f| f.name == n).unwrap().matches;
        assert!(fam("6.1")("6.1.0-56-cloud-amd64"));
        assert!(!fam("6.1")("6.12.117+deb13-cloud-amd64"));
        assert!(fam("6.12")("6.12.117+deb13-cloud-amd64"));
        assert!(!fam("6.12")("6.12.117+deb12-cloud-amd64"));
        assert!(fam("newest")("7.3.4+deb13-cloud-amd64"));
    }
}
