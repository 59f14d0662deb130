//! The `exec:` provider: an issuer command run at task start, and its `revoke:` command.
//!
//! The mint prints the value on stdout, or a JSON object `{"value": ..., "id": ...,
//! "expires_at": ...}` (`expires_at`: Unix seconds or RFC 3339). Neither command runs under a
//! shell; their stderr is discarded (it could echo the value) and error messages name only
//! the program and its exit status.
use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{CredError, CredInfo, Minted, Provider, Value, revoke::Pending};

/// How long an issuer may take to mint.
pub const MINT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a revoke command may take.
pub const REVOKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest output a mint may print.
const MAX_OUTPUT: u64 = 1 << 20;

/// How a command ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(std::process::ExitStatus, Vec<u8>),
    TimedOut,
}

/// Runs `argv` (no shell) with stdin and stderr closed, collecting at most 1 MiB of stdout;
/// killed after `timeout`.
pub fn run(argv: &[String], env: &[(&str, &str)], timeout: Duration) -> std::io::Result<Outcome> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut out).take(MAX_OUTPUT + 1).read_to_end(&mut buf);
        // Drain the rest so the child is not blocked on a full pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
        buf
    });
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            let buf = reader.join().unwrap_or_default();
            return Ok(Outcome::Exited(status, buf));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join().map(|mut b| zeroize::Zeroize::zeroize(&mut b));
            return Ok(Outcome::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a mint printed.
#[derive(Debug)]
pub struct Printed {
    pub value: Value,
    pub id: Option<String>,
    pub expires_at: Option<u64>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonOut {
    value: String,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    expires_at: Option<serde_json::Value>,
}

/// Parses a mint's stdout. Errors describe the shape, never the content.
pub fn parse_output(mut out: Vec<u8>) -> Result<Printed, String> {
    if out.len() as u64 > MAX_OUTPUT {
        zeroize::Zeroize::zeroize(&mut out);
        return Err(format!("more than {MAX_OUTPUT} bytes"));
    }
    let trimmed_start = out.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(out.len());
    if out.get(trimmed_start) == Some(&b'{') {
        let parsed: Result<JsonOut, _> = serde_json::from_slice(&out);
        zeroize::Zeroize::zeroize(&mut out);
        // serde's message may quote input: replace it with the shape only.
        let j = parsed.map_err(|_| {
            "a JSON object that is not {\"value\": string, \"id\": ..., \"expires_at\": ...}".to_string()
        })?;
        let value = Value::new(j.value.into_bytes());
        if value.expose().is_empty() {
            return Err("an empty `value`".into());
        }
        let id = match j.id {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err("an `id` that is neither a string nor a number".into()),
        };
        let expires_at = match j.expires_at {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => {
                Some(n.as_u64().ok_or("an `expires_at` that is not Unix seconds")?)
            }
            Some(serde_json::Value::String(s)) => Some(
                time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| "an `expires_at` that is not RFC 3339".to_string())?
                    .unix_timestamp()
                    .max(0) as u64,
            ),
            Some(_) => return Err("an `expires_at` that is neither Unix seconds nor RFC 3339".into()),
        };
        return Ok(Printed { value, id, expires_at });
    }
    while out.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        out.pop();
    }
    if out.is_empty() {
        return Err("nothing".into());
    }
    Ok(Printed { value: Value::new(out), id: None, expires_at: None })
}

/// `revoke` with every `{id}` replaced.
pub fn revoke_argv(revoke: &[String], id: Option<&str>) -> Vec<String> {
    revoke.iter().map(|a| a.replace("{id}", id.unwrap_or_default())).collect()
}

/// Runs the issuer of secret `name` and returns the credential and its revocation.
pub fn mint(
    name: &str,
    argv: &[String],
    revoke: Option<&[String]>,
    task: &str,
    generation: u32,
) -> Result<Minted, CredError> {
    let program = argv[0].clone();
    let env = [("WARDEN_TASK", task), ("WARDEN_SECRET_NAME", name)];
    let outcome = run(argv, &env, MINT_TIMEOUT).map_err(|source| CredError::Spawn {
        name: name.into(),
        program: program.clone(),
        source,
    })?;
    let out = match outcome {
        Outcome::TimedOut => {
            return Err(CredError::Timeout { name: name.into(), program, secs: MINT_TIMEOUT.as_secs() });
        }
        Outcome::Exited(status, mut out) if !status.success() => {
            zeroize::Zeroize::zeroize(&mut out);
            return Err(CredError::Failed { name: name.into(), program, status: status.to_string() });
        }
        Outcome::Exited(_, out) => out,
    };
    let p = parse_output(out).map_err(|problem| CredError::Output {
        name: name.into(),
        program: program.clone(),
        problem,
    })?;
    if revoke.is_some_and(|r| r.iter().any(|a| a.contains("{id}"))) && p.id.is_none() {
        // Minted but unrevocable as configured: refuse it (the value is dropped, wiped).
        return Err(CredError::Output {
            name: name.into(),
            program,
            problem: "no `id`, which the revoke command needs ({id})".into(),
        });
    }
    let revocation = match revoke {
        Some(r) => Pending::exec(task, name, revoke_argv(r, p.id.as_deref())),
        None => Pending::nothing(task, name),
    };
    Ok(Minted {
        info: CredInfo {
            name: name.into(),
            provider: Provider::Exec,
            sha256: p.value.digest(),
            expires_at: p.expires_at,
            generation,
        },
        value: p.value,
        revocation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_output_is_the_value_without_its_newline() {
        let p = parse_output(b"s3cr3t\n".to_vec()).unwrap();
        assert_eq!(p.value.expose(), b"s3cr3t");
        assert!(p.id.is_none());
        assert!(parse_output(b"\n".to_vec()).is_err());
    }

    #[test]
    fn json_output_carries_id_and_expiry() {
        let p = parse_output(br#"{"value":"tok-1","id":"abc","expires_at":1700000000}"#.to_vec()).unwrap();
        assert_eq!(p.value.expose(), b"tok-1");
        assert_eq!(p.id.as_deref(), Some("abc"));
        assert_eq!(p.expires_at, Some(1_700_000_000));
        let p =
            parse_output(br#" {"value":"v","id":7,"expires_at":"2023-11-14T22:13:20Z"}"#.to_vec()).unwrap();
        assert_eq!(p.id.as_deref(), Some("7"));
        assert_eq!(p.expires_at, Some(1_700_000_000));
    }

    #[test]
    fn malformed_json_errors_do_not_quote_the_output() {
        let e = parse_output(br#"{"value":"leaky-secret","extra":1}"#.to_vec()).unwrap_err();
        assert!(!e.contains("leaky"), "{e}");
        let e = parse_output(br#"{"value":"leaky-secret","id":[1]}"#.to_vec()).unwrap_err();
        assert!(!e.contains("leaky"), "{e}");
    }

    #[test]
    fn revoke_argv_substitutes_the_id() {
        let r = vec!["/bin/revoke".to_string(), "--id={id}".into(), "{id}".into()];
        assert_eq!(revoke_argv(&r, Some("x1")), vec!["/bin/revoke", "--id=x1", "x1"]);
    }

    #[test]
    fn a_failing_issuer_fails_the_mint_without_its_output() {
        let argv = vec!["/bin/sh".to_string(), "-c".into(), "echo leaky-value; exit 3".into()];
        let e = mint("api", &argv, None, "t-1", 0).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("exit status: 3"), "{msg}");
        assert!(!msg.contains("leaky"), "{msg}");
    }

    #[test]
    fn a_mint_runs_without_a_shell_and_returns_the_revocation() {
        let argv = vec!["/bin/echo".to_string(), r#"{"value":"v-$HOME","id":"i-1"}"#.into()];
        let revoke = vec!["/bin/true".to_string(), "{id}".into()];
        let m = mint("api", &argv, Some(&revoke), "t-1", 0).unwrap();
        assert_eq!(m.value.expose(), b"v-$HOME");
        assert_eq!(m.info.provider, Provider::Exec);
        match &m.revocation.action {
            super::super::revoke::Action::Exec { argv } => assert_eq!(argv, &["/bin/true", "i-1"]),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn a_slow_issuer_is_killed() {
        let out = run(&["/bin/sleep".to_string(), "5".into()], &[], Duration::from_millis(100)).unwrap();
        assert!(matches!(out, Outcome::TimedOut));
    }
}
