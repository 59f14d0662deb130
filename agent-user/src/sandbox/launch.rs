//! Starting a command inside a sandbox before its first instruction.
use std::{ffi::CString, os::unix::ffi::OsStrExt, path::PathBuf};

use tokio::process::Command;

use super::confine::Confinement;

/// Makes `cmd`, after fork and before exec, join every cgroup whose `cgroup.procs` is listed
/// (the sandbox, and a v1 pids twin where needed) and then apply `confine`, so the new
/// program's first instruction already runs inside the sandbox, confined. If any step fails,
/// the exec does not happen and spawning fails with that error.
pub fn spawn_into_cgroup(
    cmd: &mut Command,
    procs_files: &[PathBuf],
    mut confine: Option<Confinement>,
) -> std::io::Result<()> {
    let paths = procs_files
        .iter()
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in cgroup path"))?;
    // SAFETY: the closure runs between fork and exec; it only makes raw syscalls on memory
    // prepared before the fork (paths, the Landlock ruleset fd, the seccomp program).
    unsafe {
        cmd.pre_exec(move || {
            for path in &paths {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" means the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            if let Some(c) = confine.as_mut() {
                c.apply()?;
            }
            Ok(())
        });
    }
    Ok(())
}
