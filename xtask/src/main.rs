//! Project tasks: `cargo xtask <setup|build|test|bench|demo|vm>`.
//!
//! Every command runs `setup` first, so a fresh machine needs no hand steps.
mod bench;
mod coverage;
mod fuzz;
mod setup;
mod test;
mod util;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Warden project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the eBPF side needs (idempotent).
    Setup,
    /// Build everything (userspace + embedded eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the tests: unit, host (privileged, this kernel) and vm (BPF LSM kernels under qemu).
    Test {
        /// Which tiers; default all.
        #[arg(value_enum)]
        tiers: Vec<test::Tier>,
    },
    /// Benchmarks: cost of Warden against a baseline measured in the same run.
    Bench(bench::BenchArgs),
    /// Set up, build, and run `warden run` on the bundled example.
    Demo,
    /// The VM test tier alone, with options.
    Vm(vm::VmArgs),
    /// Run the fuzz targets (decoder, scope parser, rule parser, verifier).
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    setup::run()?;
    match cli.cmd {
        Cmd::Setup => Ok(()),
        Cmd::Build { release } => util::build_warden(release).map(|_| ()),
        Cmd::Test { tiers } => test::run(&tiers),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Demo => demo(),
        Cmd::Vm(args) => vm::run(args),
        Cmd::Fuzz(args) => fuzz::run_fuzz(args),
    }
}

fn demo() -> anyhow::Result<()> {
    let warden = util::build_warden(false)?;
    let root = util::workspace_root();
    let log = root.join("target/demo-events.jsonl");
    println!("\n== warden probe");
    util::run(std::process::Command::new(&warden).arg("probe"))?;
    println!("\n== warden run --scope examples/scope.yaml --log {} -- examples/agent.sh", log.display());
    let status = std::process::Command::new(&warden)
        .args(["run", "--scope"])
        .arg(root.join("examples/scope.yaml"))
        .arg("--log")
        .arg(&log)
        .arg("--")
        .arg(root.join("examples/agent.sh"))
        .status()?;
    println!("\n== task exited with {status}; its audit records ({}):", log.display());
    let text = std::fs::read_to_string(&log)?;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let s = |k: &str| v.get(k).map(|x| x.to_string().trim_matches('"').to_string()).unwrap_or_default();
        println!(
            "{:>3} {:<10} {:<6} {:<7} pid={:<7} ppid={:<7} {}",
            s("seq"),
            s("kind"),
            s("decision"),
            s("action"),
            s("pid"),
            s("ppid"),
            [s("path"), s("addr"), s("exe"), s("reason")]
                .into_iter()
                .find(|x| !x.is_empty())
                .unwrap_or_default()
        );
    }
    anyhow::ensure!(status.code() == Some(0), "demo agent failed: {status}");
    println!("\n== warden verify {}", log.display());
    util::run(std::process::Command::new(&warden).arg("verify").arg(&log))?;
    Ok(())
}
