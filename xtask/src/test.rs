//! `cargo xtask test`: the unit tier, the host tier (privileged, this kernel) and
//! the VM tier (stock kernels with BPF LSM under qemu); then the coverage matrix is
//! regenerated from what the privileged tiers observed.
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::util::{self, build_warden, cargo, is_root};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// Pure logic: parsers, decoders, compilers (no privileges).
    Unit,
    /// Real programs on this machine's kernel, in throwaway cgroups (root).
    Host,
    /// BPF LSM on stock Debian kernels under qemu.
    Vm,
}

pub fn run(tiers: &[Tier]) -> anyhow::Result<()> {
    let all = tiers.is_empty();
    let want = |t| all || tiers.contains(&t);
    let t0 = Instant::now();
    let mut times = Times::default();
    if (want(Tier::Host) || want(Tier::Vm)) && !is_root() {
        bail!("the host and VM tiers load BPF programs and create cgroups: run them as root");
    }
    if want(Tier::Host) {
        // Before the VM tier starts: it installs packages too, and apt takes one at a time.
        ensure_host_packages()?;
    }
    if want(Tier::Vm) && !want(Tier::Unit) && !want(Tier::Host) {
        crate::vm::run(crate::vm::VmArgs::default())?;
        times.add("vm", t0);
    } else {
        // The VM tier runs from the start, beside everything else: its guests are CPU-bound
        // (TCG) and its build is optimized (nothing the other tiers build), while the lint and
        // unit tiers' cargo runs leave cores idle in their serial stretches and the host tier's
        // tests mostly wait on the processes they start. Its cargo runs build the release
        // profile, the others' the debug one: cargo locks each profile's directory on its own,
        // so neither waits for the other.
        let vm = if want(Tier::Vm) { Some(BackgroundVm::start()?) } else { None };
        // A lint, unit or build failure stops the VM tier (dropping it kills it); a host test
        // failure does not: both tiers' results are worth having.
        if want(Tier::Unit) {
            lint_and_unit(&mut times)?;
        }
        let host = if want(Tier::Host) { Some(host_tier(&mut times)?) } else { None };
        let vm = vm.map(|vm| {
            let r = vm.finish();
            times.add("vm (from the start, beside the others)", t0);
            r
        });
        if let Some(host) = host {
            host?;
        }
        if let Some(vm) = vm {
            vm?;
        }
    }
    if want(Tier::Host) || want(Tier::Vm) {
        let n = crate::coverage::generate(&util::workspace_root())?;
        eprintln!("coverage: {n} cells observed; docs/coverage.md regenerated");
    }
    times.print(t0);
    Ok(())
}

/// How long each part of the suite took, printed at the end.
#[derive(Default)]
struct Times(Vec<(String, Duration)>);

impl Times {
    fn add(&mut self, what: &str, since: Instant) {
        self.0.push((what.to_string(), since.elapsed()));
    }

    fn print(&self, t0: Instant) {
        let parts: Vec<String> = self.0.iter().map(|(w, d)| format!("{w} {:.0}s", d.as_secs_f64())).collect();
        println!("suite: {:.0}s in all ({})", t0.elapsed().as_secs_f64(), parts.join(", "));
    }
}

/// Lint (formatting, clippy for the host and for the eBPF target, the deployment files), then
/// the unit tests.
fn lint_and_unit(times: &mut Times) -> anyhow::Result<()> {
    let t = Instant::now();
    // Lint first: formatting, then clippy (the eBPF crate cannot be linted for the host).
    util::run(cargo().args(["fmt", "--all", "--check"]))?;
    util::run(
        cargo()
            .args(["clippy", "--workspace", "--exclude", "agent-ebpf", "--all-targets"])
            .args(["--", "-D", "warnings"]),
    )?;
    // The eBPF crate, for its own target with the toolchain that builds it (both feature
    // sets: production objects and the test hooks).
    crate::setup::ensure_ebpf_clippy()?;
    for features in [&[][..], &["--features", "test-hooks"][..]] {
        util::run(
            std::process::Command::new("rustup")
                .current_dir(util::workspace_root())
                .args([
                    "run",
                    crate::setup::EBPF_TOOLCHAIN,
                    "cargo",
                    "clippy",
                    "-p",
                    "agent-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                ])
                .args(features)
                .arg("--target-dir")
                .arg(util::target_dir().join("ebpf-clippy"))
                .args(["--", "-D", "warnings"]),
        )?;
    }
    // The deployment files: the chart, its rendering, the Kubernetes schemas.
    crate::k8s::run(false)?;
    times.add("lint", t);
    let t = Instant::now();
    util::run(cargo().args(["test", "--workspace", "--exclude", "agent-ebpf", "--exclude", "warden-tests"]))?;
    times.add("unit", t);
    Ok(())
}

/// What the host tier's tests need from the distribution, installed when missing.
fn ensure_host_packages() -> anyhow::Result<()> {
    // The NATS sink test needs a real server.
    util::ensure_apt("/usr/sbin/nats-server", "nats-server")?;
    // The report test renders pages in headless Chromium.
    util::ensure_apt("/usr/bin/chromium", "chromium")?;
    // The Kubernetes tests run real containers: runc with a busybox-static root.
    util::ensure_apt("/usr/sbin/runc", "runc")?;
    util::ensure_apt("/bin/busybox", "busybox-static")?;
    // ... and containerd driven through CRI (tests/fixtures/containerd/cri.py: gRPC with
    // Debian's python3-grpcio, for /usr/bin/python3).
    util::ensure_apt("/usr/bin/containerd", "containerd")?;
    util::ensure_apt("/usr/lib/python3/dist-packages/grpc/__init__.py", "python3-grpcio")?;
    // The credentials test verifies Warden's tokens with PyJWT (EdDSA needs cryptography).
    util::ensure_apt("/usr/lib/python3/dist-packages/jwt/__init__.py", "python3-jwt")?;
    util::ensure_apt("/usr/lib/python3/dist-packages/cryptography/__init__.py", "python3-cryptography")?;
    // Egress by name is tested against a real DNS server (the binary only: no service).
    util::ensure_apt("/usr/sbin/dnsmasq", "dnsmasq-base")?;
    Ok(())
}

/// Builds the host tier and runs it. A build failure is the outer error; the inner result is
/// the tests'.
fn host_tier(times: &mut Times) -> anyhow::Result<anyhow::Result<()>> {
    let t = Instant::now();
    let warden = build_warden(false)?;
    let cells = crate::coverage::cells_dir(&util::workspace_root());
    std::fs::create_dir_all(&cells)?;
    let out = cells.join("host.jsonl");
    let _ = std::fs::remove_file(&out);
    let tests = host_test_binaries()?;
    times.add("host build", t);
    // The binaries run directly, not under `cargo test`, which would hold the build
    // directory's lock for the whole run.
    let t = Instant::now();
    let result = run_host_tests(&tests, &warden, &out);
    times.add("host tests", t);
    Ok(result)
}

/// `cargo xtask vm` (every kernel, every VM test binary) in a child process, its output in
/// `target/vm/tier.log` so that it does not interleave with the other tiers'. Dropped before
/// [`BackgroundVm::finish`], it stops the tier (the child and every process below it).
struct BackgroundVm {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
    started: Instant,
}

impl BackgroundVm {
    fn start() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let dir = util::target_dir().join("vm");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("tier.log");
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = std::process::Command::new(std::env::current_exe()?)
            .current_dir(util::workspace_root())
            .arg("vm")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting the VM tier")?;
        eprintln!("vm: the VM tier runs beside the other tiers; its output: {}", log.display());
        Ok(Self { child: Some(child), log, started: Instant::now() })
    }

    /// Waits for the VM tier; prints its summary, or its last lines when it failed.
    fn finish(mut self) -> anyhow::Result<()> {
        let status = self.child.take().expect("not finished yet").wait()?;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let shown = if status.success() {
            // The per-kernel results (with each test's guest time), then the summary.
            let from = lines
                .iter()
                .position(|l| l.starts_with("vm ") && l.contains("-cloud-amd64 ("))
                .unwrap_or(lines.iter().rposition(|l| l.starts_with("vm summary")).unwrap_or(lines.len()));
            &lines[from..]
        } else {
            &lines[lines.len().saturating_sub(200)..]
        };
        println!(
            "\n--- VM tier ({:.0}s; whole output in {}) ---",
            self.started.elapsed().as_secs_f64(),
            self.log.display()
        );
        for l in shown {
            println!("{l}");
        }
        if !status.success() {
            bail!("the VM tier failed ({status}); see {}", self.log.display());
        }
        Ok(())
    }
}

impl Drop for BackgroundVm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            eprintln!("vm: stopping the VM tier");
            kill_tree(child.id() as i32);
            let _ = child.wait();
        }
    }
}

/// SIGTERM to `pid` and every process below it (its cargo and rustc runs; QEMU dies with its
/// parent anyway). The tree is read from /proc before anything is signalled, while the
/// parent links still hold. The child stays in our process group so that Ctrl-C reaches it.
fn kill_tree(pid: i32) {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        tree.extend(children_of(tree[i]));
        i += 1;
    }
    for p in tree.into_iter().rev() {
        // SAFETY: plain kill(2) on processes we started (directly or through the child).
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
}

/// The processes whose parent is `pid` (field 4 of /proc/<n>/stat).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|n| {
            let stat = std::fs::read_to_string(format!("/proc/{n}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split_whitespace().nth(1));
            ppid.and_then(|p| p.parse::<i32>().ok()) == Some(pid)
        })
        .collect()
}

/// Builds the host tier (`cargo test -p warden-tests --no-run`) and returns its test
/// executables (name, path), in name order.
fn host_test_binaries() -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    use std::io::BufRead as _;
    let mut c = cargo();
    c.args(["test", "--package", "warden-tests", "--no-run", "--message-format=json-render-diagnostics"]);
    eprintln!("+ {c:?}");
    let mut child = c.stdout(std::process::Stdio::piped()).spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("cargo has no stdout"))?;
    let mut found = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line?) else { continue };
        let is_test = msg["reason"] == "compiler-artifact" && msg["profile"]["test"] == true;
        if let (true, Some(name), Some(exe)) =
            (is_test, msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.push((name.to_string(), std::path::PathBuf::from(exe)));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the host tier failed: {status}");
    }
    found.sort();
    found.dedup();
    if found.is_empty() {
        bail!("cargo built no test binary of warden-tests");
    }
    Ok(found)
}

/// Runs every host-tier test binary as `cargo test` would (from the package's directory),
/// all of them even when one fails; fails naming the ones that failed.
fn run_host_tests(
    tests: &[(String, std::path::PathBuf)],
    warden: &std::path::Path,
    coverage: &std::path::Path,
) -> anyhow::Result<()> {
    let dir = util::workspace_root().join("tests");
    let mut failed = Vec::new();
    for (name, exe) in tests {
        println!("\n     Running {name} ({})", exe.display());
        let status = std::process::Command::new(exe)
            .current_dir(&dir)
            .env("WARDEN_BIN", warden)
            .env("WARDEN_COVERAGE_OUT", coverage)
            .status()?;
        if !status.success() {
            failed.push(name.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("host tier: {} test binaries failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_the_vm_tier_ends_its_whole_tree() {
        let mut sh = std::process::Command::new("/bin/sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        let pid = sh.id() as i32;
        let t0 = Instant::now();
        let sleep = loop {
            if let Some(&s) = children_of(pid).first() {
                break s;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "sh started no sleep");
            std::thread::sleep(Duration::from_millis(10));
        };
        kill_tree(pid);
        sh.wait().unwrap();
        let t0 = Instant::now();
        while std::path::Path::new(&format!("/proc/{sleep}/stat")).exists()
            && !std::fs::read_to_string(format!("/proc/{sleep}/stat")).unwrap_or_default().contains(") Z ")
        {
            assert!(t0.elapsed() < Duration::from_secs(10), "the grandchild outlived kill_tree");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
