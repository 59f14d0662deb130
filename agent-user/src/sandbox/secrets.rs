//! Ephemeral secrets: per-task copies on a per-task tmpfs, destroyed at task end.
//!
//! `<root>/<task>/` is a tmpfs of its own (never written to disk, gone with the mount). Each
//! issued secret is copied there as `<name>`, mode 0400. Which processes of the sandbox may
//! open it is the scope's business (the kernel engines judge it like any guarded secret);
//! this module only issues and destroys. Values never leave this module: callers get paths
//! and SHA-256 digests.
use std::{
    fs,
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::scope::Scope;

/// Largest value a secret may have.
pub const MAX_SECRET_BYTES: u64 = 1 << 20;

/// Errors issuing or destroying secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}`: cannot read its source {from}: {source}")]
    Source { name: String, from: PathBuf, source: io::Error },
    #[error("secret `{name}`: its source {from} is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge { name: String, from: PathBuf },
    #[error("secrets directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot mount a tmpfs for secrets on {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
}

/// One issued secret, as the rest of Warden may see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IssuedInfo {
    pub name: String,
    /// The per-task file.
    pub path: PathBuf,
    /// The environment variable that names `path` inside the task.
    pub env: String,
    /// SHA-256 of the value (hex): what logs and records carry instead of the value.
    pub sha256: String,
    /// Value length in bytes (the overwrite at destruction covers it).
    pub len: u64,
}

/// The issued secrets of one task.
#[derive(Debug)]
pub struct IssuedSecrets {
    dir: PathBuf,
    pub issued: Vec<IssuedInfo>,
    destroyed: bool,
}

impl IssuedSecrets {
    /// The per-task directory under `root`.
    pub fn dir_for(root: &Path, task: &str) -> PathBuf {
        root.join(task)
    }

    /// Mounts the task's tmpfs and copies every issued secret of `scope` into it. On any
    /// failure, whatever was issued is destroyed again before the error is returned.
    pub fn issue(root: &Path, task: &str, scope: &Scope) -> Result<Self, SecretError> {
        let dir = Self::dir_for(root, task);
        let dir_err = |p: &Path| {
            let p = p.to_path_buf();
            move |source| SecretError::Dir { path: p, source }
        };
        fs::DirBuilder::new().recursive(true).mode(0o711).create(root).map_err(dir_err(root))?;
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(dir_err(&dir))?;
        let mut me = Self { dir: dir.clone(), issued: Vec::new(), destroyed: false };
        let total: u64 = scope
            .secrets
            .iter()
            .filter_map(|s| s.issue.as_ref().and_then(|i| i.file()))
            .map(|from| fs::metadata(from).map(|m| m.len()).unwrap_or(0).min(MAX_SECRET_BYTES))
            .sum();
        let size = (total + 64 * 1024).next_multiple_of(4096);
        if let Err(e) = nix::mount::mount(
            Some("warden-secrets"),
            &dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            Some(format!("size={size},mode=0711").as_str()),
        ) {
            let _ = fs::remove_dir(&dir);
            return Err(SecretError::Mount { path: dir, source: io::Error::from(e) });
        }
        for s in &scope.secrets {
            let Some(i) = &s.issue else { continue };
            let Some(from) = i.file() else { continue };
            if let Err(e) = me.copy_one(&i.name, from, &i.env) {
                let _ = me.destroy();
                return Err(e);
            }
        }
        Ok(me)
    }

    fn copy_one(&mut self, name: &str, from: &Path, env: &str) -> Result<(), SecretError> {
        let src_err = |source| SecretError::Source { name: name.into(), from: from.into(), source };
        let f = fs::File::open(from).map_err(src_err)?;
        let mut value = Vec::new();
        f.take(MAX_SECRET_BYTES + 1).read_to_end(&mut value).map_err(src_err)?;
        if value.len() as u64 > MAX_SECRET_BYTES {
            value.fill(0);
            return Err(SecretError::TooLarge { name: name.into(), from: from.into() });
        }
        let path = self.dir.join(name);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut out| out.write_all(&value));
        let sha256 = hex::encode(Sha256::digest(&value));
        let len = value.len() as u64;
        value.fill(0);
        written.map_err(|source| SecretError::Dir { path: path.clone(), source })?;
        self.issued.push(IssuedInfo { name: name.into(), path, env: env.into(), sha256, len });
        Ok(())
    }

    /// Takes over the secrets a previous daemon issued for `task` (after a restart).
    pub fn adopt(root: &Path, task: &str, issued: Vec<IssuedInfo>) -> Self {
        Self { dir: Self::dir_for(root, task), issued, destroyed: false }
    }

    /// The per-task directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Overwrites every value with zeros, unlinks it, unmounts the tmpfs and removes the
    /// directory. Safe to call twice; a missing file is not an error. Returns the first
    /// error, after trying every step.
    pub fn destroy(&mut self) -> Result<(), SecretError> {
        if self.destroyed {
            return Ok(());
        }
        let mut first: Option<SecretError> = None;
        for s in &self.issued {
            if let Err(e) = overwrite_and_unlink(&s.path, s.len) {
                first.get_or_insert(SecretError::Dir { path: s.path.clone(), source: e });
            }
        }
        match nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                first.get_or_insert(SecretError::Mount { path: self.dir.clone(), source: e.into() });
            }
        }
        match fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                first.get_or_insert(SecretError::Dir { path: self.dir.clone(), source: e });
            }
            _ => {}
        }
        self.destroyed = true;
        first.map_or(Ok(()), Err)
    }
}

fn overwrite_and_unlink(path: &Path, len: u64) -> io::Result<()> {
    match fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(path) {
        Ok(mut f) => {
            let n = f.metadata().map(|m| m.len()).unwrap_or(len).max(len);
            f.write_all(&vec![0u8; n as usize])?;
            f.sync_all()?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(text: &str) -> Scope {
        Scope::parse(text, Path::new("s.yaml")).unwrap()
    }

    #[test]
    fn issued_secrets_are_placed_under_the_task_dir() {
        let mut s = scope(
            "version: 1\ntask: t\nsecrets:\n  - name: gh-token\n    from: file:/etc/hostname\n    tools: [/usr/bin/git]\n",
        );
        assert!(s.has_issued_secrets());
        let i = s.secrets[0].issue.clone().unwrap();
        assert_eq!(i.env, "WARDEN_SECRET_GH_TOKEN");
        assert_eq!(i.file(), Some(Path::new("/etc/hostname")));
        s.place_issued_secrets(Path::new("/run/warden/secrets/t-1"));
        assert_eq!(s.secrets[0].path, PathBuf::from("/run/warden/secrets/t-1/gh-token"));
    }

    #[test]
    fn secret_forms_are_exclusive() {
        for bad in [
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    path: /x\n    from: file:/y\n    tools: [/bin/sh]\n",
            "version: 1\ntask: t\nsecrets:\n  - tools: [/bin/sh]\n",
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    from: /y\n    tools: [/bin/sh]\n",
            "version: 1\ntask: t\nsecrets:\n  - path: /x\n    env: X\n    tools: [/bin/sh]\n",
            "version: 1\ntask: t\nsecrets:\n  - name: a\n    from: file:/y\n    tools: [/bin/sh]\n  - name: a\n    from: file:/z\n    tools: [/bin/sh]\n",
        ] {
            assert!(Scope::parse(bad, Path::new("s.yaml")).is_err(), "{bad}");
        }
    }

    #[test]
    fn overwrite_then_unlink() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        fs::write(&p, b"hunter2").unwrap();
        overwrite_and_unlink(&p, 7).unwrap();
        assert!(!p.exists());
        overwrite_and_unlink(&p, 7).unwrap();
    }
}
