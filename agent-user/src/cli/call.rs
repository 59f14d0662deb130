//! `warden call`: inside a task, run a command as a call of the caller's own task or call,
//! through the daemon's call endpoint (`daemon/inside.rs`).
use std::{io::BufRead, os::fd::AsRawFd, path::PathBuf};

use anyhow::anyhow;

use super::Failure;
use crate::daemon::inside::{ENV, InsideAnswer, InsideRequest, send_with_fds};

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The call's name.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The call's scope, no wider than the caller's (default: the caller's).
    #[arg(long, value_name = "SCOPE.yaml")]
    pub scope: Option<PathBuf>,
    /// Why the call is made (`call_start.intent`), read from a file.
    #[arg(long, value_name = "FILE", conflicts_with = "intent")]
    pub intent_file: Option<PathBuf>,
    /// Why the call is made, as text.
    #[arg(long, value_name = "TEXT")]
    pub intent: Option<String>,
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

/// Sends the request with this process's stdin, stdout and stderr; the daemon runs CMD on
/// them and answers with its exit. Exits with CMD's status (128+signal), 2 when the call was
/// refused before CMD ran.
pub fn run(args: CallArgs) -> Result<i32, Failure> {
    let Some(path) = std::env::var_os(ENV) else {
        return Err(Failure::Usage(anyhow!(
            "warden call: no call endpoint ({ENV} is not set): calls are started inside tasks of the node daemon \
             (`warden task start`, or `warden run` with a daemon running); standalone `warden run` has no call \
             endpoint"
        )));
    };
    let req = super::task::call_request(
        args.name,
        args.scope.as_deref(),
        None,
        args.intent,
        args.intent_file.as_deref(),
        &args.cmd,
    )?;
    let req = InsideRequest {
        name: req.name,
        scope_text: req.scope_text,
        scope_path: req.scope_path,
        intent: req.intent,
        cmd: req.cmd,
        cwd: req.cwd,
    };
    let mut line = serde_json::to_vec(&req).map_err(|e| Failure::Runtime(e.into()))?;
    line.push(b'\n');
    let sock = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        Failure::Runtime(anyhow!("connecting to the call endpoint {}: {e}", PathBuf::from(&path).display()))
    })?;
    let sent = send_with_fds(sock.as_raw_fd(), &line, &[0, 1, 2]).map_err(|e| Failure::Runtime(e.into()))?;
    if sent < line.len() {
        use std::io::Write;
        (&sock).write_all(&line[sent..]).map_err(|e| Failure::Runtime(e.into()))?;
    }
    let mut answer = String::new();
    std::io::BufReader::new(&sock).read_line(&mut answer).map_err(|e| Failure::Runtime(e.into()))?;
    let a: InsideAnswer = serde_json::from_str(&answer)
        .map_err(|e| Failure::Runtime(anyhow!("the call endpoint's answer: {e}: {answer:?}")))?;
    if let Some(e) = a.error {
        return Err(if a.usage {
            Failure::Usage(anyhow!("warden call: {e}"))
        } else {
            Failure::Runtime(anyhow!("warden call: {e}"))
        });
    }
    Ok(a.exit_status.or(a.signal.map(|s| 128 + s)).unwrap_or(1))
}
