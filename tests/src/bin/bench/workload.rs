//! The measured workloads, run by a worker process (`warden-bench __worker ...`).
//!
//! Every run is a fresh worker process, so the three configurations pay exactly the same
//! start-up costs and configuration (c) can place the worker in the sandbox cgroup before its
//! first instruction. The worker warms up, times its loop with `CLOCK_BOOTTIME` (the clock of
//! `bpf_ktime_get_boot_ns`, so the orchestrator can match kernel records to the timed window)
//! and prints one JSON line.
use std::{
    ffi::CString,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// A workload: one operation repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// `open(O_RDONLY)` + `close` of an existing file.
    Open,
    /// Spawn `/bin/true` and wait for it.
    Exec,
    /// `connect` to a listener on 127.0.0.1 + `close`; a server thread accepts.
    Connect,
    /// `fork` + `_exit` in the child + `waitpid`: the highest lifecycle-event rate.
    Fork,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::Open, Workload::Exec, Workload::Connect, Workload::Fork];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Open => "open",
            Workload::Exec => "exec",
            Workload::Connect => "connect",
            Workload::Fork => "fork",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .with_context(|| format!("unknown workload `{s}` (known: open, exec, connect, fork)"))
    }

    pub fn describe(self) -> &'static str {
        match self {
            Workload::Open => "open()+close() of an existing file",
            Workload::Exec => "fork+exec of /bin/true, then wait",
            Workload::Connect => "TCP connect()+close() to 127.0.0.1, server thread accepting",
            Workload::Fork => "fork(), child _exit(0), waitpid",
        }
    }

    /// Operations per run by default: about 0.3–1 s each on a small VM.
    pub fn default_ops(self) -> u64 {
        match self {
            Workload::Open => 400_000,
            Workload::Exec => 1_500,
            Workload::Connect => 20_000,
            Workload::Fork => 6_000,
        }
    }

    /// Slowdown target for configuration (c), as a time-per-operation ratio to (a).
    pub fn target_c(self) -> Option<f64> {
        match self {
            Workload::Open => Some(1.3),
            Workload::Exec => Some(1.2),
            Workload::Connect => Some(1.1),
            Workload::Fork => None,
        }
    }
}

/// Untimed operations a worker runs before its timed loop.
pub fn warmup_ops(ops: u64) -> u64 {
    (ops / 10).max(1)
}

/// What a worker reports.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub ops: u64,
    pub elapsed_ns: u64,
    /// `CLOCK_BOOTTIME` at the start and end of the timed loop.
    pub start_boot_ns: u64,
    pub end_boot_ns: u64,
    /// The worker's cgroup v2 path (the `0::` line of `/proc/self/cgroup`).
    pub cgroup: String,
    /// CPU time (user + system) the worker and its waited-for children used in the timed
    /// loop: what a shared host's other processes move far less than wall time.
    pub cpu_ns: u64,
}

impl WorkerReport {
    pub fn parse(line: &str) -> anyhow::Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("bad worker output {line:?}"))?;
        let n = |k: &str| {
            v.get(k).and_then(serde_json::Value::as_u64).with_context(|| format!("worker output lacks {k}"))
        };
        Ok(Self {
            ops: n("ops")?,
            elapsed_ns: n("elapsed_ns")?,
            start_boot_ns: n("start_boot_ns")?,
            end_boot_ns: n("end_boot_ns")?,
            cgroup: v.get("cgroup").and_then(serde_json::Value::as_str).unwrap_or_default().to_string(),
            cpu_ns: n("cpu_ns")?,
        })
    }

    /// CPU time per operation of the timed loop, in ns.
    pub fn cpu_ns_per_op(&self) -> f64 {
        self.cpu_ns as f64 / self.ops.max(1) as f64
    }
}

/// `CLOCK_BOOTTIME` in nanoseconds.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time (user + system) of this process, all its threads, plus that of its children
/// waited for so far, in ns (`getrusage` `RUSAGE_SELF` + `RUSAGE_CHILDREN`). An exec's kernel
/// work (and the hooks on it) runs in the child, so the children's share is part of the
/// operation's cost.
pub fn cpu_ns() -> u64 {
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    let mut total = 0;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: valid out-pointer of the right type.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage with a valid `who` and out-pointer.
        unsafe { libc::getrusage(who, &mut ru) };
        total += tv(ru.ru_utime) + tv(ru.ru_stime);
    }
    total
}

/// The cgroup v2 path of this process.
pub fn own_cgroup() -> String {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

/// Entry point of `warden-bench __worker <workload> <ops> <warmup> <file>`.
pub fn worker_main(args: &[String]) -> anyhow::Result<()> {
    let [w, ops, warmup, file] = args else {
        bail!("usage: warden-bench __worker <workload> <ops> <warmup-ops> <file>");
    };
    if w == "dns" {
        return dns_worker(ops.parse().context("ops")?, warmup.parse().context("warmup ops")?, file);
    }
    let w = Workload::parse(w)?;
    let ops: u64 = ops.parse().context("ops")?;
    let warmup: u64 = warmup.parse().context("warmup ops")?;
    let mut runner = Runner::new(w, file, ops + warmup)?;
    runner.run(warmup)?;
    let start_cpu = cpu_ns();
    let start_boot_ns = boot_ns();
    runner.run(ops)?;
    let end_boot_ns = boot_ns();
    let cpu = cpu_ns() - start_cpu;
    runner.finish()?;
    let report = serde_json::json!({
        "ops": ops,
        "cpu_ns": cpu,
        "cpu_total_ns": cpu_ns(),
        "elapsed_ns": end_boot_ns - start_boot_ns,
        "start_boot_ns": start_boot_ns,
        "end_boot_ns": end_boot_ns,
        "cgroup": own_cgroup(),
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{report}")?;
    out.flush()?;
    Ok(())
}

/// Per-workload state prepared before the timed loop.
enum Runner {
    Open { path: CString },
    Exec,
    Connect(ConnectStorm),
    Fork,
}

impl Runner {
    fn new(w: Workload, file: &str, total_ops: u64) -> anyhow::Result<Self> {
        Ok(match w {
            Workload::Open => {
                ensure!(std::path::Path::new(file).is_file(), "open storm: {file} is not a file");
                Runner::Open { path: CString::new(file).context("NUL in file path")? }
            }
            Workload::Exec => Runner::Exec,
            Workload::Connect => Runner::Connect(ConnectStorm::start(total_ops)?),
            Workload::Fork => Runner::Fork,
        })
    }

    fn run(&mut self, ops: u64) -> anyhow::Result<()> {
        match self {
            Runner::Open { path } => open_storm(path, ops),
            Runner::Exec => exec_storm(ops),
            Runner::Connect(c) => c.run(ops),
            Runner::Fork => fork_storm(ops),
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Runner::Connect(c) => c.finish(),
            _ => Ok(()),
        }
    }
}

fn open_storm(path: &CString, ops: u64) -> anyhow::Result<()> {
    for _ in 0..ops {
        // SAFETY: NUL-terminated path; the fd is closed right away.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("open storm: open");
        }
        // SAFETY: fd was just opened by us.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn exec_storm(ops: u64) -> anyhow::Result<()> {
    for _ in 0..ops {
        let status = Command::new("/bin/true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("exec storm: spawn /bin/true")?;
        ensure!(status.success(), "exec storm: /bin/true exited with {status}");
    }
    Ok(())
}

fn fork_storm(ops: u64) -> anyhow::Result<()> {
    for _ in 0..ops {
        // SAFETY: the child only calls the async-signal-safe `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork storm: fork");
        }
        if pid == 0 {
            // SAFETY: leaves the child immediately, running no destructors or atexit handlers.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        ensure!(r == pid && libc::WIFEXITED(status), "fork storm: waitpid({pid}) = {r}, status {status:#x}");
    }
    Ok(())
}

/// Connections the client may have ahead of the server's `accept`s. Keeps the accept queue
/// short: a full queue drops SYNs, and a retransmitted SYN would stall the client for a second.
const MAX_IN_FLIGHT: u64 = 64;

/// A listener on 127.0.0.1 with a server thread that accepts and closes.
struct ConnectStorm {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    server: std::thread::JoinHandle<anyhow::Result<()>>,
    connected: u64,
}

impl ConnectStorm {
    fn start(total_ops: u64) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("connect storm: bind 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        let server = std::thread::Builder::new().name("accept".into()).spawn(move || {
            while acc.load(Ordering::Relaxed) < total_ops && !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => {}
                    Err(e) => return Err(e).context("connect storm: accept"),
                }
                acc.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })?;
        Ok(Self { addr, accepted, stop, server, connected: 0 })
    }

    fn run(&mut self, ops: u64) -> anyhow::Result<()> {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        for _ in 0..ops {
            self.wait_for_server(MAX_IN_FLIGHT)?;
            let s = TcpStream::connect(self.addr).context("connect storm: connect")?;
            // Closing with a reset leaves no TIME_WAIT socket behind, so a storm of tens of
            // thousands of connections never runs out of (or searches long for) local ports.
            // SAFETY: valid socket and option buffer of the advertised size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            ensure!(r == 0, "connect storm: SO_LINGER: {}", std::io::Error::last_os_error());
            drop(s);
            self.connected += 1;
        }
        Ok(())
    }

    /// Waits until at most `ahead` connections are not yet accepted.
    fn wait_for_server(&self, ahead: u64) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.connected.saturating_sub(self.accepted.load(Ordering::Relaxed)) > ahead {
            if self.server.is_finished() {
                bail!("connect storm: the server thread stopped early");
            }
            if start.elapsed() > Duration::from_secs(10) {
                let behind = self.connected.saturating_sub(self.accepted.load(Ordering::Relaxed));
                bail!("connect storm: the server stayed {behind} accepts behind for 10 s");
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        self.wait_for_server(0)?;
        self.stop.store(true, Ordering::Relaxed);
        self.server.join().map_err(|_| anyhow::anyhow!("connect storm: server thread panicked"))?
    }
}

/// The name every DNS storm query asks for (A, class IN).
pub const DNS_NAME: &str = "allowed.test";

/// A DNS query for [`DNS_NAME`] with id `id`, recursion desired.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in DNS_NAME.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// `warden-bench __worker dns <queries> <warmup> <server>`: one UDP query at a time to
/// `server`, each waiting for its answer (which must be NOERROR with an answer); prints the
/// worker report plus p50/p99/max latency.
fn dns_worker(ops: u64, warmup: u64, server: &str) -> anyhow::Result<()> {
    let server: SocketAddr = server.parse().context("dns: server address")?;
    let sock = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("dns: bind")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 1500];
    let mut id: u16 = 0;
    let mut one = |lat: Option<&mut Vec<u64>>| -> anyhow::Result<()> {
        id = id.wrapping_add(1);
        let q = dns_query(id);
        let t = Instant::now();
        sock.send_to(&q, server).context("dns: send")?;
        loop {
            let n = sock.recv(&mut buf).context("dns: no answer within 2 s")?;
            if n >= 12 && buf[..2] == id.to_be_bytes() {
                let rcode = buf[3] & 0x0f;
                let answers = u16::from_be_bytes([buf[6], buf[7]]);
                ensure!(rcode == 0 && answers > 0, "dns: rcode {rcode}, {answers} answers for {DNS_NAME}");
                break;
            }
        }
        if let Some(l) = lat {
            l.push(t.elapsed().as_nanos() as u64);
        }
        Ok(())
    };
    for _ in 0..warmup {
        one(None)?;
    }
    let mut lat = Vec::with_capacity(ops as usize);
    let start_cpu = cpu_ns();
    let start_boot_ns = boot_ns();
    for _ in 0..ops {
        one(Some(&mut lat))?;
    }
    let end_boot_ns = boot_ns();
    let cpu = cpu_ns() - start_cpu;
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    let report = serde_json::json!({
        "ops": ops,
        "cpu_ns": cpu,
        "elapsed_ns": end_boot_ns - start_boot_ns,
        "start_boot_ns": start_boot_ns,
        "end_boot_ns": end_boot_ns,
        "cgroup": own_cgroup(),
        "p50_ns": pct(0.50),
        "p99_ns": pct(0.99),
        "max_ns": lat.last(),
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{report}")?;
    out.flush()?;
    Ok(())
}
