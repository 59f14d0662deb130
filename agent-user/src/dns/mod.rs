//! Egress by name: the node's resolver.
//!
//! The kernel redirects every DNS query of a sandbox with `DNS_REDIRECT` to this resolver at
//! the sandbox slot's own loopback address (`agent_common::maps::DnsConfig`): one UDP socket
//! and one TCP listener per registered task, bound to that address. Which socket a query
//! arrives on is therefore the task, as the kernel decided it; nothing in the packet is
//! trusted for that. A query for a name the scope grants is forwarded upstream; before the
//! answer goes back, every address kept in it ([`policy::filter_answer`]) is added to the
//! task's egress trie with the granting rule's ports and an expiry the kernel checks. Other
//! names get REFUSED and never leave the node. Every query becomes a [`DnsEvent`], which the
//! owner of the pipeline turns into a `dns` record ([`Resolver::next_event`], and
//! [`Resolver::take_events`] when a task ends, before its `task_end`).
pub mod policy;

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent_common::maps::{DnsConfig, EGRESS_FULL_PREFIX, EgressAddr, EgressRules, PortRule};
use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Notify, Semaphore},
    task::JoinHandle,
};

use self::policy::{DropReason, filter_answer, merge_rules, norm_name, port_rules, rule_for};
use crate::{
    audit::{AuditRecord, Decision, clock::Clock},
    pipeline::Mode,
    scope::{DnsSettings, HostRule},
};

/// Default first address of the per-slot range: slot `s` is `127.77.0.1 + s`.
pub const DEFAULT_ADDR_BASE: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 1);
/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A TCP client connection is closed after this long without a query.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries of one task in flight at once; UDP queries beyond are dropped (the client retries).
const IN_FLIGHT: usize = 256;

/// Errors setting up the resolver for a task.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot bind the task's resolver address {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(
        "no upstream resolver: /etc/resolv.conf names no nameserver; set network.dns.upstream in the scope"
    )]
    NoUpstream,
    #[error("slot {0} is outside the resolver's address range")]
    Slot(u32),
    #[error("this Warden runs no resolver (egress by name)")]
    NoResolver,
}

/// A task the resolver serves.
#[derive(Debug, Clone)]
pub struct TaskDns {
    pub task: String,
    pub slot: u32,
    pub mode: Mode,
    pub hosts: Vec<HostRule>,
    /// Upstreams filled in (the scope's, or the node's).
    pub settings: DnsSettings,
}

impl TaskDns {
    /// The resolver's view of a task: its host rules and DNS settings, the node's nameservers
    /// standing in for an empty `upstream`.
    pub fn new(task: &str, slot: u32, scope: &crate::scope::Scope) -> Result<Option<Self>, DnsError> {
        let Some(settings) = &scope.dns else { return Ok(None) };
        let mut settings = settings.clone();
        if settings.upstream.is_empty() {
            settings.upstream =
                node_upstreams(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
        }
        if settings.upstream.is_empty() {
            return Err(DnsError::NoUpstream);
        }
        Ok(Some(TaskDns {
            task: task.to_string(),
            slot,
            mode: scope.mode,
            hosts: scope.hosts.clone(),
            settings,
        }))
    }
}

/// The `nameserver` addresses of a resolv.conf text, on port 53.
pub fn node_upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// One query and what was decided (becomes a `dns` record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    pub task: String,
    /// `bpf_ktime_get_boot_ns`-compatible time the query arrived.
    pub boot_ns: u64,
    pub name: String,
    pub qtype: String,
    pub decision: Decision,
    /// The host rule that granted the name.
    pub host: Option<String>,
    /// Addresses kept in the answer (and granted when `decision` is allow).
    pub answers: Vec<String>,
    /// Addresses dropped from the answer, as `address (reason)`.
    pub dropped: Vec<String>,
    /// The response code the task got (`NOERROR`, `REFUSED`, `SERVFAIL`, ...).
    pub rcode: String,
    pub latency_us: u64,
    /// `udp` or `tcp`.
    pub transport: &'static str,
}

impl DnsEvent {
    /// The audit record of this query.
    pub fn record(&self, clock: &Clock) -> AuditRecord {
        AuditRecord {
            time: clock.format(self.boot_ns),
            task: self.task.clone(),
            kind: crate::audit::Kind::Dns,
            decision: Some(self.decision),
            action: (self.decision == Decision::Deny).then_some("refuse"),
            rule: (self.decision != Decision::Allow || self.host.is_some()).then_some("network.egress"),
            protocol: Some(self.transport.to_string()),
            query: Some(self.name.clone()),
            qtype: Some(self.qtype.clone()),
            host: self.host.clone(),
            answers: Some(self.answers.clone()),
            dropped: Some(self.dropped.clone()),
            rcode: Some(self.rcode.clone()),
            latency_us: Some(self.latency_us),
            ..Default::default()
        }
    }
}

/// A served task: its id and the tokio tasks serving it.
type Served = (String, Vec<JoinHandle<()>>);

/// Shared state of the resolver.
struct Inner {
    addr_base: Ipv4Addr,
    slots: u32,
    port: Mutex<u16>,
    trie: Mutex<LpmTrie<MapData, EgressAddr, EgressRules>>,
    /// Slot → (task id, its serving tasks). Held while a grant is written, so once
    /// [`Resolver::unregister`] returns no grant for the slot is in flight or can start.
    tasks: Mutex<HashMap<u32, Served>>,
    /// Answered queries not yet recorded (bounded by the tasks' in-flight limits and drained
    /// by the owner of the pipeline).
    events: Mutex<VecDeque<DnsEvent>>,
    event_ready: Notify,
}

impl Inner {
    fn push_event(&self, ev: DnsEvent) {
        self.events.lock().expect("events lock").push_back(ev);
        self.event_ready.notify_one();
    }

    /// Whether `task` is served now.
    fn serves(&self, task: &str) -> bool {
        self.tasks.lock().expect("tasks lock").values().any(|(id, _)| id == task)
    }
}

/// The resolver's own runtime: one thread (`warden-dns`) that does nothing but answer
/// queries. Queries never wait for the owner's work — in `warden run` the same thread drains
/// and writes the task's records, and a batch of records every drain tick held queries up for
/// milliseconds (issue 11's p99; docs/benchmarks.md). Shut down when the last [`Resolver`]
/// handle goes, which ends every serving task with it.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Runtime {
    fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("warden-dns")
            .on_thread_start(raise_priority)
            .enable_all()
            .build()
            .expect("the resolver's runtime (one thread) cannot be built");
        Self(Some(rt))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("runtime present until drop").handle()
    }
}

/// Nice value of the resolver's thread. A task waits on every query it sends, so the thread
/// that answers is latency-bound: at the default nice, on a node busy with other work, the
/// scheduler let a woken resolver wait for another process's whole slice (2–8 ms measured with
/// a compiler on both cores, docs/benchmarks.md). The work it does at this priority is bounded
/// per task (`IN_FLIGHT` queries, each a parse, one forward, a table write and an encode).
pub const RESOLVER_NICE: i32 = -10;

/// Runs on the resolver's thread(s): raises this thread's priority to [`RESOLVER_NICE`].
/// Without the privilege (`CAP_SYS_NICE`) the thread keeps its nice and answers all the same.
fn raise_priority() {
    // SAFETY: gettid takes nothing; setpriority on this thread's id (Linux's nice is
    // per-thread) with an integer value.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, RESOLVER_NICE)
    };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), nice = RESOLVER_NICE, "resolver thread keeps its priority");
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The node's resolver: serves every registered task on its slot's address, on a thread of
/// its own.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
    rt: Arc<Runtime>,
}

impl Resolver {
    /// A resolver writing grants into `trie` (the sensor's `EGRESS` map), serving slots
    /// `0..slots` at `addr_base + slot`. `port` 0 picks a free port at the first registration.
    pub fn new(
        trie: LpmTrie<MapData, EgressAddr, EgressRules>,
        addr_base: Ipv4Addr,
        slots: u32,
        port: u16,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                addr_base,
                slots,
                port: Mutex::new(port),
                trie: Mutex::new(trie),
                tasks: Mutex::new(HashMap::new()),
                events: Mutex::new(VecDeque::new()),
                event_ready: Notify::new(),
            }),
            rt: Arc::new(Runtime::start()),
        }
    }

    /// What the kernel needs to redirect to this resolver (`DNS_CONFIG`).
    pub fn dns_config(&self) -> DnsConfig {
        DnsConfig {
            addr_base: u32::from(self.inner.addr_base),
            slots: self.inner.slots,
            port: self.port(),
            ..Default::default()
        }
    }

    /// The next answered query of a task still served (queries of tasks that ended
    /// meanwhile are dropped: their chains are closed).
    pub async fn next_event(&self) -> DnsEvent {
        loop {
            let next = self.inner.events.lock().expect("events lock").pop_front();
            match next {
                Some(ev) if self.inner.serves(&ev.task) => return ev,
                Some(ev) => {
                    tracing::debug!(task = %ev.task, name = %ev.name, "query of an ended task not recorded")
                }
                None => self.inner.event_ready.notified().await,
            }
        }
    }

    /// Every answered query not recorded yet, of tasks still served or of `ending` (a task
    /// whose end is being recorded).
    pub fn take_events(&self, ending: Option<&str>) -> Vec<DnsEvent> {
        let all: Vec<DnsEvent> = self.inner.events.lock().expect("events lock").drain(..).collect();
        all.into_iter().filter(|ev| ending == Some(ev.task.as_str()) || self.inner.serves(&ev.task)).collect()
    }

    /// The port the resolver serves on (0 until a port was picked).
    pub fn port(&self) -> u16 {
        *self.inner.port.lock().expect("port lock")
    }

    /// The address queries of `slot` arrive on.
    pub fn slot_addr(&self, slot: u32) -> Result<Ipv4Addr, DnsError> {
        if slot >= self.inner.slots {
            return Err(DnsError::Slot(slot));
        }
        u32::from(self.inner.addr_base)
            .checked_add(slot)
            .map(Ipv4Addr::from)
            .filter(Ipv4Addr::is_loopback)
            .ok_or(DnsError::Slot(slot))
    }

    /// Starts serving `task` on its slot's address (UDP and TCP), on the resolver's own
    /// thread. Returns the port.
    pub fn register(&self, task: TaskDns) -> Result<u16, DnsError> {
        let addr = self.slot_addr(task.slot)?;
        let rt = self.rt.handle();
        // The sockets belong to the resolver's runtime (its reactor drives them).
        let _in_rt = rt.enter();
        let mut port = self.inner.port.lock().expect("port lock");
        let (udp, tcp) = bind_pair(addr, *port)?;
        *port = udp.local_addr().map(|a| a.port()).unwrap_or(*port);
        let bound = *port;
        drop(port);
        let slot = task.slot;
        let id = task.task.clone();
        let task = Arc::new(task);
        let gate = Arc::new(Semaphore::new(IN_FLIGHT));
        let udp = Arc::new(udp);
        let handles = vec![
            rt.spawn(serve_udp(self.inner.clone(), task.clone(), udp, gate.clone())),
            rt.spawn(serve_tcp(self.inner.clone(), task, tcp, gate)),
        ];
        if let Some((_, old)) = self.inner.tasks.lock().expect("tasks lock").insert(slot, (id, handles)) {
            old.iter().for_each(JoinHandle::abort);
        }
        tracing::debug!(slot, %addr, port = bound, "resolver serving task");
        Ok(bound)
    }

    /// Stops serving `slot` (its sockets close). Its grants are removed with the sandbox's
    /// egress entries (`Sensor::unbind`).
    pub fn unregister(&self, slot: u32) {
        if let Some((_, h)) = self.inner.tasks.lock().expect("tasks lock").remove(&slot) {
            h.iter().for_each(JoinHandle::abort);
        }
    }
}

/// The next query `resolver` answered (never, without a resolver): for `select!` loops.
pub async fn next_event(resolver: Option<&Resolver>) -> DnsEvent {
    match resolver {
        Some(r) => r.next_event().await,
        None => std::future::pending().await,
    }
}

/// Binds the UDP socket and TCP listener of one slot address on the same port (a free one
/// when `port` is 0).
fn bind_pair(addr: Ipv4Addr, port: u16) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_err = |p: u16, source| DnsError::Bind { addr: SocketAddr::new(addr.into(), p), source };
    for _ in 0..32 {
        let udp = std::net::UdpSocket::bind((addr, port)).map_err(|e| bind_err(port, e))?;
        let p = udp.local_addr().map_err(|e| bind_err(port, e))?.port();
        match std::net::TcpListener::bind((addr, p)) {
            Ok(tcp) => {
                udp.set_nonblocking(true).map_err(|e| bind_err(p, e))?;
                tcp.set_nonblocking(true).map_err(|e| bind_err(p, e))?;
                let udp = UdpSocket::from_std(udp).map_err(|e| bind_err(p, e))?;
                let tcp = TcpListener::from_std(tcp).map_err(|e| bind_err(p, e))?;
                return Ok((udp, tcp));
            }
            Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(bind_err(p, e)),
        }
    }
    Err(bind_err(port, io::Error::from(io::ErrorKind::AddrInUse)))
}

async fn serve_udp(inner: Arc<Inner>, task: Arc<TaskDns>, sock: Arc<UdpSocket>, gate: Arc<Semaphore>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, task = %task.task, "resolver UDP receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            tracing::debug!(task = %task.task, "resolver busy: UDP query dropped");
            continue;
        };
        let query = buf[..n].to_vec();
        let (inner, task, sock) = (inner.clone(), task.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some((resp, ev)) = answer(&inner, &task, &query, "udp").await {
                if let Some(resp) = resp {
                    let _ = sock.send_to(&resp, peer).await;
                }
                // After the answer is out: the record's owner, woken by this, must not run
                // between the decision and the task getting its answer.
                inner.push_event(ev);
            }
            drop(permit);
        });
    }
}

async fn serve_tcp(inner: Arc<Inner>, task: Arc<TaskDns>, listener: TcpListener, gate: Arc<Semaphore>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (inner, task, gate) = (inner.clone(), task.clone(), gate.clone());
        tokio::spawn(async move {
            let _ = serve_tcp_conn(&inner, &task, stream, &gate).await;
        });
    }
}

async fn serve_tcp_conn(inner: &Inner, task: &TaskDns, mut s: TcpStream, gate: &Semaphore) -> io::Result<()> {
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, s.read_u16()).await {
            Ok(Ok(l)) => l,
            _ => return Ok(()),
        };
        let mut q = vec![0u8; usize::from(len)];
        tokio::time::timeout(TCP_IDLE, s.read_exact(&mut q)).await.map_err(io::Error::other)??;
        let _permit = gate.acquire().await.map_err(io::Error::other)?;
        let Some((resp, ev)) = answer(inner, task, &q, "tcp").await else { return Ok(()) };
        let Some(rlen) = resp.as_ref().and_then(|r| u16::try_from(r.len()).ok()) else {
            inner.push_event(ev);
            return Ok(());
        };
        let sent = async {
            s.write_u16(rlen).await?;
            s.write_all(resp.as_deref().unwrap_or_default()).await
        }
        .await;
        inner.push_event(ev);
        sent?;
    }
}

/// A response with only a code (and the question, when there was one).
fn bare_response(q: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut r = Message::error_msg(q.metadata.id, q.metadata.op_code, code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.queries = q.queries.clone();
    r.to_vec().ok()
}

/// Judges and answers one query: the response (none if it cannot be encoded) and the query's
/// event, which the caller records once the response is sent; `None` drops the query (not a
/// DNS query at all).
async fn answer(
    inner: &Inner,
    task: &TaskDns,
    query: &[u8],
    transport: &'static str,
) -> Option<(Option<Vec<u8>>, DnsEvent)> {
    let started = Instant::now();
    let boot_ns = Clock::boot_now_ns();
    // Bytes from the task: parsed by hickory, never trusted.
    let msg = match Message::from_vec(query) {
        Ok(m) if m.metadata.message_type == MessageType::Query => m,
        Ok(_) => return None,
        Err(e) => {
            tracing::debug!(task = %task.task, error = %e, "malformed DNS query dropped");
            return None;
        }
    };
    let mut ev = DnsEvent {
        task: task.task.clone(),
        boot_ns,
        name: String::new(),
        qtype: String::new(),
        decision: Decision::Deny,
        host: None,
        answers: Vec::new(),
        dropped: Vec::new(),
        rcode: String::new(),
        latency_us: 0,
        transport,
    };
    let audit = task.mode == Mode::Audit;
    let finish = |mut ev: DnsEvent, code: ResponseCode| {
        ev.rcode = format!("{code:?}").to_uppercase();
        ev.latency_us = started.elapsed().as_micros() as u64;
        ev
    };
    if msg.metadata.op_code != OpCode::Query || msg.queries.len() != 1 {
        // NOTIFY, UPDATE, several questions: nothing a task needs, a channel it could use.
        ev.name = msg.queries.first().map(|q| norm_name(q.name())).unwrap_or_default();
        ev.qtype = format!("{:?}", msg.metadata.op_code).to_uppercase();
        return Some((bare_response(&msg, ResponseCode::Refused), finish(ev, ResponseCode::Refused)));
    }
    let q = &msg.queries[0];
    ev.name = norm_name(q.name());
    ev.qtype = q.query_type().to_string();
    let rule = rule_for(&task.hosts, &ev.name);
    ev.host = rule.map(|r| r.pattern.clone());
    if rule.is_none() && !audit {
        return Some((bare_response(&msg, ResponseCode::Refused), finish(ev, ResponseCode::Refused)));
    }
    ev.decision = if rule.is_some() { Decision::Allow } else { Decision::Audit };
    let Some(mut resp) = forward(&task.settings.upstream, query, &msg, transport).await else {
        return Some((bare_response(&msg, ResponseCode::ServFail), finish(ev, ResponseCode::ServFail)));
    };
    let filtered = filter_answer(&mut resp, &ev.name, &task.settings);
    let mut dropped = filtered.dropped;
    let mut refused_ips = Vec::new();
    match rule {
        Some(rule) => {
            let now = Clock::boot_now_ns();
            for k in &filtered.kept {
                let expires = now.saturating_add(k.ttl.as_nanos() as u64);
                if inner.grant(task, k.ip, &port_rules(rule, expires), now) {
                    ev.answers.push(k.ip.to_string());
                } else {
                    dropped.push((k.ip, DropReason::TableFull));
                    refused_ips.push(k.ip);
                }
            }
        }
        None => ev.answers = filtered.kept.iter().map(|k| k.ip.to_string()).collect(),
    }
    if !refused_ips.is_empty() {
        resp.answers.retain(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => !refused_ips.contains(&IpAddr::V4(a.0)),
            hickory_proto::rr::RData::AAAA(a) => !refused_ips.contains(&IpAddr::V6(a.0)),
            _ => true,
        });
    }
    ev.dropped = dropped.iter().map(|(ip, why)| format!("{ip} ({})", why.as_str())).collect();
    let code = resp.metadata.response_code;
    let out = resp.to_vec().ok();
    Some((out, finish(ev, code)))
}

impl Inner {
    /// Adds `add` to the egress-trie value deciding for `ip` in the task's slot; false when it
    /// cannot, or when the task is no longer served (its entries are being removed).
    fn grant(&self, task: &TaskDns, ip: IpAddr, add: &[PortRule], now_ns: u64) -> bool {
        let slot = task.slot;
        let tasks = self.tasks.lock().expect("tasks lock");
        if tasks.get(&slot).is_none_or(|(id, _)| *id != task.task) {
            return false;
        }
        let addr = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        let key = Key::new(EGRESS_FULL_PREFIX, EgressAddr { slot_be: slot.to_be_bytes(), addr });
        let mut trie = self.trie.lock().expect("trie lock");
        // The longest match already folds in the CIDR rules covering the address.
        let current = trie.get(&key, 0).ok();
        let Some(value) = merge_rules(current.as_ref(), add, now_ns) else { return false };
        let r = trie.insert(&key, value, 0);
        drop(tasks);
        match r {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(slot, %ip, error = %e, "cannot grant a resolved address (egress table full?)");
                false
            }
        }
    }
}

/// Sends the task's query to the upstreams in order until one answers it; the response is
/// checked against the question before it is used.
async fn forward(upstreams: &[SocketAddr], query: &[u8], q: &Message, transport: &str) -> Option<Message> {
    for up in upstreams {
        let raw = match transport {
            "tcp" => tokio::time::timeout(UPSTREAM_TIMEOUT, forward_tcp(*up, query)).await,
            _ => tokio::time::timeout(UPSTREAM_TIMEOUT, forward_udp(*up, query)).await,
        };
        let Ok(Ok(raw)) = raw else {
            tracing::debug!(upstream = %up, "upstream did not answer");
            continue;
        };
        match Message::from_vec(&raw) {
            Ok(r)
                if r.metadata.id == q.metadata.id
                    && r.metadata.message_type == MessageType::Response
                    && r.queries == q.queries =>
            {
                return Some(r);
            }
            _ => tracing::debug!(upstream = %up, "upstream answer does not match the question"),
        }
    }
    None
}

async fn forward_udp(up: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if up.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("constant");
    let s = UdpSocket::bind(local).await?;
    s.connect(up).await?;
    s.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = s.recv(&mut buf).await?;
        if n >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(up: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(up).await?;
    let len = u16::try_from(query.len()).map_err(io::Error::other)?;
    s.write_u16(len).await?;
    s.write_all(query).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nameservers_from_resolv_conf() {
        let text = "# comment\nsearch example\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        assert_eq!(
            node_upstreams(text),
            vec!["127.0.0.53:53".parse::<SocketAddr>().unwrap(), "[fe80::1]:53".parse().unwrap()]
        );
    }

    #[test]
    fn dns_records_carry_the_decision() {
        let ev = DnsEvent {
            task: "t-1".into(),
            boot_ns: 0,
            name: "evil.example".into(),
            qtype: "TXT".into(),
            decision: Decision::Deny,
            host: None,
            answers: vec![],
            dropped: vec![],
            rcode: "Refused".into(),
            latency_us: 12,
            transport: "udp",
        };
        let r = ev.record(&Clock::new());
        assert_eq!(
            (r.kind, r.action, r.rule),
            (crate::audit::Kind::Dns, Some("refuse"), Some("network.egress"))
        );
        assert_eq!(r.query.as_deref(), Some("evil.example"));
    }
}
