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
    let (_l, port) = listeners_on(&["127.0.99.1", "127.0.99.2", "::1", "127.0.97.1"]);
    let up = dns.addr;
    let scope = scope("dns-names", &["allowed.test", "internal.test", "meta.test"], up, port);
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
         true",
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

    let dns_recs = |decision: &str, name: &str| {
        out.records_of("dns", decision)
            .into_iter()
            .filter(|r| r["query"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let refused = dns_recs("deny", "other.test");
    assert_eq!(refused.len(), 2, "{:#?}", out.judged());
    assert!(refused.iter().all(|r| r["rcode"] == "REFUSED" && r["rule"] == "network.egress"));
    assert!(refused.iter().any(|r| r["qtype"] == "TXT" && r["protocol"] == "tcp"));
    let allowed = dns_recs("allow", "allowed.test");
    assert!(allowed.iter().any(|r| r["qtype"] == "A" && r["answers"] == serde_json::json!(["127.0.99.1"])));
    assert!(allowed.iter().any(|r| r["qtype"] == "AAAA" && r["answers"] == serde_json::json!(["::1"])));
    assert!(allowed.iter().all(|r| r["host"] == "allowed.test" && r["latency_us"].is_u64()));
    let private = &dns_recs("allow", "internal.test")[0];
    assert_eq!(private["dropped"], serde_json::json!(["10.1.2.3 (private)"]));
    let meta = &dns_recs("allow", "meta.test")[0];
    assert_eq!(meta["dropped"], serde_json::json!(["169.254.169.254 (metadata)"]));
    let denied = |kind: &str, addr: &str, p: u64| {
        out.records_of(kind, "deny").iter().filter(|r| r["addr"] == addr && r["port"] == p).count()
    };
    assert_eq!(denied("connect", "127.0.99.1", port.into()), 1, "only the connect before resolving");
    assert_eq!(denied("connect", "127.0.99.2", port.into()), 2, "syscall and io_uring");
    assert_eq!(denied("connect", "10.1.2.3", port.into()), 1);
    assert_eq!(denied("sendmsg", &up.ip().to_string(), up.port().into()), 1);
    assert_eq!(denied("sendmsg", "2001:db8::53", 53), 1);
    coverage("egress by name", "syscall", "enforced");
    coverage("egress by name", "io_uring", "enforced");
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
