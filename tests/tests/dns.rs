//! Host tier: egress by name against a real DNS server (dnsmasq on loopback). The task asks
//! whatever resolver address it likes on port 53; the kernel sends it to Warden's resolver,
//! which forwards only names the scope grants, and the kernel admits only what it answered.
use warden_tests::{
    coverage,
    dnsmasq::{Dnsmasq, listeners_on},
    require, run_warden,
};

const PROBE: &str = env!("CARGO_BIN_EXE_warden-probe");

/// The test zone: A and AAAA on loopback, a CNAME chain, a 1-second TTL, answers into private
/// and metadata ranges, a name outside the scope, and an answer too large for UDP.
fn zone() -> Vec<String> {
    let mut z: Vec<String> = [
        "--host-record=allowed.test,127.0.99.1,::1",
        "--host-record=other.test,127.0.99.2",
        "--host-record=uring.test,127.0.99.4",
        "--host-record=short.test,127.0.99.3,1",
        "--cname=alias.test,mid.test",
        "--cname=mid.test,allowed.test",
        "--host-record=internal.test,10.1.2.3",
        "--host-record=meta.test,169.254.169.254",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 1..=60 {
        z.push(format!("--host-record=big.test,127.0.98.{i}"));
    }
    z
}

/// A scope granting `hosts` on `port` (TCP), 127.0.97.0/24 by address, resolving through
/// `upstream`, keeping loopback answers, with a 1-second minimum TTL.
fn scope(task: &str, hosts: &[&str], upstream: std::net::SocketAddr, port: u16) -> String {
    let rules: String = hosts
        .iter()
        .map(|h| format!("    - host: \"{h}\"\n      ports: [{port}]\n      protocol: tcp\n"))
        .collect();
    format!(
        "version: 1
task: {task}
network:
  egress:
{rules}    - to: 127.0.97.0/24
      ports: [{port}]
  dns:
    upstream: [\"{upstream}\"]
    accept_private: [127.0.0.0/8, \"::1/128\"]
    min_ttl: 1s
grant: [io-uring]
"
    )
}

#[test]
fn names_in_the_scope_resolve_and_connect_nothing_else_leaves() {
    if !require("names_in_the_scope_resolve_and_connect_nothing_else_leaves", "cgroup_sock_addr") {
        return;
    }
    let dns = Dnsmasq::start(&zone());
    let (_l, port) = listeners_on(&["127.0.99.1", "127.0.99.2", "::1", "127.0.97.1", "127.0.99.4"]);
    let up = dns.addr;
    let scope = scope("dns-names", &["allowed.test", "internal.test", "meta.test", "uring.test"], up, port);
    let p = PROBE;
    let script = format!(
        "{p} connect 127.0.99.1 {port} | sed s/^connect/before/
         {p} dns udp 8.8.8.8 53 allowed.test A | sed s/^dns/q-udp/
         {p} connect 127.0.99.1 {port} | sed s/^connect/after/
         {p} uring-connect 127.0.99.1 {port} | sed s/^uring-connect/uring-after/
         {p} connect 127.0.99.2 {port} | sed s/^connect/unresolved/
         {p} uring-connect 127.0.99.2 {port} | sed s/^uring-connect/uring-unresolved/
         {p} connect 127.0.97.1 {port} | sed s/^connect/cidr/
         {p} dns udp-connected 10.0.0.53 53 other.test A | sed s/^dns/q-other/
         {p} dns tcp 10.0.0.53 53 other.test TXT | sed s/^dns/q-other-tcp/
         {p} dns udp {} {} other.test A | sed s/^dns/q-direct/
         {p} dns udp 8.8.4.4 53 internal.test A | sed s/^dns/q-private/
         {p} dns udp 8.8.4.4 53 meta.test A | sed s/^dns/q-meta/
         {p} connect 10.1.2.3 {port} | sed s/^connect/private-connect/
         {p} dns udp-connected ::1 53 allowed.test AAAA | sed s/^dns/q-v6/
         {p} connect ::1 {port} | sed s/^connect/v6-after/
         {p} dns udp ::ffff:8.8.8.8 53 allowed.test A | sed s/^dns/q-mapped/
         {p} connect ::ffff:127.0.99.1 {port} | sed s/^connect/mapped-after/
         {p} dns udp 2001:db8::53 53 allowed.test A | sed s/^dns/q-v6-unconnected/
         {p} udp-peer 10.0.0.53 53 | sed s/^udp-peer/peer-v4/
         {p} udp-peer ::1 53 | sed s/^udp-peer/peer-v6/
         {p} udp-peer ::ffff:8.8.8.8 53 | sed s/^udp-peer/peer-mapped/
         {p} connect 127.0.99.4 {port} | sed s/^connect/uring-before/
         {p} dns uring-sendmsg 8.8.8.8 53 uring.test A | sed s/^dns/uq-sendmsg/
         {p} connect 127.0.99.4 {port} | sed s/^connect/uring-granted/
         {p} dns uring-connect 10.0.0.53 53 other.test A | sed s/^dns/uq-other/
         {p} dns uring-sendmsg 9.9.9.9 53 other.test A | sed s/^dns/uq-other-sendmsg/
         {p} dns uring-connect ::1 53 allowed.test AAAA | sed s/^dns/uq-v6/
         {p} dns uring-sendmsg {} {} allowed.test A | sed s/^dns/uq-direct/
         true",
        up.ip(),
        up.port(),
        up.ip(),
        up.port()
    );
    let out = run_warden(&scope, &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    // Before the name is resolved its address is refused; after, it is reachable, also
    // through io_uring; an address never answered stays refused.
    assert_eq!(out.result("before"), "err 1");
    assert_eq!(
        out.result("q-udp"),
        "ok NoError 127.0.99.1 from=8.8.8.8:53",
        "reply seems to come from where it was sent"
    );
    assert_eq!(out.result("after"), "ok");
    assert_eq!(out.result("uring-after"), "ok");
    assert_eq!(out.result("unresolved"), "err 1");
    assert_eq!(out.result("uring-unresolved"), "err 1");
    assert_eq!(out.result("cidr"), "ok", "CIDR rules stay as they are");
    // A name outside the scope: REFUSED, recorded, and never sent upstream.
    assert_eq!(out.result("q-other"), "ok Refused - from=10.0.0.53:53");
    assert!(out.result("q-other-tcp").starts_with("ok Refused -"), "{}", out.stdout);
    let queries = dns.queries();
    assert!(queries.contains(&"A allowed.test".to_string()), "{queries:?}\n{}", dns.log());
    assert!(!dns.log().contains("other.test"), "a refused name reached the server:\n{}", dns.log());
    // Straight to the real server's port: refused by the egress rules, recorded.
    assert_eq!(out.result("q-direct"), "err 1");
    // Answers into private and metadata ranges are dropped, recorded, and not granted.
    assert_eq!(out.result("q-private"), "ok NoError - from=8.8.4.4:53");
    assert_eq!(out.result("q-meta"), "ok NoError - from=8.8.4.4:53");
    assert_eq!(out.result("private-connect"), "err 1");
    // IPv6: a connected socket is redirected (and sees the reply from ::1); an unconnected
    // datagram to a native IPv6 address cannot be and is refused.
    assert_eq!(out.result("q-v6"), "ok NoError ::1 from=[::1]:53");
    assert_eq!(out.result("v6-after"), "ok");
    assert_eq!(out.result("q-mapped"), "ok NoError 127.0.99.1 from=[::ffff:8.8.8.8]:53");
    assert_eq!(out.result("mapped-after"), "ok");
    assert_eq!(out.result("q-v6-unconnected"), "err 1");
    // getpeername on a socket connected to a DNS server reports that server, not the
    // resolver's address the kernel connected it to (glibc and musl compare reply sources).
    assert_eq!(out.result("peer-v4"), "ok 10.0.0.53:53");
    assert_eq!(out.result("peer-v6"), "ok [::1]:53");
    assert_eq!(out.result("peer-mapped"), "ok [::ffff:8.8.8.8]:53");
    // DNS through io_uring (IORING_OP_SENDMSG / CONNECT, reply by IORING_OP_RECVMSG) is
    // redirected and judged as the plain syscalls are: an allowed name is answered and
    // grants, a name outside the scope is refused and recorded, the real server's own
    // address is refused.
    assert_eq!(out.result("uring-before"), "err 1");
    assert_eq!(out.result("uq-sendmsg"), "ok NoError 127.0.99.4 from=8.8.8.8:53");
    assert_eq!(out.result("uring-granted"), "ok");
    assert_eq!(out.result("uq-other"), "ok Refused - from=10.0.0.53:53");
    assert_eq!(out.result("uq-other-sendmsg"), "ok Refused - from=9.9.9.9:53");
    assert_eq!(out.result("uq-v6"), "ok NoError ::1 from=[::1]:53");
    assert_eq!(out.result("uq-direct"), "err 1");

    let dns_recs = |decision: &str, name: &str| {
        out.records_of("dns", decision)
            .into_iter()
            .filter(|r| r["query"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let refused = dns_recs("deny", "other.test");
    assert_eq!(refused.len(), 4, "two syscall, two io_uring queries: {:#?}", out.judged());
    assert!(refused.iter().all(|r| r["rcode"] == "REFUSED" && r["rule"] == "network.egress"));
    assert!(refused.iter().any(|r| r["qtype"] == "TXT" && r["protocol"] == "tcp"));
    let allowed = dns_recs("allow", "allowed.test");
    assert!(allowed.iter().any(|r| r["qtype"] == "A" && r["answers"] == serde_json::json!(["127.0.99.1"])));
    assert!(allowed.iter().any(|r| r["qtype"] == "AAAA" && r["answers"] == serde_json::json!(["::1"])));
    assert!(allowed.iter().all(|r| r["host"] == "allowed.test" && r["latency_us"].is_u64()));
    let uring = &dns_recs("allow", "uring.test")[0];
    assert_eq!(
        (&uring["answers"], &uring["protocol"]),
        (&serde_json::json!(["127.0.99.4"]), &serde_json::json!("udp"))
    );
    let private = &dns_recs("allow", "internal.test")[0];
    assert_eq!(private["dropped"], serde_json::json!(["10.1.2.3 (private)"]));
    let meta = &dns_recs("allow", "meta.test")[0];
    assert_eq!(meta["dropped"], serde_json::json!(["169.254.169.254 (metadata)"]));
    let denied = |kind: &str, addr: &str, p: u64| {
        out.records_of(kind, "deny").iter().filter(|r| r["addr"] == addr && r["port"] == p).count()
    };
    assert_eq!(denied("connect", "127.0.99.1", port.into()), 1, "only the connect before resolving");
    assert_eq!(denied("connect", "127.0.99.2", port.into()), 2, "syscall and io_uring");
    assert_eq!(denied("connect", "127.0.99.4", port.into()), 1, "only the connect before resolving");
    assert_eq!(denied("connect", "10.1.2.3", port.into()), 1);
    assert_eq!(denied("sendmsg", &up.ip().to_string(), up.port().into()), 2, "syscall and io_uring");
    assert_eq!(denied("sendmsg", "2001:db8::53", 53), 1);
    coverage("egress by name", "syscall", "enforced");
    coverage("egress by name", "io_uring", "enforced");
    // uq-direct: a UDP datagram through IORING_OP_SENDMSG to an address no rule grants.
    coverage("egress UDP", "io_uring", "enforced");
}

#[test]
fn resolved_addresses_expire_and_cname_and_tcp_fallback_work() {
    if !require("resolved_addresses_expire_and_cname_and_tcp_fallback_work", "cgroup_sock_addr") {
        return;
    }
    let dns = Dnsmasq::start(&zone());
    let (_l, port) = listeners_on(&["127.0.99.1", "127.0.99.3", "127.0.98.60"]);
    let scope = scope("dns-ttl", &["short.test", "alias.test", "big.test"], dns.addr, port);
    let p = PROBE;
    let script = format!(
        "{p} dns udp 8.8.8.8 53 short.test A | sed s/^dns/q-short/
         {p} connect 127.0.99.3 {port} | sed s/^connect/short-fresh/
         sleep 2.5
         {p} connect 127.0.99.3 {port} | sed s/^connect/short-expired/
         {p} dns udp 8.8.8.8 53 short.test A | sed s/^dns/q-short-again/
         {p} connect 127.0.99.3 {port} | sed s/^connect/short-again/
         {p} dns tcp 8.8.8.8 53 alias.test A | sed s/^dns/q-cname/
         {p} connect 127.0.99.1 {port} | sed s/^connect/cname-after/
         {p} dns udp 8.8.8.8 53 big.test A | sed s/^dns/q-big-udp/
         {p} dns tcp 8.8.8.8 53 big.test A | sed s/^dns/q-big-tcp/
         {p} connect 127.0.98.60 {port} | sed s/^connect/big-after/
         true"
    );
    let out = run_warden(&scope, &script, &[]);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(out.result("q-short"), "ok NoError 127.0.99.3 from=8.8.8.8:53");
    assert_eq!(out.result("short-fresh"), "ok");
    assert_eq!(out.result("short-expired"), "err 1", "the grant expired with the record's TTL");
    assert_eq!(out.result("short-again"), "ok", "resolving again grants again");
    assert_eq!(out.result("q-cname"), "ok NoError 127.0.99.1 from=8.8.8.8:53");
    assert_eq!(out.result("cname-after"), "ok");
    assert!(out.result("q-big-udp").starts_with("ok NoError tc "), "{}", out.stdout);
    let big = out.result("q-big-tcp");
    assert_eq!(big.split(',').count(), 60, "the whole answer over TCP: {big}");
    assert_eq!(out.result("big-after"), "ok");
    let expired = out
        .records_of("connect", "deny")
        .iter()
        .filter(|r| r["addr"] == "127.0.99.3" && r["port"] == u64::from(port))
        .count();
    assert_eq!(expired, 1, "{:#?}", out.judged());
    let cname = out.records_of("dns", "allow").into_iter().find(|r| r["query"] == "alias.test").cloned();
    let cname = cname.expect("dns record for alias.test");
    assert_eq!(cname["host"], "alias.test");
    assert_eq!(cname["answers"], serde_json::json!(["127.0.99.1"]));
    assert_eq!(cname["protocol"], "tcp");
}

/// Lines of a file (empty when it does not exist yet).
fn lines(p: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Entries of the daemon's pinned egress trie for `slot`.
fn trie_entries(d: &warden_tests::daemon::TestDaemon, slot: u32) -> usize {
    use agent_common::maps::{EgressAddr, EgressRules};
    let version = d.ready["startup"]["version"].as_str().expect("version");
    let pin = d.pin_root.join(version).join("maps/EGRESS");
    let md = aya::maps::MapData::from_pin(&pin).expect("pinned EGRESS");
    let trie: aya::maps::LpmTrie<_, EgressAddr, EgressRules> =
        aya::maps::LpmTrie::try_from(aya::maps::Map::LpmTrie(md)).expect("an LPM trie");
    trie.keys().filter_map(Result::ok).filter(|k| k.data().slot_be == slot.to_be_bytes()).count()
}

#[test]
fn the_daemon_resolves_for_each_task_and_grants_outlive_a_restart() {
    if !require("the_daemon_resolves_for_each_task_and_grants_outlive_a_restart", "cgroup_sock_addr") {
        return;
    }
    let dns = Dnsmasq::start(&zone());
    let (_l, port) = listeners_on(&["127.0.99.1", "127.0.99.2"]);
    // A resolver address range and port of this test's own.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dns_port = udp.local_addr().unwrap().port();
    drop(udp);
    let base = format!("127.{}.0.1", 100 + std::process::id() % 100);
    let mut d =
        warden_tests::daemon::TestDaemon::start(&format!("dns:\n  port: {dns_port}\n  addr_base: {base}\n"));
    // dnsmasq answers its host records with TTL 0: the grant lasts min_ttl.
    let scope_a = scope("dns-a", &["allowed.test"], dns.addr, port).replace("min_ttl: 1s", "min_ttl: 60s");
    let scope_b = scope("dns-b", &["other.test"], dns.addr, port);
    let a = d.start_task("dns-a", &scope_a);
    let b = d.start_task("dns-b", &scope_b);
    let (ida, idb) = (a["id"].as_str().unwrap().to_string(), b["id"].as_str().unwrap().to_string());
    let slot_a = a["slot"].as_u64().unwrap() as u32;
    let p = PROBE;
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let oa = d.exec(
        &ida,
        &format!(
            "{p} dns udp 8.8.8.8 53 allowed.test A; {p} dns udp 8.8.8.8 53 other.test A; {p} connect 127.0.99.1 {port}; {p} connect 127.0.99.2 {port}"
        ),
    );
    assert_eq!(
        text(&oa),
        "dns ok NoError 127.0.99.1 from=8.8.8.8:53\ndns ok Refused - from=8.8.8.8:53\nconnect ok\nconnect err 1\n",
        "{}",
        d.stderr()
    );
    // The other task: its own names; what task A resolved is not its.
    let ob = d.exec(
        &idb,
        &format!("{p} connect 127.0.99.1 {port}; {p} dns tcp 1.1.1.1 53 other.test A; {p} connect 127.0.99.2 {port}"),
    );
    assert_eq!(text(&ob), "connect err 1\ndns ok NoError 127.0.99.2 from=1.1.1.1:53\nconnect ok\n");
    assert!(
        !dns.log().contains("other.test from")
            || dns.queries().iter().filter(|q| q.ends_with("other.test")).count() == 1
    );
    // A connect loop in task A runs across a daemon kill -9: the granted address stays
    // reachable while no daemon runs (for its 60 s min_ttl).
    // Not in the daemon's directory: it holds the daemon's log and key (Warden's evidence),
    // and under the BPF LSM engine the task cannot create a file there (EACCES in the guest).
    let loop_dir = tempfile::tempdir().unwrap();
    let out = loop_dir.path().join("a.out");
    let mut bg = d
        .command(&[
            "task",
            "exec",
            &ida,
            "--",
            "/bin/sh",
            "-c",
            &format!(
                "i=0; while [ $i -lt 60 ]; do {p} connect 127.0.99.1 {port} >> {o}; i=$((i+1)); /usr/bin/sleep 0.05; done; echo done >> {o}",
                o = out.display()
            ),
        ])
        .spawn()
        .unwrap();
    assert!(
        warden_tests::wait_for(std::time::Duration::from_secs(10), || (lines(&out).len() >= 3).then_some(()))
            .is_some()
    );
    d.kill9();
    let at_kill = lines(&out).len();
    assert!(
        warden_tests::wait_for(std::time::Duration::from_secs(10), || (lines(&out).len() >= at_kill + 5)
            .then_some(()))
        .is_some(),
        "the loop stalled while the daemon was down"
    );
    d.launch(&[]);
    assert!(bg.wait().unwrap().success());
    let all = lines(&out);
    assert_eq!(all.last().map(String::as_str), Some("done"));
    assert!(all[..all.len() - 1].iter().all(|l| l == "connect ok"), "a granted address was refused: {all:?}");
    // Back up: the task's queries are answered again.
    let again = d.exec(&ida, &format!("{p} dns udp-connected 9.9.9.9 53 allowed.test A"));
    assert_eq!(text(&again), "dns ok NoError 127.0.99.1 from=9.9.9.9:53\n", "{}", d.stderr());
    let recs = d.records_of(&ida);
    assert!(recs.iter().any(|r| r["kind"] == "dns" && r["decision"] == "deny" && r["query"] == "other.test"));
    // A task's grants go when it ends.
    assert!(trie_entries(&d, slot_a) > 0);
    assert!(d.end(&ida).status.success());
    assert_eq!(trie_entries(&d, slot_a), 0, "task A's entries are gone");
    assert!(d.end(&idb).status.success());
    d.assert_log_verifies();
}
