//! Host tier: the NATS JetStream sink against a real `nats-server` on loopback, restarted in
//! the middle of a task: every record arrives, exactly once, nothing is lost.
use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures_util::StreamExt;
use warden_tests::{require, wait_for, warden_bin};

const NATS: &str = "/usr/sbin/nats-server";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_server(port: u16, store: &Path) -> Child {
    let child = Command::new(NATS)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let up = wait_for(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    assert!(up.is_some(), "nats-server did not come up");
    child
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every message of the WARDEN stream, in stream order.
fn stream_messages(port: u16) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{port}")).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("WARDEN").await.unwrap();
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut batch =
            consumer.fetch().max_messages(100_000).expires(Duration::from_secs(2)).messages().await.unwrap();
        while let Some(Ok(m)) = batch.next().await {
            out.push(String::from_utf8(m.payload.to_vec()).unwrap());
        }
        out
    })
}

#[test]
fn nats_sink_survives_a_server_restart_without_loss() {
    if !require("nats_sink_survives_a_server_restart_without_loss", "tp_btf") {
        return;
    }
    if !Path::new(NATS).exists() {
        let required = std::env::var("WARDEN_REQUIRE").unwrap_or_default();
        assert!(!required.split(',').any(|f| f == "nats" || f == "all"), "nats-server required but missing");
        println!(
            "SKIP nats_sink_survives_a_server_restart_without_loss: {NATS} missing (apt-get install nats-server)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let port = free_port();
    let mut server = Server(start_server(port, &store));
    let scope = dir.path().join("scope.yaml");
    std::fs::write(&scope, "version: 1\ntask: nats\n").unwrap();
    let log = dir.path().join("l.jsonl");
    let spool = dir.path().join("spool.jsonl");
    // About 3 s of steady events.
    let mut warden = Command::new(warden_bin())
        .args(["run", "--key"])
        .arg(dir.path().join("node.key"))
        .arg("--scope")
        .arg(&scope)
        .arg("--log")
        .arg(&log)
        .args(["--nats", &format!("nats://127.0.0.1:{port}"), "--nats-spool"])
        .arg(&spool)
        .args(["--", "sh", "-c", "i=0; while [ $i -lt 30 ]; do /bin/true; sleep 0.1; i=$((i+1)); done"])
        .spawn()
        .unwrap();
    // Restart the server in the middle of the stream.
    std::thread::sleep(Duration::from_millis(900));
    let _ = server.0.kill();
    let _ = server.0.wait();
    std::thread::sleep(Duration::from_millis(1200));
    server = Server(start_server(port, &store));
    let st = warden.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    let logged: Vec<String> = std::fs::read_to_string(&log).unwrap().lines().map(str::to_string).collect();
    assert!(logged.len() > 60, "expected a busy task, got {} records", logged.len());
    let got = stream_messages(port);
    assert_eq!(got.len(), logged.len(), "every record exactly once (duplicates dropped by Nats-Msg-Id)");
    assert_eq!(got, logged, "same records, same order, byte for byte");
    // Replaying the stream gives what replaying the file gives.
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/starter");
    let replay = |extra: &[&str]| {
        let out = Command::new(warden_bin())
            .args(["replay", "--rules", rules.to_str().unwrap(), "--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let url = format!("nats://127.0.0.1:{port}");
    let strict = dir.path().join("strict.yaml");
    std::fs::write(&strict, "version: 1\ntask: strict\nexec:\n  allow: [/bin/sh]\n").unwrap();
    let strict = strict.to_str().unwrap();
    let (from_file, _) = replay(&["--scope", strict, log.to_str().unwrap()]);
    let (from_stream, summary) = replay(&["--scope", strict, "--nats", &url]);
    assert!(from_file.lines().count() >= 30, "every /bin/true exec is re-judged: {from_file}");
    assert_eq!(from_stream, from_file);
    assert!(summary.contains(&format!("replay: {} records", logged.len())), "{summary}");
    drop(server);
}

/// Skips (with a printed reason) when nats-server is missing and not required.
fn have_nats(test: &str) -> bool {
    if Path::new(NATS).exists() {
        return true;
    }
    let required = std::env::var("WARDEN_REQUIRE").unwrap_or_default();
    assert!(!required.split(',').any(|f| f == "nats" || f == "all"), "nats-server required but missing");
    println!("SKIP {test}: {NATS} missing (apt-get install nats-server)");
    false
}

/// A stream larger than every fetch batch (1,000) and the server's default pending-ack limit
/// (1,000) replays completely: the same findings as the file it was published from, and the
/// summary says how many messages were read of how many the stream held.
#[test]
fn replay_reads_a_stream_larger_than_every_batch_and_pending_limit() {
    if !have_nats("replay_reads_a_stream_larger_than_every_batch_and_pending_limit") {
        return;
    }
    const N: u64 = 3_500;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Server(start_server(port, &dir.path().join("store")));
    // A recorded task: every record is an exec the starter pack's network-tool rule fires on,
    // so every record read shows up as one finding.
    let lines: Vec<String> = (1..=N)
        .map(|seq| {
            serde_json::json!({
                "v": 2, "seq": seq, "task": "big",
                "time": format!("2026-01-01T00:{:02}:{:02}.{:09}Z", seq / 3600 % 60, seq / 60 % 60, seq),
                "kind": "exec", "decision": "allow", "pid": 100 + seq, "ppid": 1,
                "path": "/usr/bin/curl", "comm": "curl", "dev": 2049, "ino": seq,
            })
            .to_string()
        })
        .collect();
    let log = dir.path().join("big.jsonl");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = async_nats::connect(format!("127.0.0.1:{port}")).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "WARDEN".into(),
            subjects: vec!["warden.events.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for l in &lines {
            js.publish("warden.events.node.big", l.clone().into()).await.unwrap().await.unwrap();
        }
    });
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/starter");
    let replay = |extra: &[&str]| {
        let out = Command::new(warden_bin())
            .args(["replay", "--rules", rules.to_str().unwrap(), "--format", "json"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    let (from_file, _) = replay(&[log.to_str().unwrap()]);
    assert_eq!(from_file.lines().count() as u64, N, "one finding per record");
    let (from_stream, summary) = replay(&["--nats", &format!("nats://127.0.0.1:{port}")]);
    assert_eq!(from_stream.lines().count() as u64, N, "the whole stream was replayed: {summary}");
    assert_eq!(from_stream, from_file, "same findings, same order");
    assert!(summary.contains(&format!("read {N} of {N} messages (up to sequence {N})")), "{summary}");
    assert!(summary.contains(&format!("replay: {N} records")), "{summary}");
    drop(server);
}
