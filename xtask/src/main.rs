//! Project tasks: `cargo xtask <setup|build|test|bench|demo|vm|fuzz|k8s>`.
//!
//! Every command runs `setup` first, so a fresh machine needs no hand steps.
mod bench;
mod coverage;
mod demo_calls;
mod fuzz;
mod k8s;
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
    /// Regenerate docs/coverage.md and docs/coverage.json from the cells the last host and VM
    /// runs left in target/coverage (`cargo xtask test` does this after its privileged tiers).
    /// Run it after a full `cargo xtask test`: a partial run leaves only its own cells.
    Coverage,
    /// Lint the Helm chart, check deploy/kubernetes/ is its rendering, validate every object
    /// against the Kubernetes schemas (offline once the tools are cached).
    K8s {
        /// Regenerate deploy/kubernetes/warden.yaml from the chart.
        #[arg(long)]
        write: bool,
    },
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
        Cmd::Coverage => {
            let n = coverage::generate(&util::workspace_root())?;
            eprintln!("coverage: {n} cells observed; docs/coverage.md regenerated");
            Ok(())
        }
        Cmd::K8s { write } => k8s::run(write),
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
    demo_daemon(&warden, &root)
}

/// The same agent as a task of the node daemon, which survives a `kill -9` in the middle;
/// everything it pinned and created is removed at the end.
fn demo_daemon(warden: &std::path::Path, root: &std::path::Path) -> anyhow::Result<()> {
    use std::io::BufRead;
    let dir = root.join("target/demo-daemon");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("warden.yaml");
    std::fs::write(
        &config,
        format!(
            "socket: {d}/warden.sock\nstate_dir: {d}/state\nsecrets_dir: {d}/secrets\nkey: {d}/node.key\n\
             pin_name: warden-demo\ncgroup_parent: warden-demo\nlog:\n  path: {d}/events.jsonl\nmetrics:\n  listen: null\n",
            d = dir.display()
        ),
    )?;
    let start_daemon = || -> anyhow::Result<(std::process::Child, String)> {
        let mut child = std::process::Command::new(warden)
            .args(["daemon", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut ready = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut ready)?;
        anyhow::ensure!(!ready.is_empty(), "the daemon did not start");
        Ok((child, ready))
    };
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(warden);
        c.args(args).env("WARDEN_SOCKET", dir.join("warden.sock"));
        c
    };
    println!("\n== warden daemon --config {}", config.display());
    let (mut daemon, ready) = start_daemon()?;
    print!("{ready}");
    let result = (|| -> anyhow::Result<()> {
        let scope = root.join("examples/scope.yaml");
        let out = cli(&["task", "start", "--scope"]).arg(&scope).output()?;
        anyhow::ensure!(out.status.success(), "task start: {}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("\n== warden task start --scope examples/scope.yaml -> {id}");
        println!("\n== warden task exec {id} -- examples/agent.sh");
        let agent = root.join("examples/agent.sh");
        util::run(cli(&["task", "exec", &id, "--"]).arg(&agent))?;
        println!("\n== kill -9 the daemon (the pinned programs keep enforcing), start it again");
        let _ = daemon.kill();
        let _ = daemon.wait();
        let (d2, ready) = start_daemon()?;
        daemon = d2;
        print!("{ready}");
        println!("\n== warden task list; warden task end {id}");
        util::run(&mut cli(&["task", "list"]))?;
        util::run(&mut cli(&["task", "end", &id]))?;
        demo_calls::run(warden, root, &dir, &dir.join("events.jsonl"), &cli)?;
        println!("\n== warden verify {}/events.jsonl (the node log, across the restart)", dir.display());
        util::run(std::process::Command::new(warden).arg("verify").arg(dir.join("events.jsonl")))?;
        Ok(())
    })();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all("/sys/fs/bpf/warden-demo");
    result
}
