//! The node daemon's memory with many tasks (issue 16: RSS with 256 concurrent tasks ≤ 64 MiB):
//! `warden-bench --daemon-rss-only` on the host's engine, and the VM tier's `memory` test
//! binary on the BPF LSM engine (`cargo xtask vm --kernel 6.12 --test memory -- --ignored`).
use std::{path::Path, time::Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::daemon::TestDaemon;

/// Entries in the daemon's pinned `FILE_RULES` map (the BPF LSM engine's object rules of every
/// task), if it is pinned below `pin_root`.
pub fn file_rules_in_use(pin_root: &Path) -> Option<usize> {
    use aya::maps::{HashMap, Map, MapData};
    let versions = std::fs::read_dir(pin_root).ok()?;
    for v in versions.flatten() {
        let p = v.path().join("maps").join(agent_common::maps::FILE_RULES);
        let Ok(data) = MapData::from_pin(&p) else { continue };
        let m: HashMap<MapData, agent_common::maps::FileKey, u32> =
            HashMap::try_from(Map::HashMap(data)).ok()?;
        return Some(m.keys().filter(Result::is_ok).count());
    }
    None
}

/// Kernel memory accounting of a process: (VmRSS, VmHWM) in KiB.
pub fn rss_of(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// Where a process's resident memory is: `RssAnon`/`RssFile`/`RssShmem` (KiB), threads, open
/// fds (BPF maps, programs and links are fds), and the resident KiB per kind of mapping from
/// `/proc/PID/smaps` (the heap and anonymous mappings, BPF maps mapped in, files), largest first.
pub fn memory_breakdown(pid: u32) -> Value {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let mut by_kind: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut kind = String::new();
    for line in smaps.lines() {
        let mut w = line.split_whitespace();
        let first = w.next().unwrap_or_default();
        if first.contains('-') && first.chars().next().is_some_and(|c| c.is_ascii_hexdigit()) {
            // A mapping's header: range perms offset dev inode [name].
            let name = line.split_whitespace().nth(5).unwrap_or("[anon]");
            kind = if name.starts_with('/') {
                if name.contains("warden") { "the binary".into() } else { "files".into() }
            } else {
                name.split(':').next().unwrap_or(name).to_string()
            };
        } else if first == "Rss:" {
            *by_kind.entry(kind.clone()).or_default() += w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let mut kinds: Vec<(String, u64)> = by_kind.into_iter().filter(|(_, k)| *k > 0).collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
    json!({
        "rss_anon_kib": field("RssAnon:"), "rss_file_kib": field("RssFile:"), "rss_shmem_kib": field("RssShmem:"),
        "threads": field("Threads:"), "fds": fds,
        "rss_kib_by_mapping": kinds.iter().map(|(k, v)| json!({ "mapping": k, "kib": v })).collect::<Vec<_>>(),
    })
}

/// `warden daemon` (its config plus `config`, e.g. `engine: bpf-lsm\n`) with `tasks` tasks
/// started one after another (each a scope granting one exec and one egress rule): its RSS
/// idle, with the tasks, per task and its peak (`VmHWM`), printed and returned.
pub fn daemon_rss(tasks: usize, config: &str) -> anyhow::Result<Value> {
    // The default `maps.max_file_rules` (65,536 over all tasks): the BPF LSM engine's object
    // rules of 256 tasks fit in it (before session 8 they needed 332,928 entries).
    let d = TestDaemon::start(&format!("{config}maps:\n  max_tasks: {}\n", tasks + 44));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (idle, _) = rss_of(d.pid());
    let idle_mem = memory_breakdown(d.pid());
    let start = Instant::now();
    let mut ids = Vec::with_capacity(tasks);
    let mut engine = String::new();
    for i in 0..tasks {
        let scope = format!(
            "version: 1\ntask: rss-{i}\nexec:\n  allow: [/usr/bin/true]\nnetwork:\n  egress:\n    - to: 127.0.0.{}/32\n      ports: [443]\n",
            i % 250 + 1
        );
        let t = d.start_task(&format!("rss-{i}"), &scope);
        ids.push(t["id"].as_str().context("task id")?.to_string());
        if engine.is_empty() {
            engine = t["engine"].as_str().unwrap_or("?").to_string();
        }
    }
    let started_s = start.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (full, hwm) = rss_of(d.pid());
    let full_mem = memory_breakdown(d.pid());
    let file_rules = file_rules_in_use(&d.pin_root);
    for id in &ids {
        let _ = d.end(id);
    }
    let mib = |k: u64| k as f64 / 1024.0;
    // What each task adds, on average (KiB).
    let per_task_kib = full.saturating_sub(idle) as f64 / tasks.max(1) as f64;
    println!(
        "daemon RSS ({engine} engine): {:.1} MiB idle, {:.1} MiB with {tasks} tasks ({per_task_kib:.1} KiB per task; peak {:.1} MiB, \
         start-up included) = {:.2}× the 64 MiB target ({}); {tasks} tasks started in {started_s:.1} s",
        mib(idle),
        mib(full),
        mib(hwm),
        mib(hwm) / 64.0,
        if mib(hwm) <= 64.0 { "met" } else { "missed" }
    );
    let line = |m: &Value| {
        format!(
            "anon {:.1} MiB, file {:.1} MiB, shmem {:.1} MiB; {} threads, {} fds; by mapping: {}",
            mib(m["rss_anon_kib"].as_u64().unwrap_or(0)),
            mib(m["rss_file_kib"].as_u64().unwrap_or(0)),
            mib(m["rss_shmem_kib"].as_u64().unwrap_or(0)),
            m["threads"],
            m["fds"],
            m["rss_kib_by_mapping"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .take(6)
                        .map(|k| {
                            format!(
                                "{} {:.1}",
                                k["mapping"].as_str().unwrap_or("?"),
                                mib(k["kib"].as_u64().unwrap_or(0))
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        )
    };
    if let Some(n) = file_rules.filter(|n| *n > 0) {
        println!(
            "  FILE_RULES entries with {tasks} tasks: {n} ({:.0} per task)",
            n as f64 / tasks.max(1) as f64
        );
    }
    println!("  idle: {}", line(&idle_mem));
    println!("  with {tasks} tasks: {}", line(&full_mem));
    Ok(json!({ "tasks": tasks, "idle_kib": idle, "with_tasks_kib": full, "peak_kib": hwm,
        "per_task_kib": per_task_kib,
        "target_mib": 64, "met": mib(hwm) <= 64.0, "start_s": started_s,
        "idle_breakdown": idle_mem, "with_tasks_breakdown": full_mem,
        "engine": engine, "file_rules_entries": file_rules }))
}
