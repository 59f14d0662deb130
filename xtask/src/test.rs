//! `cargo xtask test`: the unit tier, the host tier (privileged, this kernel) and
//! the VM tier (stock kernels with BPF LSM under qemu); then the coverage matrix is
//! regenerated from what the privileged tiers observed.
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
    if want(Tier::Unit) {
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
        util::run(cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "agent-ebpf",
            "--exclude",
            "warden-tests",
        ]))?;
    }
    if want(Tier::Host) {
        if !is_root() {
            bail!("the host tier loads BPF programs and creates cgroups: run it as root");
        }
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
        let warden = build_warden(false)?;
        let cells = crate::coverage::cells_dir(&util::workspace_root());
        std::fs::create_dir_all(&cells)?;
        let out = cells.join("host.jsonl");
        let _ = std::fs::remove_file(&out);
        util::run(
            cargo()
                .args(["test", "--package", "warden-tests"])
                .env("WARDEN_BIN", &warden)
                .env("WARDEN_COVERAGE_OUT", &out),
        )?;
    }
    if want(Tier::Vm) {
        crate::vm::run(crate::vm::VmArgs::default())?;
    }
    if want(Tier::Host) || want(Tier::Vm) {
        let n = crate::coverage::generate(&util::workspace_root())?;
        eprintln!("coverage: {n} cells observed; docs/coverage.md regenerated");
    }
    Ok(())
}
