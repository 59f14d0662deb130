//! The guest's initramfs: static busybox, the test binaries and `warden` with the shared
//! libraries `ldd` lists for them, and an `/init` that runs them and powers off.
use std::{
    collections::BTreeMap,
    fs,
    io::BufWriter,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{cpio, protocol};

/// Where things go inside the guest.
pub const GUEST_WARDEN: &str = "/bin/warden";
pub const GUEST_TESTS_DIR: &str = "/tests";

/// What the guest runs.
pub struct Contents<'a> {
    pub busybox: &'a Path,
    pub warden: &'a Path,
    /// (name, host path) of each test binary, run in this order.
    pub tests: &'a [(String, PathBuf)],
    /// Programs the tests run by absolute host path; placed at that same path.
    pub helpers: &'a [PathBuf],
    /// Extra arguments for every test binary (after `--test-threads=1 --show-output --color=never`).
    pub test_args: &'a [String],
    /// `WARDEN_REQUIRE` in the guest.
    pub require: &'a str,
}

enum Node {
    Dir,
    File { perm: u32, source: PathBuf },
    Text { perm: u32, text: String },
    CharDev { major: u32, minor: u32 },
}

/// Writes the initramfs to `out` and returns its size in bytes.
pub fn build(c: &Contents<'_>, out: &Path) -> anyhow::Result<u64> {
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    for d in
        ["bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc", "lib64"]
    {
        tree.insert(d.into(), Node::Dir);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    tree.insert("dev/console".into(), Node::CharDev { major: 5, minor: 1 });
    tree.insert("bin/busybox".into(), Node::File { perm: 0o755, source: c.busybox.to_path_buf() });
    tree.insert("init".into(), Node::Text { perm: 0o755, text: init_script(c) });
    tree.insert(
        "etc/passwd".into(),
        Node::Text { perm: 0o644, text: "root:x:0:0:root:/root:/bin/sh\n".into() },
    );
    tree.insert("etc/group".into(), Node::Text { perm: 0o644, text: "root:x:0:\n".into() });

    let mut executables = vec![(GUEST_WARDEN.to_string(), c.warden.to_path_buf())];
    for (name, path) in c.tests {
        executables.push((format!("{GUEST_TESTS_DIR}/{name}"), path.clone()));
    }
    for path in c.helpers {
        executables.push((path.to_string_lossy().into_owned(), path.clone()));
    }
    for (guest, host) in &executables {
        for lib in shared_libraries(host)? {
            let key = lib.to_string_lossy().trim_start_matches('/').to_string();
            tree.insert(key, Node::File { perm: 0o755, source: lib });
        }
        tree.insert(guest.trim_start_matches('/').into(), Node::File { perm: 0o755, source: host.clone() });
    }

    // Every parent directory, so the archive unpacks without relying on entry order.
    let paths: Vec<String> = tree.keys().cloned().collect();
    for p in paths {
        let mut cur = Path::new(&p).parent();
        while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
            tree.entry(d.to_string_lossy().into_owned()).or_insert(Node::Dir);
            cur = d.parent();
        }
    }

    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir)?;
    }
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = cpio::Writer::new(BufWriter::new(file));
    for (name, node) in &tree {
        match node {
            Node::Dir => w.dir(name, 0o755)?,
            Node::File { perm, source } => {
                let data = fs::read(source).with_context(|| format!("reading {}", source.display()))?;
                w.file(name, *perm, &data)?;
            }
            Node::Text { perm, text } => w.file(name, *perm, text.as_bytes())?,
            Node::CharDev { major, minor } => w.char_device(name, 0o600, *major, *minor)?,
        }
    }
    w.finish()?;
    Ok(fs::metadata(out)?.len())
}

/// The shared libraries and the dynamic loader `ldd` lists for `binary` (none if static).
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
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
        // `linux-vdso.so.1 (0x...)` is provided by the kernel.
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
mnt tmpfs tmpfs /tmp
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
for t in {tests}; do
  echo "{m} test-begin $t"
  WARDEN_REQUIRE={require} WARDEN_BIN={warden} WARDEN_COVERAGE_OUT=/tmp/coverage.jsonl RUST_BACKTRACE=1 \
    {dir}/$t --test-threads=1 --show-output --color=never {args} 2>&1
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
        assert!(s.contains("for t in lsm; do"));
        assert!(s.contains("WARDEN_REQUIRE='bpf_lsm' WARDEN_BIN=/bin/warden"));
        assert!(s.contains("WARDEN_COVERAGE_OUT=/tmp/coverage.jsonl"));
        assert!(s.contains("/tests/$t --test-threads=1 --show-output --color=never 'exec_deny'"));
        assert!(s.ends_with("poweroff -f\n"));
    }
}
