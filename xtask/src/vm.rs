//! The VM test tier: Warden's privileged test binaries on stock Debian kernels, booted under
//! QEMU (TCG) with `lsm=...,bpf`, because this host's kernel refuses BPF LSM and trampoline
//! programs. See `docs/vm.md`.
//!
//! Steps: install QEMU 10 and busybox-static when missing (private apt configuration, see
//! [`apt`]); resolve and download the kernel matrix into the cache ([`kernels`]); build
//! `warden` and the chosen test binaries optimized; pack them with their shared libraries
//! into one initramfs ([`initramfs`]); boot each kernel once ([`qemu`]) and judge its console
//! ([`protocol`], [`report`]). Results land in `target/vm/`.
mod apt;
mod cpio;
mod host;
mod initramfs;
mod kernels;
mod protocol;
mod qemu;
mod report;
mod tree;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use self::report::KernelReport;
use crate::util::{self, cargo, is_root, target_dir, workspace_root};

/// Every kernel family of the matrix.
const EVERY_KERNEL: &[&str] = &["6.1", "6.12", "newest"];
/// The oldest and the newest kernel: the ends of the matrix, where kernels differ most (6.1
/// lacks `SO_PEERPIDFD`, detaches trampolines slowly; the newest has dropped BTF names older
/// kernels had). Every BPF LSM engine test runs on both.
const OLDEST_AND_NEWEST: &[&str] = &["6.1", "newest"];
/// The middle kernel alone: BPF LSM engine binaries that need a guest but not both ends, put
/// where the guest has time (the ends' guests are the tier's long poles).
const MIDDLE: &[&str] = &["6.12"];

/// Test binaries (`tests/tests/<name>.rs`) that run in the VM by default, in this order, and
/// the kernel families each runs on. `lsm` (BPF LSM programs loaded, attached and denying
/// directly: what the host refuses), `lifecycle` and `drops` (the core event path) are the
/// kernel-sensitive binaries and run on every kernel of the matrix; `scope` (the scope
/// scenarios, which the host tier runs under the fallback), `node` (the node's threat model),
/// `dns` (egress by name against the dnsmasq the initramfs carries) and `calls` (tool calls'
/// own slots and narrower scopes under the daemon) run on the oldest and the newest kernel.
/// `boundary` (the task's process boundary: namespaces, capabilities, its own pty) and
/// `attacks` (a hijacked root task against its boundary, `docs/containment.md`) run on the
/// middle kernel: their outcomes are the engine's rather than a kernel's, and each guest takes
/// about one host core (TCG), so the tier takes about its longest guest's cycle — `boundary`
/// on the ends made the newest kernel's guest 900 s against the middle one's 290 s. `--test`
/// runs the binaries it names on every chosen kernel.
pub const VM_TESTS: &[(&str, &[&str])] = &[
    ("lsm", EVERY_KERNEL),
    ("lifecycle", EVERY_KERNEL),
    ("drops", EVERY_KERNEL),
    ("scope", OLDEST_AND_NEWEST),
    ("node", OLDEST_AND_NEWEST),
    ("boundary", MIDDLE),
    ("dns", OLDEST_AND_NEWEST),
    ("calls", OLDEST_AND_NEWEST),
    ("attacks", MIDDLE),
];

/// The test binaries a kernel of these families runs: `chosen` (from `--test`) on every
/// kernel, else the [`VM_TESTS`] that name one of its families.
fn tests_for(families: &[&str], chosen: &[String]) -> Vec<String> {
    if !chosen.is_empty() {
        return chosen.to_vec();
    }
    VM_TESTS
        .iter()
        .filter(|(_, on)| on.iter().any(|f| families.contains(f)))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Features that must be available in every guest (`WARDEN_REQUIRE`): a skip for one of
/// them fails the run.
pub const REQUIRED_FEATURES: &[&str] = &["bpf_lsm"];
/// Per-guest limit on boot + tests + power-off: a hang is caught, while a busy host (the
/// guest's vCPUs compete with builds; with the boundary and dns binaries a cycle takes about
/// 10 minutes) does not fail a cycle.
const DEFAULT_TIMEOUT_SECS: u64 = 1200;
/// A cycle slower than this is reported: the tier's budget is 3 minutes per kernel.
const CYCLE_BUDGET: Duration = Duration::from_secs(180);

#[derive(Debug, Default, clap::Args)]
pub struct VmArgs {
    /// Kernel families to boot (repeat or comma-separate): 6.1, 6.12, newest. Default: all.
    #[arg(long = "kernel", value_name = "FAMILY")]
    pub kernels: Vec<String>,
    /// Test binaries (tests/tests/<NAME>.rs) to run in the guest, on every chosen kernel.
    /// Default: lsm, lifecycle, drops on every kernel; scope, node, dns, calls on 6.1 and
    /// the newest; boundary, attacks on 6.12 (docs/vm.md).
    #[arg(long = "test", value_name = "NAME")]
    pub tests: Vec<String>,
    /// Features the guest must have (WARDEN_REQUIRE, comma-separated). Default: bpf_lsm.
    #[arg(long)]
    pub require: Option<String>,
    /// Seconds one guest may take, boot to power-off, before it is killed.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Guest memory (QEMU -m).
    #[arg(long)]
    pub memory: Option<String>,
    /// Guest CPUs (QEMU -smp).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Refresh the private apt lists even if they are less than a day old.
    #[arg(long)]
    pub refresh: bool,
    /// Arguments for every test binary in the guest, e.g. a test name filter.
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// The cache that outlives clones of the repository: `$WARDEN_VM_CACHE`, else
/// `$XDG_CACHE_HOME/warden/vm`, else `~/.cache/warden/vm`.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = env("WARDEN_VM_CACHE") {
        return d;
    }
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("warden/vm")
}

pub fn run(args: VmArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the VM tier installs packages with apt-get: run it as root");
    }
    let t0 = Instant::now();
    let families = kernels::select(&args.kernels)?;
    let chosen: Vec<String> = args.tests.iter().flat_map(|t| t.split(',')).map(str::to_string).collect();
    // Every binary some kernel runs; the initramfs carries them all.
    let tests: Vec<String> = if chosen.is_empty() {
        VM_TESTS.iter().map(|(name, _)| name.to_string()).collect()
    } else {
        chosen.clone()
    };
    let require = args.require.clone().unwrap_or_else(|| REQUIRED_FEATURES.join(","));
    let required: Vec<String> = require.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect();
    let timeout = Duration::from_secs(args.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));

    // Host tools and kernels, from the cache when possible.
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let (tools, kernels) = {
        let _lock = FileLock::take(&cache.join("lock"))?;
        let apt = apt::Apt::new(&cache)?;
        let lists_ok = apt.ensure_lists(args.refresh)?;
        let tools = host::ensure(&apt, lists_ok, &cache)?;
        // The guest's DNS server is the host's dnsmasq (see initramfs::DNSMASQ).
        util::ensure_apt(initramfs::DNSMASQ, "dnsmasq-base")?;
        let kernels = kernels::resolve(&apt, lists_ok, &cache, &families)?;
        (tools, kernels)
    };
    let prepared = t0.elapsed();

    // Optimized binaries: in the guest, userspace BTF parsing is 12-18x slower than here.
    let warden = build_release_warden()?;
    let built = build_test_binaries(&tests)?;
    let out = target_dir().join("vm");
    fs::create_dir_all(&out)?;
    // One run at a time per work tree: runs share the initramfs, the outputs and the coverage
    // cells. Its guests already share the cores.
    let _run_lock = FileLock::take(&out.join("lock"))?;
    let initramfs = out.join("initramfs.cpio");
    let size = initramfs::build(
        &initramfs::Contents {
            busybox: &tools.busybox,
            warden: &warden,
            tests: &built.tests,
            helpers: &built.helpers,
            test_args: &args.test_args,
            require: &require,
        },
        &initramfs,
    )?;
    eprintln!(
        "vm: {} ; cache {} ; prepared in {:.1}s, built in {:.1}s ; initramfs {} MiB",
        tools.qemu_version,
        cache.display(),
        prepared.as_secs_f64(),
        (t0.elapsed() - prepared).as_secs_f64(),
        size >> 20
    );
    for k in &kernels {
        eprintln!(
            "vm: kernel {} ({}) from {} {}; runs {}",
            k.release,
            k.families.join(", "),
            k.package,
            k.version,
            tests_for(&k.families, &chosen).join(", ")
        );
    }

    // Coverage cells the guests' tests note, beside the host tier's (see coverage.rs).
    let cells = workspace_root().join("target/coverage");
    fs::create_dir_all(&cells)?;
    if args.kernels.is_empty() {
        // The whole matrix runs: cells of kernels no longer in it must not linger.
        for e in fs::read_dir(&cells)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("vm-") && name.ends_with(".jsonl") {
                fs::remove_file(e.path())?;
            }
        }
    }

    // The guests boot at once. Under TCG a guest keeps about one core busy whatever its -smp
    // (its tests mostly wait on the processes they start), so the guests share this machine's
    // cores with little loss and the tier takes about its longest cycle instead of the sum.
    let memory = args.memory.as_deref().unwrap_or("1G");
    let cpus = args.cpus.unwrap_or(2);
    let runs: Vec<_> = std::thread::scope(|scope| {
        let guests: Vec<_> = kernels
            .into_iter()
            .map(|k| {
                let tag = KernelReport::tag(&k);
                let own = tests_for(&k.families, &chosen);
                let dir = out.join(&k.release);
                let _ = fs::remove_dir_all(&dir);
                println!("\nvm: booting {} ({})", k.release, k.families.join(", "));
                let (qemu, initramfs) = (&tools.qemu, &initramfs);
                scope.spawn(move || {
                    let append = format!("{}={}", initramfs::TESTS_PARAM, own.join(","));
                    let run = qemu::Boot {
                        qemu,
                        vmlinuz: &k.vmlinuz,
                        initramfs,
                        out_dir: &dir,
                        timeout,
                        memory,
                        cpus,
                        append: &append,
                    }
                    .run(|line| println!("  [{tag}] {line}"));
                    (k, own, dir, run)
                })
            })
            .collect();
        guests.into_iter().map(|g| g.join().expect("a guest's thread panicked")).collect()
    });

    let mut reports = Vec::new();
    for (k, own, dir, run) in runs {
        let run = run?;
        let r = KernelReport::assess(k, run, &own, &required, timeout);
        let probe = r.run.console.probe_json.trim();
        if !probe.is_empty() {
            fs::write(dir.join("probe.json"), format!("{probe}\n"))?;
        }
        let cell_file = cells.join(format!("vm-{}.jsonl", r.kernel.release));
        let _ = fs::remove_file(&cell_file);
        if !r.run.console.coverage.is_empty() {
            fs::write(&cell_file, r.run.console.coverage.join("\n") + "\n")?;
        }
        r.print();
        if r.run.total > CYCLE_BUDGET {
            println!("  warning: this cycle took longer than the {}s budget", CYCLE_BUDGET.as_secs());
        }
        reports.push(r);
    }

    let (passed, failed, skipped) =
        reports.iter().fold((0, 0, 0), |(p, f, s), r| (p + r.passed, f + r.failed, s + r.skipped));
    let per_kernel: serde_json::Map<String, Value> =
        reports.iter().map(|r| (r.kernel.release.clone(), r.json())).collect();
    let results = json!({
        "qemu": tools.qemu_version,
        "cmdline": qemu::CMDLINE,
        "required": required,
        "test_binaries": tests,
        "kernels": per_kernel,
        "passed": passed,
        "failed": failed,
        "skipped": skipped,
        "seconds": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    let results_path = out.join("results.json");
    fs::write(&results_path, serde_json::to_string_pretty(&results)? + "\n")?;

    println!("\nvm summary ({:.0}s in all; {}):", t0.elapsed().as_secs_f64(), results_path.display());
    for r in &reports {
        println!(
            "  {:<32} {:<7} {} passed, {} failed, {} skipped  boot {}  cycle {:.1}s",
            r.kernel.release,
            if r.ok() { "ok" } else { "FAILED" },
            r.passed,
            r.failed,
            r.skipped,
            r.run.boot.map_or("-".into(), |b| format!("{:.1}s", b.as_secs_f64())),
            r.run.total.as_secs_f64()
        );
    }
    if skipped > 0 {
        println!("vm: {skipped} skipped (not required; reasons above)");
    }
    println!("vm: {passed} passed, {failed} failed");
    let bad: Vec<&str> = reports.iter().filter(|r| !r.ok()).map(|r| r.kernel.release.as_str()).collect();
    if !bad.is_empty() {
        bail!("the VM tier failed on {}", bad.join(", "));
    }
    Ok(())
}

/// `cargo build --release -p agent-user --bin warden`, with `warden-tests` selected too: then
/// cargo unifies features as in the test build, and agent-user is compiled once for both
/// instead of being rebuilt by each build in turn.
fn build_release_warden() -> anyhow::Result<PathBuf> {
    util::run(
        cargo()
            .args(["build", "--release", "--package", "agent-user", "--bin", "warden"])
            .args(["--package", "warden-tests"]),
    )?;
    Ok(target_dir().join("release/warden"))
}

/// The optimized test binaries to run, and the crate's own programs they call.
struct TestBuild {
    /// (name, path) of each chosen integration-test binary.
    tests: Vec<(String, PathBuf)>,
    /// `warden-tests`' `[[bin]]` programs. Tests find them through `CARGO_BIN_EXE_<name>`,
    /// a host path compiled in, so the guest gets them at that same path.
    helpers: Vec<PathBuf>,
}

/// Builds the chosen test binaries of `warden-tests` optimized.
fn build_test_binaries(names: &[String]) -> anyhow::Result<TestBuild> {
    let mut c = cargo();
    c.args([
        "test",
        "--release",
        "--package",
        "warden-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for n in names {
        c.args(["--test", n]);
    }
    eprintln!("+ {c:?}");
    let mut child = c.stdout(Stdio::piped()).spawn().context("starting cargo")?;
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    let mut helpers = Vec::new();
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let Ok(msg) = serde_json::from_str::<Value>(&line?) else { continue };
        match artifact(&msg) {
            Some(a) if a.kind == "test" => found.push((a.name, a.executable)),
            Some(a) if a.kind == "bin" && a.package.contains("warden-tests") => helpers.push(a.executable),
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the test binaries failed: {status}");
    }
    let tests = names
        .iter()
        .map(|n| {
            found
                .iter()
                .find(|(f, _)| f == n)
                .cloned()
                .with_context(|| format!("cargo built no test binary `{n}` (tests/tests/{n}.rs)"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(TestBuild { tests, helpers })
}

/// An executable cargo reported building.
#[derive(Debug, PartialEq)]
struct Artifact {
    /// `test` (integration test), `bin`, ...
    kind: String,
    name: String,
    package: String,
    executable: PathBuf,
}

/// The executable in a cargo JSON message, if it reports one.
fn artifact(msg: &Value) -> Option<Artifact> {
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let target = msg.get("target")?;
    Some(Artifact {
        kind: target.get("kind")?.as_array()?.first()?.as_str()?.to_string(),
        name: target.get("name")?.as_str()?.to_string(),
        package: msg.get("package_id")?.as_str()?.to_string(),
        executable: PathBuf::from(msg.get("executable")?.as_str()?),
    })
}

/// An exclusive lock on a file, held while it lives: on the cache while packages are
/// installed and kernels fetched (two runs on one machine do not download into each other),
/// and on `target/vm` while a run uses it.
struct FileLock {
    _file: fs::File,
}

impl FileLock {
    fn take(path: &Path) -> anyhow::Result<Self> {
        let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            eprintln!("vm: waiting for another run to release {}", path.display());
            // SAFETY: as above.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
                bail!("locking {}: {}", path.display(), std::io::Error::last_os_error());
            }
        }
        Ok(Self { _file: f })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_middle_kernel_runs_the_kernel_sensitive_binaries_and_the_ends_run_all() {
        let all: Vec<String> = VM_TESTS.iter().map(|(n, _)| n.to_string()).collect();
        let ends: Vec<String> =
            all.iter().filter(|n| !["boundary", "attacks"].contains(&n.as_str())).cloned().collect();
        assert_eq!(tests_for(&["6.1"], &[]), ends);
        assert_eq!(tests_for(&["newest"], &[]), ends);
        assert_eq!(tests_for(&["6.12"], &[]), ["lsm", "lifecycle", "drops", "boundary", "attacks"]);
        // One kernel standing for both 6.12 and the newest runs everything.
        assert_eq!(tests_for(&["6.12", "newest"], &[]), all);
        // --test runs what it names on every kernel.
        assert_eq!(tests_for(&["6.12"], &["scope".to_string()]), ["scope"]);
        // Every binary runs on the oldest and the newest kernel, but those of the middle one.
        assert!(
            VM_TESTS.iter().all(|(_, on)| *on == MIDDLE || (on.contains(&"6.1") && on.contains(&"newest")))
        );
    }

    #[test]
    fn finds_executables_in_cargo_messages() {
        let msg: Value = serde_json::from_str(
            r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#warden-tests@0.1.0",
                "target":{"kind":["test"],"name":"lsm"},"executable":"/t/release/deps/lsm-1"}"#,
        )
        .unwrap();
        let a = artifact(&msg).unwrap();
        assert_eq!((a.kind.as_str(), a.name.as_str()), ("test", "lsm"));
        assert_eq!(a.executable, PathBuf::from("/t/release/deps/lsm-1"));
        let lib: Value = serde_json::from_str(
            r#"{"reason":"compiler-artifact","package_id":"x","target":{"kind":["lib"],"name":"w"},"executable":null}"#,
        )
        .unwrap();
        assert_eq!(artifact(&lib), None);
    }
}
