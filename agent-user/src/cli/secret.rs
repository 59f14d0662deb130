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
    let rendered = render(a.format, &a.username, &value)
        .map_err(|e| Failure::Runtime(anyhow!("secret {:?}: {e}", a.name)))?;
    let mut out = std::io::stdout().lock();
    let r = out.write_all(&rendered);
    r.and_then(|_| out.flush()).map_err(|e| Failure::Runtime(e.into()))?;
    Ok(0)
}

/// The value as `format` wants it. Errors describe the shape, never the value.
pub fn render(format: Format, username: &str, value: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    match format {
        Format::Plain => Ok(zeroize::Zeroizing::new(value.to_vec())),
        Format::Git => {
            let v = std::str::from_utf8(value).map_err(|_| "it is not text; git needs text".to_string())?;
            if v.contains('\n') || username.contains('\n') {
                return Err("it has a newline; git cannot take it".into());
            }
            Ok(zeroize::Zeroizing::new(format!("username={username}\npassword={v}\n").into_bytes()))
        }
        Format::Aws => {
            let mut j: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value)
                .map_err(|_| "it is not a JSON object with AccessKeyId and SecretAccessKey".to_string())?;
            let ok = |k: &str| j.get(k).is_some_and(serde_json::Value::is_string);
            if !ok("AccessKeyId") || !ok("SecretAccessKey") {
                return Err("it lacks AccessKeyId or SecretAccessKey (strings)".into());
            }
            j.insert("Version".into(), 1.into());
            let mut out = serde_json::to_vec(&j).unwrap_or_default();
            out.push(b'\n');
            for v in j.values_mut() {
                if let serde_json::Value::String(s) = v {
                    zeroize::Zeroize::zeroize(s);
                }
            }
            Ok(zeroize::Zeroizing::new(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_and_aws_formats() {
        assert_eq!(
            &render(Format::Git, "x-access-token", b"tok").unwrap()[..],
            b"username=x-access-token\npassword=tok\n"
        );
        assert!(render(Format::Git, "u", b"a\nb").is_err());
        let aws =
            render(Format::Aws, "", br#"{"AccessKeyId":"AK","SecretAccessKey":"SK","SessionToken":"ST"}"#)
                .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&aws).unwrap();
        assert_eq!(v["Version"], 1);
        assert_eq!(v["AccessKeyId"], "AK");
        assert_eq!(v["SessionToken"], "ST");
        let e = render(Format::Aws, "", br#"{"AccessKeyId":"AK-leak"}"#).unwrap_err();
        assert!(!e.contains("AK-leak"), "{e}");
        assert!(render(Format::Aws, "", b"plain-token").is_err());
        assert_eq!(&render(Format::Plain, "", b"v\n").unwrap()[..], b"v\n");
    }
}
