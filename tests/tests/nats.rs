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
