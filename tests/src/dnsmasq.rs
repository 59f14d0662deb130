//! A real DNS server for the egress-by-name tests: Debian's dnsmasq on a loopback address and
//! port of its own, serving a test zone from `--host-record`/`--cname` options, logging every
//! query it receives. Killed on drop.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The dnsmasq binary (`cargo xtask test` installs `dnsmasq-base`).
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A running dnsmasq.
pub struct Dnsmasq {
    child: Child,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq with these zone options (`--host-record=...`, `--cname=...`), on an
    /// address of 127.53.0.0/16 picked from the pid and a free port, so parallel tests never
    /// share a server.
    pub fn start(zone: &[String]) -> Dnsmasq {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = Ipv4Addr::new(127, 53, (std::process::id() % 250) as u8, (n % 250 + 1) as u8);
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("queries.log");
        for _ in 0..20 {
            let port = free_port(ip);
            let mut child = Command::new(DNSMASQ)
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--user=root",
                    // Named: its default group (`dip`) is not in the VM tier's /etc/group.
                    "--group=root",
                    "--pid-file=",
                    "--log-queries",
                ])
                .arg(format!("--listen-address={ip}"))
                .arg(format!("--port={port}"))
                .arg(format!("--log-facility={}", log.display()))
                .args(zone)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq (apt-get install dnsmasq-base)");
            let up = crate::wait_for(Duration::from_secs(5), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("started").then_some(true)
            });
            if up == Some(true) {
                return Dnsmasq { child, addr: SocketAddr::new(ip.into(), port), log, _dir: dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start on {ip}");
    }

    /// Everything dnsmasq logged so far (its `query[TYPE] NAME from ...` lines among it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The names it was asked for, as `TYPE NAME`.
    pub fn queries(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let rest = l.split("query[").nth(1)?;
                let (ty, rest) = rest.split_once("] ")?;
                Some(format!("{ty} {}", rest.split_whitespace().next()?))
            })
            .collect()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for both UDP and TCP on `ip` (released again for the caller to take).
fn free_port(ip: Ipv4Addr) -> u16 {
    loop {
        let u = UdpSocket::bind((ip, 0)).expect("bind udp");
        let p = u.local_addr().expect("addr").port();
        if TcpListener::bind((ip, p)).is_ok() {
            return p;
        }
    }
}

/// TCP listeners on one port at each of `addrs` (a free port shared by all).
pub fn listeners_on(addrs: &[&str]) -> (Vec<TcpListener>, u16) {
    'retry: loop {
        let first = TcpListener::bind((addrs[0], 0)).expect("bind");
        let port = first.local_addr().expect("addr").port();
        let mut v = vec![first];
        for a in &addrs[1..] {
            let sa: SocketAddr = SocketAddr::new(a.parse().expect("address"), port);
            match TcpListener::bind(sa) {
                Ok(l) => v.push(l),
                Err(_) => continue 'retry,
            }
        }
        return (v, port);
    }
}
