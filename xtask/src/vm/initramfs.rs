//! The guest's initramfs: static busybox (for `/init` itself), `warden` and the test
//! binaries, a declared set of host programs and python3's standard library at their host
//! paths (with the shared libraries `ldd` lists and every symbolic link on the way, see
//! [`tree`]), and an `/init` that runs the tests and powers off.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{
    protocol,
    tree::{Node, Tree},
};

/// Where things go inside the guest.
pub const GUEST_WARDEN: &str = "/bin/warden";
pub const GUEST_TESTS_DIR: &str = "/tests";
/// The kernel command line parameter (`warden.tests=lsm,lifecycle`) that names the test
/// binaries one guest runs, of those the initramfs carries: one initramfs serves every kernel
/// of the matrix. Without it, the guest runs them all. (A dotted name is a module parameter to
/// the kernel: an unknown one is ignored, not handed to `/init`.)
pub const TESTS_PARAM: &str = "warden.tests";
/// Busybox runs `/init` and its applets fill in what [`HOST_PROGRAMS`] leaves out. It is not
/// `/bin/sh`: busybox applets are one inode, which exec-identity scenarios cannot tell apart.
pub const GUEST_BUSYBOX: &str = "/bin/busybox";

/// Host programs the tests run by absolute path, copied at their host paths: the shell
/// (`/bin/sh` resolves to the host's dash, with the link kept), the tools the scope
/// scenarios call, each its own file as on the host, and dnsmasq.
pub const HOST_PROGRAMS: &[&str] = &[
    "/bin/sh",
    "/usr/bin/cat",
    "/usr/bin/ls",
    "/usr/bin/sed",
    "/usr/bin/sleep",
    "/usr/bin/true",
    "/usr/bin/wc",
    "/usr/bin/id",
    "/usr/bin/setsid",
    "/usr/bin/uname",
    "/usr/bin/head",
    "/usr/bin/rm",
    "/usr/bin/mktemp",
    // The boundary scenarios: exec identity (cp, mv) and the task's own terminal.
    "/usr/bin/cp",
    "/usr/bin/mv",
    "/usr/bin/stty",
    "/usr/bin/tty",
    "/usr/bin/stat",
    PYTHON,
    DNSMASQ,
];
/// The real DNS server the egress-by-name tests (`tests/tests/dns.rs`) start on loopback, the
/// same binary as in the host tier (`dnsmasq-base`), so both engines are judged against it.
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// The python3 whose standard library (`/usr/lib/<its real name>`) comes along.
pub const PYTHON: &str = "/usr/bin/python3";
/// Standard library directories no scenario imports.
const STDLIB_SKIP_DIRS: &[&str] =
    &["test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "site-packages"];
/// Extension modules (`lib-dynload/<name>.cpython-*.so`) left out, with the libraries only
/// they need: CPython's own test modules, databases, terminals and audio.
const STDLIB_SKIP_MODULES: &[&str] = &[
    "_ctypes_test",
    "_testbuffer",
    "_testcapi",
    "_testclinic",
    "_testimportmultiple",
    "_testinternalcapi",
    "_testmultiphase",
    "_xxsubinterpreters",
    "_xxtestfuzz",
    "xxlimited",
    "xxlimited_35",
    "_crypt",
    "_curses",
    "_curses_panel",
    "_dbm",
    "_sqlite3",
    "audioop",
    "nis",
    "ossaudiodev",
    "readline",
];

/// What the guest runs.
pub struct Contents<'a> {
    pub busybox: &'a Path,
    pub warden: &'a Path,
    /// (name, host path) of each test binary, run in this order (those [`TESTS_PARAM`] names).
    pub tests: &'a [(String, PathBuf)],
    /// Programs the tests run by absolute host path; placed at that same path.
    pub helpers: &'a [PathBuf],
    /// Extra arguments for every test binary (after `--test-threads=1 --show-output --color=never`).
    pub test_args: &'a [String],
    /// `WARDEN_REQUIRE` in the guest.
    pub require: &'a str,
}

/// Writes the initramfs to `out` and returns its size in bytes.
pub fn build(c: &Contents<'_>, out: &Path) -> anyhow::Result<u64> {
    let mut tree = Tree::new();
    // Host paths first: their links (`/bin` -> `usr/bin` on merged-/usr hosts) decide where
    // the fixed entries below land.
    for p in HOST_PROGRAMS {
        tree.copy_program(Path::new(p)).with_context(|| format!("copying {p} into the initramfs"))?;
    }
    add_python_stdlib(&mut tree)?;
    for path in c.helpers {
        tree.copy_program(path)?;
    }

    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc"] {
        tree.insert(d, Node::Dir)?;
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    tree.insert("dev/console", Node::CharDev { major: 5, minor: 1 })?;
    tree.place_program(GUEST_BUSYBOX, c.busybox)?;
    tree.insert("init", Node::Text { perm: 0o755, text: init_script(c) })?;
    let text = |perm: u32, t: &str| Node::Text { perm, text: t.to_string() };
    tree.insert("etc/passwd", text(0o644, "root:x:0:0:root:/root:/bin/sh\n"))?;
    tree.insert("etc/group", text(0o644, "root:x:0:\n"))?;
    tree.insert("etc/hostname", text(0o644, "warden-vm\n"))?;
    // A credential file for the protected-defaults scenarios to be refused.
    tree.insert("etc/shadow", text(0o640, "root:*:20000:0:99999:7:::\n"))?;

    tree.place_program(GUEST_WARDEN, c.warden)?;
    for (name, path) in c.tests {
        tree.place_program(&format!("{GUEST_TESTS_DIR}/{name}"), path)?;
    }
    tree.write(out)
}

/// python3's standard library, `__pycache__` included: the cached bytecode must be there
/// (with the sources' host mtimes, which the archive keeps) or python would try to write it,
/// and a scope that does not grant writing `/usr` would refuse (and record) that.
fn add_python_stdlib(tree: &mut Tree) -> anyhow::Result<()> {
    let python = std::fs::canonicalize(PYTHON).with_context(|| format!("{PYTHON} (python3 on the host)"))?;
    let name = python.file_name().context("python3 has no file name")?;
    let stdlib = Path::new("/usr/lib").join(name);
    let dynload = stdlib.join("lib-dynload");
    let skip = |p: &Path| {
        let file = p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        match p.parent() {
            Some(d) if d == stdlib => STDLIB_SKIP_DIRS.contains(&&*file) || file.starts_with("config-"),
            Some(d) if d == dynload => {
                let module = file.split('.').next().unwrap_or_default();
                STDLIB_SKIP_MODULES.contains(&module)
            }
            _ => false,
        }
    };
    tree.copy_host_dir(&stdlib, &skip).with_context(|| format!("copying {}", stdlib.display()))?;
    for e in std::fs::read_dir(&dynload)?.flatten() {
        let p = e.path();
        if !skip(&p) && p.extension().is_some_and(|x| x == "so") {
            tree.copy_program(&p)?;
        }
    }
    Ok(())
}

/// The guest's `/init` (busybox sh). Everything it reports goes to the serial console as
/// [`protocol`] markers, which the host parses.
fn init_script(c: &Contents<'_>) -> String {
    let m = protocol::MARKER;
    let tests: Vec<&str> = c.tests.iter().map(|(n, _)| n.as_str()).collect();
    let args = c.test_args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp
mnt() {{ mkdir -p "$3"; mount -t "$1" "$2" "$3" || echo "{m} mount-failed $1 $3"; }}
mnt proc proc /proc
mnt sysfs sysfs /sys
mnt devtmpfs devtmpfs /dev
# Ptys for the tests that drive interactive tasks (devtmpfs's /dev/ptmx opens this instance).
mnt devpts devpts /dev/pts
# /tmp stays the initramfs root's own (writable) directory: a tmpfs over it would hide the
# test programs packed at their host paths when the checkout lives under /tmp.
mkdir -p /tmp && chmod 1777 /tmp
mnt securityfs securityfs /sys/kernel/security
mnt bpf bpf /sys/fs/bpf
mnt cgroup2 cgroup2 /sys/fs/cgroup
mnt tracefs tracefs /sys/kernel/tracing
ip link set lo up || echo "{m} loopback-failed"
# Only emergencies on the console from here on, so kernel messages do not cut into test output.
dmesg -n 1
echo "{m} init kernel=$(uname -r) lsm=$(cat /sys/kernel/security/lsm 2>/dev/null)"
echo "{m} probe-begin"
{warden} probe --json 2>/tmp/probe.err
rc=$?
echo "{m} probe-end status=$rc"
[ $rc -eq 0 ] || cat /tmp/probe.err
overall=0
tests="{tests}"
for p in $(cat /proc/cmdline); do
  case "$p" in {param}=*) tests=$(echo "${{p#{param}=}}" | tr , ' ') ;; esac
done
for t in $tests; do
  echo "{m} test-begin $t"
  # stdin is not the console: tests are not interactive (as in CI), and a process that
  # inherits stdio does not take the console for a user's terminal.
  WARDEN_REQUIRE={require} WARDEN_BIN={warden} WARDEN_COVERAGE_OUT=/tmp/coverage.jsonl RUST_BACKTRACE=1 \
    {dir}/$t --test-threads=1 --show-output --color=never {args} </dev/null 2>&1
  rc=$?
  echo "{m} test-end $t status=$rc"
  [ $rc -eq 0 ] || overall=1
done
if [ -s /tmp/coverage.jsonl ]; then
  echo "{m} coverage-begin"
  cat /tmp/coverage.jsonl
  echo "{m} coverage-end"
fi
if [ $overall -ne 0 ]; then
  echo "{m} dmesg-begin"
  dmesg
  echo "{m} dmesg-end"
fi
echo "{m} done status=$overall"
sync
poweroff -f
"#,
        warden = GUEST_WARDEN,
        dir = GUEST_TESTS_DIR,
        tests = tests.join(" "),
        param = TESTS_PARAM,
        require = shell_quote(c.require),
    )
}

/// Single-quotes `s` for sh.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_runs_each_test_binary_with_the_required_features() {
        let tests = [("lsm".to_string(), PathBuf::from("/x/lsm-123"))];
        let args = ["exec_deny".to_string()];
        let c = Contents {
            busybox: Path::new("/bin/busybox"),
            warden: Path::new("/x/warden"),
            tests: &tests,
            helpers: &[],
            test_args: &args,
            require: "bpf_lsm",
        };
        let s = init_script(&c);
        assert!(s.contains("tests=\"lsm\"\n"));
        assert!(s.contains("warden.tests=*) tests=$(echo \"${p#warden.tests=}\" | tr , ' ')"));
        assert!(s.contains("for t in $tests; do"));
        assert!(s.contains("WARDEN_REQUIRE='bpf_lsm' WARDEN_BIN=/bin/warden"));
        assert!(s.contains("WARDEN_COVERAGE_OUT=/tmp/coverage.jsonl"));
        assert!(s.contains("/tests/$t --test-threads=1 --show-output --color=never 'exec_deny'"));
        assert!(s.ends_with("poweroff -f\n"));
    }
}
