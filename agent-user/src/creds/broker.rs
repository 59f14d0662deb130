//! The per-task broker: a unix socket in the task's secrets directory
//! (`<secrets_dir>/<task>/broker.sock`, named to the task by `WARDEN_BROKER`). A caller asks
//! for a secret by name (`warden secret get NAME`); the broker identifies the caller from the
//! kernel ([`super::peer`]) and answers only when the caller is a process of *this* task and
//! the caller or one of its ancestors inside the task is an executable the scope names as the
//! secret's tool (same device and inode as the tool resolved at task start). Every answer,
//! granted or refused, becomes a [`SecretEvent`] the owner records (`secret` record).
//!
//! Wire format: one JSON line each way. Request `{"name": "..."}`; answer
//! `{"value_b64": "...", "sha256": "...", "expires_at": N}` or `{"error": "..."}`.
use std::{
    io,
    os::fd::AsRawFd,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixListener,
    sync::mpsc,
};

use super::{
    TaskCreds,
    peer::{self, Caller},
};
use crate::scope::compile::FileId;

/// The broker socket's file name in the task's secrets directory.
pub const SOCKET_NAME: &str = "broker.sock";
/// The environment variable that names the broker socket inside the task.
pub const ENV: &str = "WARDEN_BROKER";
/// Longest request line.
const MAX_REQUEST: usize = 4096;
/// How long a caller may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to the broker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub name: String,
}

/// The broker's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One retrieval, granted or refused: what the owner writes as a `secret` record.
#[derive(Debug, Clone)]
pub struct SecretEvent {
    pub task: String,
    pub name: String,
    /// Digest of the value handed out (or of the current value, when refused).
    pub sha256: Option<String>,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    /// The caller's ancestors inside the task, nearest first.
    pub ancestry: Vec<u32>,
    pub granted: bool,
    pub reason: String,
}

/// Decides whether `caller` may have a secret whose tools are `tools`: the caller must be in
/// the task's sandbox, and it or an ancestor inside the sandbox must be one of the tools.
/// `Ok(pid)`: the process that is the tool.
pub fn judge(tools: &[FileId], caller: &Caller, sandbox: &Path) -> Result<u32, String> {
    if !caller.proc.cgroup.as_deref().is_some_and(|c| c.starts_with(sandbox)) {
        return Err("the caller is not a process of this task".into());
    }
    std::iter::once(&caller.proc)
        .chain(&caller.ancestors)
        .find(|p| tools.iter().any(|t| t.dev == p.dev && t.ino == p.ino))
        .map(|p| p.pid)
        .ok_or_else(|| {
            let names: Vec<String> = tools.iter().map(|t| t.path.display().to_string()).collect();
            format!(
                "{} is not {} (nor started by it)",
                caller.proc.exe.display(),
                if names.len() == 1 { names[0].clone() } else { format!("one of {}", names.join(", ")) }
            )
        })
}

/// What a broker serves.
pub struct BrokerCtx {
    pub task: String,
    /// The task's sandbox cgroup.
    pub sandbox: PathBuf,
    /// The cgroup2 mount (to place callers).
    pub cgroup_mount: PathBuf,
    pub creds: Arc<Mutex<TaskCreds>>,
    pub events: mpsc::UnboundedSender<SecretEvent>,
}

/// A running broker; stopped and its socket removed when dropped.
pub struct Broker {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Broker {
    /// Binds `path` (mode 0666: any process of the task may ask; the broker judges) and serves
    /// it on the current tokio runtime.
    pub fn start(path: &Path, ctx: BrokerCtx) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
        let ctx = Arc::new(ctx);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                // Identify at once: the pidfd names the process that connected.
                let caller = peer::identify(stream.as_raw_fd(), &ctx.cgroup_mount, &ctx.sandbox);
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, caller, &ctx).await;
                });
            }
        });
        Ok(Self { path: path.to_path_buf(), task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(
    stream: tokio::net::UnixStream,
    caller: io::Result<Caller>,
    ctx: &BrokerCtx,
) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut r = BufReader::new(r.take(MAX_REQUEST as u64));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, r.read_line(&mut line)).await;
    let answer = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim_end()) {
            Ok(req) => answer(&req.name, caller, ctx),
            Err(_) => {
                Answer { error: Some("bad request: send {\"name\": \"NAME\"}".into()), ..Default::default() }
            }
        },
        _ => return Ok(()),
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    let r = w.write_all(&out).await;
    zeroize::Zeroize::zeroize(&mut out);
    r
}

fn answer(name: &str, caller: io::Result<Caller>, ctx: &BrokerCtx) -> Answer {
    let creds = ctx.creds.lock().unwrap_or_else(|e| e.into_inner());
    let slot = creds.get(name);
    let mut ev = SecretEvent {
        task: ctx.task.clone(),
        name: name.chars().take(64).collect(),
        sha256: slot.map(|s| s.current.info.sha256.clone()),
        pid: None,
        exe: None,
        ancestry: Vec::new(),
        granted: false,
        reason: String::new(),
    };
    let result = match (&caller, slot) {
        (Err(e), _) => Err(format!("the caller could not be identified: {e}")),
        (Ok(_), None) => Err(format!("this task has no brokered secret {name:?}")),
        (Ok(c), Some(slot)) => {
            ev.pid = Some(c.proc.pid);
            ev.exe = Some(c.proc.exe.display().to_string());
            ev.ancestry = c.ancestors.iter().map(|p| p.pid).collect();
            judge(&slot.tools, c, &ctx.sandbox).map(|tool_pid| (slot, tool_pid))
        }
    };
    if let Ok(c) = &caller {
        ev.pid = Some(c.proc.pid);
        ev.exe = Some(c.proc.exe.display().to_string());
    }
    let a = match result {
        Ok((slot, tool_pid)) => {
            ev.granted = true;
            ev.reason = format!("granted to the tool (pid {tool_pid})");
            Answer {
                value_b64: Some(
                    base64::engine::general_purpose::STANDARD.encode(slot.current.value.expose()),
                ),
                sha256: Some(slot.current.info.sha256.clone()),
                expires_at: slot.current.info.expires_at,
                error: None,
            }
        }
        Err(why) => {
            ev.reason = why.clone();
            Answer { error: Some(format!("refused: {why}")), ..Default::default() }
        }
    };
    let _ = ctx.events.send(ev);
    a
}

/// Asks the broker at `socket` for `name` (the `warden secret get` side).
pub fn fetch(socket: &Path, name: &str) -> Result<(zeroize::Zeroizing<Vec<u8>>, Option<u64>), String> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the secrets broker at {}: {e}", socket.display()))?;
    let mut req = serde_json::to_vec(&Request { name: name.into() }).map_err(|e| e.to_string())?;
    req.push(b'\n');
    s.write_all(&req).map_err(|e| format!("broker {}: {e}", socket.display()))?;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("broker {}: {e}", socket.display()))?;
    let a: Answer =
        serde_json::from_str(line.trim_end()).map_err(|_| "the broker's answer is malformed".to_string())?;
    if let Some(e) = a.error {
        return Err(e);
    }
    let v = a.value_b64.ok_or("the broker sent no value")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&v)
        .map_err(|_| "the broker's value is malformed")?;
    Ok((zeroize::Zeroizing::new(bytes), a.expires_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creds::peer::Proc;

    fn proc(pid: u32, ino: u64, cg: &str) -> Proc {
        Proc {
            pid,
            ppid: pid - 1,
            exe: PathBuf::from(format!("/bin/p{ino}")),
            dev: 1,
            ino,
            cgroup: Some(PathBuf::from(cg)),
        }
    }

    #[test]
    fn only_the_tool_or_what_it_started_inside_the_task_is_granted() {
        let tools = vec![FileId { dev: 1, ino: 7, path: "/usr/bin/git".into() }];
        let sb = Path::new("/cg/warden/t-1");
        // git itself.
        let c = Caller { proc: proc(10, 7, "/cg/warden/t-1"), ancestors: vec![] };
        assert_eq!(judge(&tools, &c, sb), Ok(10));
        // warden secret get, started by sh, started by git (a credential helper).
        let c = Caller {
            proc: proc(12, 99, "/cg/warden/t-1/sub"),
            ancestors: vec![proc(11, 5, "/cg/warden/t-1"), proc(10, 7, "/cg/warden/t-1")],
        };
        assert_eq!(judge(&tools, &c, sb), Ok(10));
        // A shell that is not the tool.
        let c =
            Caller { proc: proc(12, 5, "/cg/warden/t-1"), ancestors: vec![proc(11, 6, "/cg/warden/t-1")] };
        let e = judge(&tools, &c, sb).unwrap_err();
        assert!(e.contains("is not /usr/bin/git"), "{e}");
        // The tool, but in another task.
        let c = Caller { proc: proc(10, 7, "/cg/warden/t-2"), ancestors: vec![] };
        assert!(judge(&tools, &c, sb).unwrap_err().contains("not a process of this task"));
        // A sibling cgroup whose name extends the sandbox's is not inside it.
        let c = Caller { proc: proc(10, 7, "/cg/warden/t-10"), ancestors: vec![] };
        assert!(judge(&tools, &c, sb).is_err());
    }
}
