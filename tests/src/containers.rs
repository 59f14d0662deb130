//! What the container tests (`kubernetes.rs` with runc, `containerd.rs` through CRI) share:
//! random ids as runtimes make them, the busybox-static root filesystem their images are
//! made of, and cgroup-tree removal.
use std::path::Path;

/// Debian's `busybox-static`.
pub const BUSYBOX: &str = "/bin/busybox";

/// `bytes` random bytes, hex: container ids (32) and pod UIDs (16) as runtimes make them.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n as usize, bytes);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A root filesystem of busybox-static at `rootfs`: `/bin/busybox` with the applets the
/// tests run, and `/opt/sh`, the same program as another file (busybox runs the applet its
/// name says: a shell) that no scope lists.
pub fn busybox_rootfs(rootfs: &Path) {
    for d in ["bin", "opt", "tmp", "proc", "dev", "sys", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dirs");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "cat", "echo", "ls", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet link");
    }
    std::fs::copy(BUSYBOX, rootfs.join("opt/sh")).expect("copy busybox");
}

/// Removes a cgroup tree, deepest first (cgroup directories go with rmdir only).
pub fn remove_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

/// The task ended because the container did: the runtime's poststop hook, or the daemon
/// seeing the container's cgroup empty, whichever came first.
pub fn ended_by_exit(end: &serde_json::Value) -> bool {
    end["reason"] == "container stopped" || end["reason"] == "exited"
}
