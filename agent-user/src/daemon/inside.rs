//! The call endpoint inside tasks: `warden call` in a task's process starts a call of the
//! caller's **own** task or call. One unix socket per daemon (`call.sock`, in a directory
//! beside the API socket's so that tasks running as another user reach it too; named to
//! tasks by `WARDEN_CALL_SOCKET`); every task's confinement lets it connect (like its broker). The caller is identified from the kernel — the socket's peer pidfd,
//! then its cgroup — and that cgroup alone decides the parent: the request names no task and
//! no parent, and there is no way to end anything through it. The daemon then starts the call
//! as `task exec --call` would (scope no wider than the parent's, its own cgroup and slot) and
//! runs the command itself, on the caller's standard streams (passed with `SCM_RIGHTS`), and
//! answers with its exit status when it exits.
//!
//! Wire format: the request, one JSON line, with the caller's fds 0, 1, 2 attached to its
//! first bytes; the answer, one JSON line.
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    api::CallRequest,
    protocol::{ApiError, Cmd},
};

/// The endpoint's file name, beside the API socket.
pub const SOCKET_NAME: &str = "call.sock";
/// The environment variable that names it inside tasks.
pub const ENV: &str = "WARDEN_CALL_SOCKET";
/// Longest request (a scope and an intent).
const MAX_REQUEST: usize = 1 << 20;
/// How long a caller may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Calls served at once through the endpoint (each holds a thread while its command runs).
const MAX_CONCURRENT: usize = 256;

/// What a caller inside a task asks for. No task, no parent: its cgroup decides.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsideRequest {
    pub name: String,
    #[serde(default)]
    pub scope_text: Option<String>,
    #[serde(default)]
    pub scope_path: Option<PathBuf>,
    #[serde(default)]
    pub intent: Option<String>,
    pub cmd: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
}

/// The answer: the call's id and its command's exit, or why it was refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsideAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The request was at fault (a wider scope, a bad name): `warden call` exits 2.
    #[serde(default)]
    pub usage: bool,
}

/// Where a daemon whose API socket is `api` serves calls: in a directory of its own beside the
/// API socket's (`/run/warden/warden.sock` → `/run/warden.calls/call.sock`). The API socket's
/// directory is 0700, which keeps tasks that run as another `user:` from reaching anything
/// in it; the endpoint's directory is 0755 and holds nothing else.
pub fn socket_path(api: &Path) -> PathBuf {
    let dir = api.parent().filter(|d| d.file_name().is_some()).unwrap_or(Path::new("/run/warden"));
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{name}.calls")).join(SOCKET_NAME)
}

/// The endpoint's directory: created 0755 owned by root, or, when it exists, accepted only as
/// a real directory (not a symlink) owned by root that nobody else can write to — anyone who
/// could would be able to put their own socket in the daemon's place.
fn endpoint_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let md = std::fs::symlink_metadata(dir)?;
            if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
                return Err(std::io::Error::other(format!(
                    "{} must be a directory owned by root and writable by nobody else (remove it; the \
                     daemon recreates it)",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Removes the endpoint and its directory (at the daemon's exit).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Binds the endpoint (mode 0666: any process of any task may ask; its cgroup decides what
/// it gets) and serves it on threads of its own; the commands run on `rt`.
pub fn serve(
    path: &Path,
    cmds: mpsc::Sender<Cmd>,
    cgroup_mount: PathBuf,
    rt: tokio::runtime::Handle,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        endpoint_dir(dir)?;
    }
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new().name("warden-calls".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CONCURRENT {
                busy.fetch_sub(1, Ordering::SeqCst);
                answer(
                    &conn,
                    &InsideAnswer { error: Some("too many calls at once".into()), ..Default::default() },
                );
                continue;
            }
            let (cmds, mount, rt, busy) = (cmds.clone(), cgroup_mount.clone(), rt.clone(), busy.clone());
            let spawned = std::thread::Builder::new().name("warden-call".into()).spawn(move || {
                let a = handle(&conn, &cmds, &mount, &rt);
                answer(&conn, &a);
                busy.fetch_sub(1, Ordering::SeqCst);
            });
            if spawned.is_err() {
                tracing::error!("cannot start a thread for a call");
            }
        }
    })?;
    Ok(())
}

fn answer(conn: &UnixStream, a: &InsideAnswer) {
    let mut line = serde_json::to_vec(a).unwrap_or_default();
    line.push(b'\n');
    let _ = (&*conn).write_all(&line);
}

fn refuse(msg: impl Into<String>, usage: bool) -> InsideAnswer {
    InsideAnswer { error: Some(msg.into()), usage, ..Default::default() }
}

/// The caller's cgroup (absolute), from the kernel: the socket's peer pidfd, its pid's cgroup,
/// and the pidfd still alive after reading it (the pid was not reused meanwhile).
fn caller_cgroup(conn: &UnixStream, mount: &Path) -> Result<PathBuf, String> {
    let pidfd =
        crate::creds::peer::peer_pidfd(conn.as_raw_fd()).map_err(|e| format!("caller unknown: {e}"))?;
    let pid = crate::creds::peer::pidfd_pid(&pidfd)
        .map_err(|e| format!("caller unknown: {e}"))?
        .ok_or("the caller is gone")?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|_| "the caller is gone")?;
    if !crate::creds::peer::alive(&pidfd) {
        return Err("the caller is gone".into());
    }
    let rel =
        text.lines().find_map(|l| l.strip_prefix("0::")).ok_or("the caller is in no cgroup v2 cgroup")?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

fn handle(
    conn: &UnixStream,
    cmds: &mpsc::Sender<Cmd>,
    mount: &Path,
    rt: &tokio::runtime::Handle,
) -> InsideAnswer {
    let cgroup = match caller_cgroup(conn, mount) {
        Ok(c) => c,
        Err(e) => return refuse(e, false),
    };
    let _ = conn.set_read_timeout(Some(REQUEST_TIMEOUT));
    let (first, fds) = match recv_with_fds(conn.as_raw_fd()) {
        Ok(x) => x,
        Err(e) => return refuse(format!("reading the request: {e}"), true),
    };
    let Ok([stdin, stdout, stderr]): Result<[OwnedFd; 3], _> = fds.try_into() else {
        return refuse("the request must carry the caller's stdin, stdout and stderr", true);
    };
    let mut buf = first;
    let mut reader = BufReader::new(conn.take(MAX_REQUEST as u64));
    if !buf.contains(&b'\n') {
        let mut rest = Vec::new();
        if reader.read_until(b'\n', &mut rest).is_err() {
            return refuse("reading the request timed out", true);
        }
        buf.extend(rest);
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let req: InsideRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return refuse(format!("request: {e}"), true),
    };
    if req.cmd.is_empty() {
        return refuse("no command", true);
    }
    let _ = conn.set_read_timeout(None);
    let cmd = req.cmd.clone();
    let call = CallRequest {
        name: req.name,
        parent: None,
        scope_text: req.scope_text,
        scope_path: req.scope_path,
        intent: req.intent,
        cmd: req.cmd,
        cwd: req.cwd,
    };
    let (tx, rx) = oneshot::channel();
    if cmds.blocking_send(Cmd::StartInsideCall(cgroup, Box::new(call), tx)).is_err() {
        return refuse("the daemon is stopping", false);
    }
    let info = match rx.blocking_recv() {
        Ok(Ok(i)) => i,
        Ok(Err(ApiError { status, message })) => return refuse(message, status == 400 || status == 404),
        Err(_) => return refuse("the daemon dropped the request", false),
    };
    let id = info.call.clone();
    let status = rt.block_on(async {
        let mut child =
            crate::cli::task::spawn_in_task_io(&info.task, &cmd, false, None, Some([stdin, stdout, stderr]))
                .map_err(|e| format!("cannot start {}: {e}", cmd[0]))?;
        child.main_exit().await.map_err(|e| e.to_string())
    });
    match status {
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt;
            InsideAnswer { call: Some(id), exit_status: st.code(), signal: st.signal(), ..Default::default() }
        }
        Err(e) => InsideAnswer { call: Some(id), error: Some(e), ..Default::default() },
    }
}

/// Receives the first bytes of a request and the descriptors attached to them.
fn recv_with_fds(sock: RawFd) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; 64 * 1024];
    // Room for 3 descriptors (and a few more, closed).
    let mut cbuf = [0u8; 128];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: a zeroed msghdr is valid; the pointers set below point to locals that outlive
    // the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.len();
    // SAFETY: recvmsg with the buffers above; MSG_CMSG_CLOEXEC keeps the fds from leaking.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    data.truncate(n as usize);
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `cbuf`, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c).cast::<RawFd>();
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(p.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((data, fds))
}

/// Sends `data` with `fds` attached (the caller's side).
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; the pointers point to locals that outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer has room for one SCM_RIGHTS message with `fds` (CMSG_SPACE).
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
    }
    // SAFETY: sendmsg with the message built above.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_no_task_no_parent_and_no_end() {
        let ok: InsideRequest = serde_json::from_str(r#"{"name":"t","cmd":["x"]}"#).unwrap();
        assert_eq!(ok.name, "t");
        for extra in [r#""task":"other-1""#, r#""parent":"t-1/c1""#, r#""end":true"#] {
            let text = format!(r#"{{"name":"t","cmd":["x"],{extra}}}"#);
            assert!(serde_json::from_str::<InsideRequest>(&text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn descriptors_pass_with_the_request() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        send_with_fds(a.as_raw_fd(), b"{}\n", &[f.as_raw_fd(), 1, 2]).unwrap();
        let (data, fds) = recv_with_fds(b.as_raw_fd()).unwrap();
        assert_eq!(data, b"{}\n");
        assert_eq!(fds.len(), 3);
    }
}
