//! Rules throughput on one core, as records per second over the 250k target (issue 16): the
//! starter pack over a connect storm's records with some execs and exits mixed in, evaluated
//! the way `warden run` does (typed records) and the way `warden replay` does (lines parsed in
//! place, steps evaluated ahead, then the rule state), single-threaded. CPU-bound and in
//! process, so it needs no root and no sensor; a ratio, never an assertion.
use std::time::Instant;

use agent_user::{
    audit::{AuditRecord, Decision, Kind},
    rules::{
        RuleSet,
        engine::{Engine, Evaluator},
        view::{LiveRecord, ReplayRecord},
    },
};
use serde_json::{Value, json};

/// Records per second the starter pack must keep up with on one core.
pub const TARGET_RULES_PER_SEC: f64 = 250_000.0;

fn records(n: u64) -> Vec<AuditRecord> {
    (1..=n)
        .map(|i| {
            let kind = match i % 20 {
                0 => Kind::Exec,
                1 => Kind::Exit,
                _ => Kind::Connect,
            };
            AuditRecord {
                v: 2,
                seq: i,
                time: format!("2026-12-03T10:{:02}:{:02}.{:09}Z", i / 60_000 % 60, i / 1000 % 60, i),
                task: "storm-0123456789abcdef".into(),
                kind,
                decision: Some(Decision::Allow),
                pid: Some(1000 + (i % 7) as u32),
                ppid: Some(999),
                exe: Some("/usr/local/bin/warden-bench".into()),
                // One exec in five is a network tool, which a starter rule reports.
                path: (kind == Kind::Exec)
                    .then(|| if i % 100 == 0 { "/usr/bin/curl" } else { "/bin/true" }.into()),
                addr: (kind == Kind::Connect).then(|| "127.0.0.1".into()),
                port: (kind == Kind::Connect).then_some(40_000),
                protocol: (kind == Kind::Connect).then(|| "tcp".into()),
                comm: Some("warden-bench".into()),
                uid: Some(0),
                cgroup_id: Some(12345),
                prev: Some("0".repeat(64)),
                ..Default::default()
            }
        })
        .collect()
}

/// Measures both paths; returns the results (also printed).
pub fn measure(n: u64) -> anyhow::Result<Value> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/starter"));
    let set = RuleSet::load_dir(dir)?;
    let recs = records(n);
    let lines: Vec<String> = recs.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;

    let mut engine = Engine::new(&set);
    let t = Instant::now();
    let mut live_findings = 0usize;
    for (r, l) in recs.iter().zip(&lines) {
        live_findings += engine.observe_view(&LiveRecord { rec: r, line: l }).len();
    }
    let live = n as f64 / t.elapsed().as_secs_f64();

    let mut engine = Engine::new(&set);
    let mut eval = Evaluator::new(&set);
    let mut outcomes = Vec::new();
    let t = Instant::now();
    let mut replay_findings = 0usize;
    for l in &lines {
        let r = ReplayRecord::parse(l)?;
        eval.outcomes(&r, &mut outcomes);
        replay_findings += engine.observe_with(&r, &outcomes).len();
    }
    let replay = n as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(live_findings == replay_findings, "live and replay gave different findings");

    println!(
        "rules, starter pack, one core: live {:.0} records/s = {:.2}× the {:.0} target; \
         replay (parse + rules) {:.0} records/s = {:.2}× ({} records, {} findings)",
        live,
        live / TARGET_RULES_PER_SEC,
        TARGET_RULES_PER_SEC,
        replay,
        replay / TARGET_RULES_PER_SEC,
        n,
        live_findings
    );
    Ok(json!({
        "records": n,
        "findings": live_findings,
        "target_records_per_sec": TARGET_RULES_PER_SEC,
        "live_records_per_sec": live,
        "live_ratio": live / TARGET_RULES_PER_SEC,
        "replay_one_thread_records_per_sec": replay,
        "replay_one_thread_ratio": replay / TARGET_RULES_PER_SEC,
    }))
}

#[cfg(test)]
mod tests {
    /// The measurement runs, and live and replay evaluation agree on its records.
    #[test]
    fn measures_both_paths() {
        let v = super::measure(2_000).unwrap();
        assert!(v["findings"].as_u64().unwrap() > 0, "the exec records fire no rule? {v}");
        assert!(v["live_records_per_sec"].as_f64().unwrap() > 0.0);
    }
}
