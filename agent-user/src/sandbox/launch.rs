//! Starting a command inside a sandbox cgroup before its first instruction.
use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path};

use tokio::process::Command;

/// Makes `cmd` move itself into the cgroup whose `cgroup.procs` is `procs_file`
/// after fork and before exec, so the new program's first instruction already
/// runs inside the sandbox. If the move fails, the exec does not happen.
pub fn spawn_into_cgroup(cmd: &mut Command, procs_file: &Path) -> std::io::Result<()> {
    let path = CString::new(procs_file.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in cgroup path"))?;
    // SAFETY: the closure runs between fork and exec; it only makes raw syscalls
    // (open/write/close) on memory prepared before the fork, no allocation or locks.
    unsafe {
        cmd.pre_exec(move || {
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
            Ok(())
        });
    }
    Ok(())
}
