//! The guest's file tree, built before it is written as a cpio archive: host files are placed
//! at their host paths with every symbolic link met on the way (`/bin` → `usr/bin`,
//! `/bin/sh` → `dash`, `/lib64/ld-linux-x86-64.so.2` → `../lib/...`), so the guest resolves
//! paths exactly as the host does, and names that are one file on the host are one inode in
//! the guest.
use std::{
    collections::BTreeMap,
    fs,
    io::BufWriter,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::cpio;

/// Symbolic links followed while resolving one path (as the kernel's own limit).
const MAX_LINKS: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    /// A host file: its permission bits and modification time are kept.
    File {
        perm: u32,
        mtime: u32,
        source: PathBuf,
    },
    Text {
        perm: u32,
        text: String,
    },
    Symlink {
        target: String,
    },
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// Guest paths (relative to `/`, no symbolic link among their parents) → what is there.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// The normal components of an absolute or relative path (`.` dropped, `..` kept).
fn components(p: &str) -> Vec<String> {
    Path::new(p)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    fn get(&self, guest: &str) -> Option<&Node> {
        self.nodes.get(&self.resolve_parents(guest).ok()?)
    }

    /// `guest` with the symbolic links the tree holds among its parents followed (the last
    /// component is not followed), as a key.
    fn resolve_parents(&self, guest: &str) -> anyhow::Result<String> {
        let mut todo: Vec<String> = components(guest);
        todo.reverse();
        let mut cur: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            cur.push(c);
            if todo.is_empty() {
                break;
            }
            if let Some(Node::Symlink { target }) = self.nodes.get(&cur.join("/")) {
                links += 1;
                if links > MAX_LINKS {
                    bail!("{guest}: too many levels of symbolic links in the guest tree");
                }
                cur.pop();
                if target.starts_with('/') {
                    cur.clear();
                }
                todo.extend(components(target).into_iter().rev());
            }
        }
        Ok(cur.join("/"))
    }

    /// Puts `node` at `guest` (parents resolved through the tree's links). A directory never
    /// replaces anything; anything else replaces only the same kind of node.
    pub fn insert(&mut self, guest: &str, node: Node) -> anyhow::Result<()> {
        let key = self.resolve_parents(guest)?;
        if key.is_empty() {
            bail!("{guest}: cannot replace the root");
        }
        match (self.nodes.get(&key), &node) {
            (Some(_), Node::Dir) => {}
            (Some(old), new) if std::mem::discriminant(old) != std::mem::discriminant(new) => {
                bail!("/{key}: {new:?} would replace {old:?}")
            }
            _ => {
                self.nodes.insert(key, node);
            }
        }
        Ok(())
    }

    /// Copies the host file at `host` to the same path in the guest, with each symbolic link
    /// met on the way (in any component). Returns the host path it resolves to.
    pub fn copy_host_path(&mut self, host: &Path) -> anyhow::Result<PathBuf> {
        let mut todo = components(&host.to_string_lossy());
        todo.reverse();
        let mut cur = PathBuf::from("/");
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&c);
            let md = fs::symlink_metadata(&next).with_context(|| format!("{}", next.display()))?;
            if md.file_type().is_symlink() {
                links += 1;
                if links > MAX_LINKS {
                    bail!("{}: too many levels of symbolic links", host.display());
                }
                let target = fs::read_link(&next)?;
                let target_text = target.to_string_lossy().into_owned();
                self.insert(&next.to_string_lossy(), Node::Symlink { target: target_text.clone() })?;
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                todo.extend(components(&target_text).into_iter().rev());
                continue;
            }
            cur = next;
            if todo.is_empty() {
                if md.is_file() {
                    let node = Node::File {
                        perm: md.mode() & 0o7777,
                        mtime: u32::try_from(md.mtime()).unwrap_or(0),
                        source: cur.clone(),
                    };
                    self.insert(&cur.to_string_lossy(), node)?;
                } else if md.is_dir() {
                    self.insert(&cur.to_string_lossy(), Node::Dir)?;
                } else {
                    bail!("{}: neither a file, a directory nor a symbolic link", cur.display());
                }
            }
        }
        Ok(cur)
    }

    /// Copies an executable (or shared object) and every shared library and the ELF
    /// interpreter `ldd` lists for it, each at its host path.
    pub fn copy_program(&mut self, host: &Path) -> anyhow::Result<PathBuf> {
        let real = self.copy_host_path(host)?;
        for lib in shared_libraries(&real)? {
            self.copy_host_path(&lib)?;
        }
        Ok(real)
    }

    /// Puts a host file at another guest path (no links mirrored), with its libraries at
    /// their host paths.
    pub fn place_program(&mut self, guest: &str, host: &Path) -> anyhow::Result<()> {
        let md = fs::metadata(host).with_context(|| format!("{}", host.display()))?;
        let node = Node::File {
            perm: md.mode() & 0o7777,
            mtime: u32::try_from(md.mtime()).unwrap_or(0),
            source: host.to_path_buf(),
        };
        self.insert(guest, node)?;
        for lib in shared_libraries(host)? {
            self.copy_host_path(&lib)?;
        }
        Ok(())
    }

    /// Copies the host directory `root` recursively (links kept as links; a link's target
    /// comes along when it is a file), leaving out entries `skip` names. Returns the number
    /// of files copied.
    pub fn copy_host_dir(&mut self, root: &Path, skip: &dyn Fn(&Path) -> bool) -> anyhow::Result<usize> {
        let root = self.copy_host_path(root)?;
        let mut files = 0;
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
                .with_context(|| format!("{}", dir.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            entries.sort();
            for p in entries {
                if skip(&p) {
                    continue;
                }
                let md = fs::symlink_metadata(&p)?;
                if md.file_type().is_symlink() {
                    let target = fs::read_link(&p)?;
                    self.insert(
                        &p.to_string_lossy(),
                        Node::Symlink { target: target.to_string_lossy().into() },
                    )?;
                    if fs::metadata(&p).is_ok_and(|m| m.is_file()) {
                        self.copy_host_path(&fs::canonicalize(&p)?)?;
                    }
                } else if md.is_dir() {
                    self.insert(&p.to_string_lossy(), Node::Dir)?;
                    stack.push(p);
                } else if md.is_file() {
                    self.copy_host_path(&p)?;
                    files += 1;
                }
            }
        }
        Ok(files)
    }

    /// Adds every missing parent directory, so the archive unpacks whatever the entry order.
    fn add_parents(&mut self) {
        let keys: Vec<String> = self.nodes.keys().cloned().collect();
        for k in keys {
            let mut cur = Path::new(&k).parent();
            while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
                self.nodes.entry(d.to_string_lossy().into_owned()).or_insert(Node::Dir);
                cur = d.parent();
            }
        }
    }

    /// Writes the tree as a newc cpio archive; returns its size in bytes.
    pub fn write(mut self, out: &Path) -> anyhow::Result<u64> {
        self.add_parents();
        if let Some(dir) = out.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = cpio::Writer::new(BufWriter::new(file));
        // Sorted keys: a directory comes before what it holds.
        for (name, node) in &self.nodes {
            match node {
                Node::Dir => w.dir(name, 0o755)?,
                Node::File { perm, mtime, source } => {
                    let data = fs::read(source).with_context(|| format!("reading {}", source.display()))?;
                    w.file(name, *perm, *mtime, &data)?;
                }
                Node::Text { perm, text } => w.file(name, *perm, 0, text.as_bytes())?,
                Node::Symlink { target } => w.symlink(name, target)?,
                Node::CharDev { major, minor } => w.char_device(name, 0o600, *major, *minor)?,
            }
        }
        w.finish()?;
        Ok(fs::metadata(out)?.len())
    }
}

/// The shared libraries and the dynamic loader `ldd` lists for `binary` (none if static).
pub fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .with_context(|| format!("running ldd {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits 1 with "not a dynamic executable" for static binaries.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {err}", binary.display());
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("missing shared library: {line}");
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`;
        // `linux-vdso.so.1 (0x...)` is provided by the kernel; `statically linked` has no path.
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn host_paths_keep_their_links() {
        // A merged-/usr layout in miniature: bin -> usr/bin, usr/bin/sh -> dash,
        // usr/lib64/ld.so -> ../lib/x/ld.so, and an absolute link.
        let d = tempfile_dir();
        let r = d.as_path();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::create_dir_all(r.join("usr/lib/x")).unwrap();
        fs::create_dir_all(r.join("usr/lib64")).unwrap();
        fs::write(r.join("usr/bin/dash"), "dash").unwrap();
        fs::write(r.join("usr/lib/x/ld.so"), "ld").unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        symlink("dash", r.join("usr/bin/sh")).unwrap();
        symlink("../lib/x/ld.so", r.join("usr/lib64/ld.so")).unwrap();
        symlink(r.join("usr/bin/dash"), r.join("usr/bin/abs")).unwrap();

        let mut t = Tree::new();
        let real = t.copy_host_path(&r.join("bin/sh")).unwrap();
        assert_eq!(real, r.join("usr/bin/dash"));
        t.copy_host_path(&r.join("usr/lib64/ld.so")).unwrap();
        t.copy_host_path(&r.join("usr/bin/abs")).unwrap();
        let key = |p: &str| r.join(p).to_string_lossy().trim_start_matches('/').to_string();
        assert_eq!(t.nodes.get(&key("bin")), Some(&Node::Symlink { target: "usr/bin".into() }));
        assert_eq!(t.nodes.get(&key("usr/bin/sh")), Some(&Node::Symlink { target: "dash".into() }));
        assert!(matches!(t.nodes.get(&key("usr/bin/dash")), Some(Node::File { .. })));
        assert!(matches!(t.nodes.get(&key("usr/lib/x/ld.so")), Some(Node::File { .. })));
        assert_eq!(
            t.nodes.get(&key("usr/lib64/ld.so")),
            Some(&Node::Symlink { target: "../lib/x/ld.so".into() })
        );
        // Paths through a link land where the link points.
        let through = r.join("bin/new").to_string_lossy().into_owned();
        t.insert(&through, Node::Text { perm: 0o644, text: String::new() }).unwrap();
        assert!(t.nodes.contains_key(&key("usr/bin/new")));
        assert!(t.get(&through).is_some());
        // A directory never replaces a link.
        t.insert(&r.join("bin").to_string_lossy(), Node::Dir).unwrap();
        assert_eq!(t.nodes.get(&key("bin")), Some(&Node::Symlink { target: "usr/bin".into() }));
        fs::remove_dir_all(r).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-tree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::canonicalize(&d).unwrap()
    }
}
