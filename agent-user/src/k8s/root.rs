//! A container's root filesystem, seen from the daemon: a scope bound to a container names
//! the container's files (`/bin/sh` is the image's shell, not the node's), so its paths are
//! resolved inside the container's root before the scope is compiled.
//!
//! Resolution is the kernel's: `openat2(RESOLVE_IN_ROOT)` from the root directory, so an
//! absolute symlink in the image (`/bin/sh -> /usr/bin/busybox`) and `..` stay inside the
//! root, as they do for the container's processes. The result is the file's path in the
//! daemon's mount namespace (from `/proc/self/fd`), which every later step can open.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
};

use crate::scope::Scope;

/// An open container root.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    /// The root's own path in the daemon's mount namespace.
    path: PathBuf,
}

/// Why a container root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("container root {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} inside the container root {root}: {source}")]
    Resolve { path: PathBuf, root: PathBuf, source: io::Error },
    #[error(
        "scope {scope}: issued secrets (secrets[].name) are not available to containers: their tmpfs is on the \
         node, outside the container; guard a file of the image with secrets[].path instead"
    )]
    IssuedSecrets { scope: PathBuf },
}

fn open_path(dirfd: i32, path: &Path, resolve: u64) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain integers; all zeros is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: `c` is a NUL-terminated string and `how` a valid open_how of the size passed;
    // the kernel returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            c.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

impl Root {
    /// Opens the root directory at `path` (a path in the daemon's mount namespace).
    pub fn open(path: &Path) -> Result<Self, RootError> {
        let err = |source| RootError::Open { path: path.to_path_buf(), source };
        let fd = open_path(libc::AT_FDCWD, path, 0).map_err(err)?;
        let path = fd_path(&fd).map_err(err)?;
        if !std::fs::metadata(&path).map_err(err)?.is_dir() {
            return Err(err(io::Error::from(io::ErrorKind::NotADirectory)));
        }
        Ok(Self { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the container's absolute path `p` is, in the daemon's mount namespace: the part
    /// that exists resolved inside the root (symlinks and `..` cannot leave it), the rest
    /// appended as written. A dangling symlink on the way is followed inside the root too,
    /// so the result never contains a link a later step could follow out of it.
    pub fn resolve(&self, p: &Path) -> Result<PathBuf, RootError> {
        self.resolve_at(p, p, 0)
    }

    fn resolve_at(&self, orig: &Path, p: &Path, depth: u32) -> Result<PathBuf, RootError> {
        if depth > 40 {
            return Err(self.err(orig, io::Error::from_raw_os_error(libc::ELOOP)));
        }
        let rel: PathBuf = p
            .components()
            .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_) | Component::CurDir))
            .collect();
        let mut existing = rel.clone();
        let mut rest: Vec<std::ffi::OsString> = Vec::new();
        let in_root = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        loop {
            let target = if existing.as_os_str().is_empty() { Path::new(".") } else { existing.as_path() };
            match open_path(self.fd.as_raw_fd(), target, in_root) {
                Ok(fd) => {
                    let mut out = fd_path(&fd).map_err(|source| self.err(orig, source))?;
                    // The kernel kept the walk inside the root; check it anyway, since the path
                    // is what later steps open.
                    if !out.starts_with(&self.path) {
                        return Err(self.err(orig, io::Error::other("resolved outside the container root")));
                    }
                    for r in rest.into_iter().rev() {
                        out.push(r);
                    }
                    return Ok(out);
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !existing.as_os_str().is_empty() => {
                    // A dangling symlink: follow its target inside the root.
                    if let Some(link) = self.link_target(&existing) {
                        let base = Path::new("/").join(&existing);
                        let mut next = match link.is_absolute() {
                            true => link,
                            false => base.parent().unwrap_or(Path::new("/")).join(link),
                        };
                        for r in rest.into_iter().rev() {
                            next.push(r);
                        }
                        return self.resolve_at(orig, &next, depth + 1);
                    }
                    // Everything below a missing name is missing too.
                    rest.push(existing.file_name().map(|n| n.to_os_string()).unwrap_or_default());
                    existing.pop();
                }
                Err(e) => return Err(self.err(orig, e)),
            }
        }
    }

    /// The target of `rel` (inside the root) if it is a symlink.
    fn link_target(&self, rel: &Path) -> Option<PathBuf> {
        let c = CString::new(rel.as_os_str().as_bytes()).ok()?;
        // SAFETY: zeroed open_how is its default.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: as in `open_path`.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a descriptor the kernel just returned.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: an O_PATH|O_NOFOLLOW descriptor and an empty path read the link itself into
        // `buf`, at most its length.
        let n = unsafe { libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(buf)))
    }

    fn err(&self, p: &Path, source: io::Error) -> RootError {
        RootError::Resolve { path: p.to_path_buf(), root: self.path.clone(), source }
    }

    /// The scope with every path it names resolved inside this root.
    pub fn place(&self, scope: &Scope) -> Result<Scope, RootError> {
        if scope.secrets.iter().any(|s| s.issue.is_some()) {
            return Err(RootError::IssuedSecrets { scope: scope.source.clone() });
        }
        let map = |v: &[PathBuf]| v.iter().map(|p| self.resolve(p)).collect::<Result<Vec<_>, _>>();
        let mut s = scope.clone();
        if let Some(v) = &scope.exec_allow {
            s.exec_allow = Some(map(v)?);
        }
        if let Some(v) = &scope.read {
            s.read = Some(map(v)?);
        }
        if let Some(v) = &scope.write {
            s.write = Some(map(v)?);
        }
        s.deny = map(&scope.deny)?;
        for sec in &mut s.secrets {
            sec.path = self.resolve(&sec.path)?;
            sec.tools = map(&sec.tools)?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn resolves_inside_the_root_and_never_out_of_it() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("usr/bin/busybox"), b"x").unwrap();
        // An image's absolute symlink means the image's file, not the node's.
        symlink("/usr/bin/busybox", root.join("bin/sh")).unwrap();
        // Climbing out of the root stays at the root.
        symlink("../../../../etc/shadow", root.join("bin/escape")).unwrap();
        let r = Root::open(&root).unwrap();
        assert_eq!(r.resolve(Path::new("/bin/sh")).unwrap(), root.join("usr/bin/busybox"));
        // A dangling link is followed inside the root, not left for a later step to follow
        // out of it.
        assert_eq!(r.resolve(Path::new("/bin/escape")).unwrap(), root.join("etc/shadow"));
        symlink("/etc/x", root.join("bin/abs-dangling")).unwrap();
        assert_eq!(r.resolve(Path::new("/bin/abs-dangling/y")).unwrap(), root.join("etc/x/y"));
        symlink("loop", root.join("bin/loop")).unwrap();
        assert!(r.resolve(Path::new("/bin/loop")).is_err());
        assert_eq!(r.resolve(Path::new("/../../usr/bin/busybox")).unwrap(), root.join("usr/bin/busybox"));
        // Missing paths keep their tail (a deny of a file not created yet).
        assert_eq!(r.resolve(Path::new("/bin/sh-not-yet/x")).unwrap(), root.join("bin/sh-not-yet/x"));
        assert_eq!(r.resolve(Path::new("/")).unwrap(), root);
    }

    #[test]
    fn places_every_path_of_a_scope() {
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/busybox"), b"x").unwrap();
        symlink("busybox", root.join("bin/sh")).unwrap();
        let text = "version: 1\ntask: t\nexec:\n  allow: [/bin/sh]\nfiles:\n  read: [/bin]\n  write: [/tmp]\n  deny: [/secret]\n";
        let s = Scope::parse(text, Path::new("t.yaml")).unwrap();
        let placed = Root::open(&root).unwrap().place(&s).unwrap();
        assert_eq!(placed.exec_allow, Some(vec![root.join("bin/busybox")]));
        assert_eq!(placed.read, Some(vec![root.join("bin")]));
        assert_eq!(placed.write, Some(vec![root.join("tmp")]));
        assert_eq!(placed.deny, vec![root.join("secret")]);
        let issued = "version: 1\ntask: t\nsecrets:\n  - name: tok\n    from: file:/etc/hostname\n    tools: [/bin/sh]\n";
        let s = Scope::parse(issued, Path::new("t.yaml")).unwrap();
        assert!(matches!(Root::open(&root).unwrap().place(&s), Err(RootError::IssuedSecrets { .. })));
    }
}
