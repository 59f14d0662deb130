//! `warden secret get NAME`: inside a task, ask the task's broker for a brokered secret and
//! print it — plainly, as a git credential helper, or as an AWS `credential_process`.
use std::{
    io::{BufRead, Write},
    path::PathBuf,
};

use anyhow::anyhow;
use clap::{Args, Subcommand, ValueEnum};

use super::Failure;
use crate::creds::broker;

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Print a brokered secret (only its tool, or what its tool started, is answered).
    Get(GetArgs),
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    /// The value as it is.
    Plain,
    /// git credential helper protocol (`credential.helper = "!warden secret get NAME --format git"`):
    /// answers `get` with `username=...` and `password=<value>`; `store`/`erase` do nothing.
    Git,
    /// AWS `credential_process`: the value must be JSON with `AccessKeyId` and
    /// `SecretAccessKey` (optional `SessionToken`, `Expiration`); printed with `Version: 1`.
    Aws,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// The secret's name in the scope.
    pub name: String,
    #[arg(long, value_enum, default_value_t = Format::Plain)]
    pub format: Format,
    /// git: the username to answer with.
    #[arg(long, default_value = "x-access-token")]
    pub username: String,
    /// The broker socket (set in the task by the daemon).
    #[arg(long, env = broker::ENV)]
    pub broker: PathBuf,
    /// git passes the operation (`get`, `store`, `erase`) as the last argument.
    #[arg(hide = true)]
    pub operation: Option<String>,
}

pub fn run(cmd: SecretCmd) -> Result<i32, Failure> {
    let SecretCmd::Get(a) = cmd;
    if a.format == Format::Git {
        // git writes the request's attributes on stdin; read them all before answering.
        let mut sink = String::new();
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        while matches!(lock.read_line(&mut sink), Ok(n) if n > 0) && sink.trim_end() != "" {
            sink.clear();
        }
        if a.operation.as_deref().is_some_and(|op| op != "get") {
            return Ok(0);
        }
    }
    let (value, _) = broker::fetch(&a.broker, &a.name)
        .map_err(|e| Failure::Runtime(anyhow!("secret {:?}: {e}", a.name)))?;
    let mut out = std::io::stdout().lock();
    let r = match a.format {
        Format::Plain => out.write_all(&value),
        Format::Git => {
            let v = std::str::from_utf8(&value)
                .map_err(|_| Failure::Runtime(anyhow!("secret {:?} is not text; git needs text", a.name)))?;
            if v.contains('\n') {
                return Err(Failure::Runtime(anyhow!(
                    "secret {:?} has a newline; git cannot take it",
                    a.name
                )));
            }
            write!(out, "username={}\npassword={v}\n", a.username)
        }
        Format::Aws => {
            let mut j: serde_json::Map<String, serde_json::Value> =
                serde_json::from_slice(&value).map_err(|_| {
                    Failure::Runtime(anyhow!(
                        "secret {:?} is not a JSON object with AccessKeyId and SecretAccessKey",
                        a.name
                    ))
                })?;
            if !j.contains_key("AccessKeyId") || !j.contains_key("SecretAccessKey") {
                return Err(Failure::Runtime(anyhow!(
                    "secret {:?} lacks AccessKeyId or SecretAccessKey",
                    a.name
                )));
            }
            j.insert("Version".into(), 1.into());
            let s = zeroize::Zeroizing::new(serde_json::to_string(&j).unwrap_or_default());
            for v in j.values_mut() {
                if let serde_json::Value::String(s) = v {
                    zeroize::Zeroize::zeroize(s);
                }
            }
            writeln!(out, "{}", s.as_str())
        }
    };
    r.and_then(|_| out.flush()).map_err(|e| Failure::Runtime(e.into()))?;
    Ok(0)
}
