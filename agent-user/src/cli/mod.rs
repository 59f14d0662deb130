//! The `warden` command line (clap derive). Raw arguments here; each verb turns
//! them into resolved settings and runs.
mod call;
mod call_filter;
mod identity;
mod nats;
mod oci_hook;
mod probe;
mod report;
mod rules;
mod run;
mod scope;
mod secret;
pub mod task;
mod verify;

use clap::{Parser, Subcommand};

pub use run::RunArgs;

/// Warden: binds AI agent tasks to a declared scope and enforces it in the kernel.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, propagate_version = true)]
pub struct Cli {
    /// More logging on stderr (-v info, -vv debug). `WARDEN_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Report what this kernel allows and which engine enforces what.
    Probe(probe::ProbeArgs),
    /// Run a command as a task in a fresh sandbox, streaming its audit records.
    Run(RunArgs),
    /// Work with scope files.
    #[command(subcommand)]
    Scope(scope::ScopeCmd),
    /// Check a log's hash chains and signatures; exit 0 only if intact.
    Verify(verify::VerifyArgs),
    /// Re-run rules (and optionally a different scope) over recorded logs, deterministically.
    Replay(rules::ReplayArgs),
    /// Work with scope-drift rules.
    #[command(subcommand)]
    Rules(rules::RulesCmd),
    /// NATS JetStream spools.
    #[command(subcommand)]
    Nats(nats::NatsCmd),
    /// Workload identity documents.
    #[command(subcommand)]
    Identity(identity::IdentityCmd),
    /// Write an incident report of a recorded log: one self-contained HTML page.
    Report(report::ReportArgs),
    /// Run the node daemon: pinned enforcement, the task API on a unix socket, metrics.
    Daemon(task::DaemonArgs),
    /// Drive tasks through the node daemon.
    Task(task::TaskArgs),
    /// Print the daemon's audit records (the node log), or follow them live.
    Events(task::EventsArgs),
    /// OCI runtime hook (createRuntime/prestart and poststop): bind a pod's container to the
    /// scope its annotations name before its first instruction; end the task when it stops.
    OciHook(oci_hook::OciHookArgs),
    /// Inside a task: fetch a brokered secret from the task's broker.
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Inside a task: run a command as a call (tool call, stage) of the caller's task.
    Call(call::CallArgs),
}

/// How a verb failed.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or configuration: exit 2, nothing was started.
    Usage(anyhow::Error),
    /// Something failed while running: exit 1.
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }
}

/// Parses arguments, runs the verb, returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Probe(a) => probe::run(a),
        Command::Run(a) => run::run(a),
        Command::Scope(c) => scope::run(c),
        Command::Verify(a) => verify::run(a),
        Command::Replay(a) => rules::replay(a),
        Command::Rules(c) => rules::rules(c),
        Command::Nats(c) => nats::run(c),
        Command::Identity(c) => identity::run(c),
        Command::Report(a) => report::run(a),
        Command::Daemon(a) => task::daemon(a),
        Command::Task(a) => task::task(a),
        Command::Events(a) => task::events(a),
        Command::OciHook(a) => oci_hook::run(a),
        Command::Secret(c) => secret::run(c),
        Command::Call(a) => call::run(a),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            let (Failure::Usage(e) | Failure::Runtime(e)) = &f;
            eprintln!("warden: error: {}", chain(e.as_ref()));
            f.exit_code()
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// An error and its causes, each cause once: a cause already quoted in the message above it
/// is not repeated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    #[test]
    fn causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(crate::scope::ScopeError::Read { path: "s.yaml".into(), source: io })
            .context("loading");
        assert_eq!(super::chain(e.as_ref()), "loading: s.yaml: cannot read scope file: no such file");
    }
}
