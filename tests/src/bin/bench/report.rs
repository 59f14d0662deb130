//! Medians, slowdown ratios, the printed table and `results.json`.
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::workload::{Workload, warmup_ops};

/// Slowdown target for configuration (b), all workloads.
pub const TARGET_B: f64 = 1.02;
/// Event rate up to which configuration (c) should drop nothing.
pub const TARGET_ZERO_DROPS_EVENTS_PER_SEC: f64 = 250_000.0;

/// The three configurations, run alternately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Config {
    /// Nothing loaded.
    A,
    /// Sensor loaded, worker outside any sandbox.
    B,
    /// Worker inside a watched sandbox cgroup, consumer draining.
    C,
}

impl Config {
    pub const ALL: [Config; 3] = [Config::A, Config::B, Config::C];

    pub fn key(self) -> &'static str {
        match self {
            Config::A => "a",
            Config::B => "b",
            Config::C => "c",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Config::A => "(a) nothing loaded",
            Config::B => "(b) sensor, outside sandbox",
            Config::C => "(c) inside watched sandbox",
        }
    }
}

/// What the consumer saw during one (b) or (c) run.
#[derive(Debug, Clone, Default)]
pub struct EventStats {
    /// Records with kernel time inside the worker's timed window.
    pub in_window: u64,
    /// All records drained during the run (warm-up, worker start and exit included).
    pub total: u64,
    pub undecodable: u64,
    /// Failed ring-buffer reservations for the sandbox slot during the run (repeated attempts
    /// included).
    pub drops: u64,
    /// Delivery latency (kernel event → end of the drain that delivered it), in-window records.
    pub latency_p50_ns: u64,
    pub latency_p99_ns: u64,
    pub latency_max_ns: u64,
    /// `Sensor::ring_fill` when the worker has ended: the most bytes a CPU saw waiting in
    /// the ring at its last submit (the consumer has not drained the run's tail yet).
    pub ring_fill_bytes: u64,
}

/// Run count and run time of one BPF program during a run (`--bpf-stats`): the whole worker
/// lifetime (warm-up and repeated attempts included) and, in (b), every other process on the
/// machine too.
#[derive(Debug, Clone)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

/// One worker run.
#[derive(Debug, Clone)]
pub struct Run {
    pub round: u32,
    pub workload: Workload,
    pub config: Config,
    pub ops: u64,
    pub elapsed_ns: u64,
    /// CPU time of the worker (and its children) in its timed loop.
    pub cpu_ns: u64,
    pub events: Option<EventStats>,
    /// Lifecycle BPF programs of others loaded during an (a) run (should be 0).
    pub foreign_programs: usize,
    /// CPU other processes used during the run (cores), and CPU stolen by the hypervisor.
    pub background_cores: f64,
    pub steal_cores: f64,
    /// Runs it took: a run disturbed by other processes is repeated.
    pub attempts: u32,
    /// Per-program cost (empty without `--bpf-stats`).
    pub programs: Vec<ProgramCost>,
}

impl Run {
    /// In-kernel BPF time per operation, if program statistics were collected.
    pub fn bpf_ns_per_op(&self) -> Option<f64> {
        if self.programs.is_empty() {
            return None;
        }
        let total_ops = self.executed_ops();
        Some(self.programs.iter().map(|p| p.ns).sum::<u64>() as f64 / total_ops as f64)
    }

    /// Operations the worker executed, warm-up and repeated (disturbed) runs included: what the
    /// program statistics, taken around the whole run, cover.
    pub fn executed_ops(&self) -> u64 {
        (self.ops + warmup_ops(self.ops)) * u64::from(self.attempts.max(1))
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / (self.elapsed_ns as f64 / 1e9)
    }

    /// Worker CPU time per operation (ns).
    pub fn cpu_per_op(&self) -> f64 {
        self.cpu_ns as f64 / self.ops.max(1) as f64
    }

    pub fn events_per_sec(&self) -> Option<f64> {
        self.events.as_ref().map(|e| e.in_window as f64 / (self.elapsed_ns as f64 / 1e9))
    }
}

/// Median of a non-empty sample (mean of the middle two for even sizes).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// Percentile (nearest rank) of an unsorted sample.
pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Median absolute deviation as a percentage of the median: the run-to-run noise, robust to
/// the odd disturbed run.
fn mad_pct(v: &[f64]) -> f64 {
    let m = median(v);
    median(&v.iter().map(|x| (x - m).abs()).collect::<Vec<_>>()) / m * 100.0
}

/// Per-workload summary.
pub struct Summary {
    pub workload: Workload,
    pub ops: u64,
    /// Median ops/s and its median absolute deviation (%) per configuration, in
    /// [`Config::ALL`] order, over the undisturbed runs (see [`DISTURBED_BACKGROUND_CORES`]).
    pub ops_per_sec: [(f64, f64); 3],
    /// ops/s of the runs the medians are taken over.
    pub samples: [Vec<f64>; 3],
    /// Runs per configuration.
    pub total_runs: [usize; 3],
    /// Median over rounds whose three runs were all undisturbed of (a)/(b) and (a)/(c).
    pub paired: Option<(f64, f64)>,
    /// Median over every round (disturbed or not) of the worker's CPU time per operation in
    /// (b) and (c) over (a) of the same round: the ratio a shared host moves least.
    pub cpu_paired: Option<(f64, f64)>,
    /// Median worker CPU ns per operation per configuration.
    pub cpu_per_op: [f64; 3],
    /// Time-per-operation ratios to (a), from the medians.
    pub slowdown_b: f64,
    pub slowdown_c: f64,
    pub c_events_per_sec: f64,
    pub c_events_per_sec_max: f64,
    pub c_events_per_op: f64,
    pub c_drops: u64,
    pub c_undecodable: u64,
    pub c_latency_p99_ns_max: u64,
    pub c_latency_max_ns: u64,
    pub b_events_in_window: u64,
    /// CPU (cores) other processes used during this workload's runs: median and max.
    pub background_median: f64,
    pub background_max: f64,
    pub steal_max: f64,
    /// Median in-kernel BPF ns per operation in (b) and (c) (`--bpf-stats`).
    pub bpf_ns_per_op: [Option<f64>; 2],
    /// Per program in (c), all runs: (name, runs per op, ns per run).
    pub c_programs: Vec<(String, f64, f64)>,
}

/// Background CPU (cores) below which the machine counts as quiet before a run.
pub const NOISY_BACKGROUND_CORES: f64 = 0.1;
/// A run during which other processes used more CPU than this (cores) is disturbed: it is run
/// again, and left out of the medians when enough undisturbed runs remain.
pub const DISTURBED_BACKGROUND_CORES: f64 = 0.25;
/// Undisturbed runs per configuration needed to leave the disturbed ones out.
const MIN_CLEAN_RUNS: usize = 3;

fn undisturbed(r: &Run) -> bool {
    r.background_cores <= DISTURBED_BACKGROUND_CORES
}

impl Summary {
    pub fn new(workload: Workload, runs: &[Run]) -> Self {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.workload == workload).collect();
        let of = |c: Config| mine.iter().filter(move |r| r.config == c);
        // The runs medians are taken over: the undisturbed ones, if there are enough.
        let used = |c: Config| {
            let clean = of(c).filter(|r| undisturbed(r)).count();
            let enough = clean >= MIN_CLEAN_RUNS.min(of(c).count());
            of(c).filter(move |r| !enough || undisturbed(r))
        };
        let samples = Config::ALL.map(|c| used(c).map(|r| r.ops_per_sec()).collect::<Vec<_>>());
        let total_runs = Config::ALL.map(|c| of(c).count());
        let ops_per_sec = [0, 1, 2].map(|i| (median(&samples[i]), mad_pct(&samples[i])));
        let mut rounds: Vec<u32> = mine.iter().map(|r| r.round).collect();
        rounds.dedup();
        let (mut pb, mut pc) = (Vec::new(), Vec::new());
        for round in rounds {
            let get = |c: Config| of(c).find(|r| r.round == round && undisturbed(r));
            if let (Some(a), Some(b), Some(c)) = (get(Config::A), get(Config::B), get(Config::C)) {
                pb.push(a.ops_per_sec() / b.ops_per_sec());
                pc.push(a.ops_per_sec() / c.ops_per_sec());
            }
        }
        let paired = (!pb.is_empty()).then(|| (median(&pb), median(&pc)));
        let (mut cb, mut cc) = (Vec::new(), Vec::new());
        for round in mine.iter().map(|r| r.round).collect::<std::collections::BTreeSet<_>>() {
            let get = |c: Config| of(c).find(|r| r.round == round && r.cpu_ns > 0);
            if let (Some(a), Some(b), Some(c)) = (get(Config::A), get(Config::B), get(Config::C)) {
                cb.push(b.cpu_per_op() / a.cpu_per_op());
                cc.push(c.cpu_per_op() / a.cpu_per_op());
            }
        }
        let cpu_paired = (!cb.is_empty()).then(|| (median(&cb), median(&cc)));
        let cpu_per_op = Config::ALL.map(|c| {
            let v: Vec<f64> = of(c).filter(|r| r.cpu_ns > 0).map(|r| r.cpu_per_op()).collect();
            if v.is_empty() { 0.0 } else { median(&v) }
        });
        let c_ev: Vec<f64> = used(Config::C).filter_map(|r| r.events_per_sec()).collect();
        let c_per_op: Vec<f64> = of(Config::C)
            .filter_map(|r| r.events.as_ref().map(|e| e.in_window as f64 / r.ops as f64))
            .collect();
        let ev = |c: Config| of(c).filter_map(|r| r.events.as_ref());
        Self {
            workload,
            ops: mine.first().map_or(0, |r| r.ops),
            slowdown_b: ops_per_sec[0].0 / ops_per_sec[1].0,
            slowdown_c: ops_per_sec[0].0 / ops_per_sec[2].0,
            ops_per_sec,
            samples,
            total_runs,
            paired,
            cpu_paired,
            cpu_per_op,
            c_events_per_sec: median(&c_ev),
            c_events_per_sec_max: c_ev.iter().copied().fold(0.0, f64::max),
            c_events_per_op: median(&c_per_op),
            c_drops: ev(Config::C).map(|e| e.drops).sum(),
            c_undecodable: ev(Config::C).map(|e| e.undecodable).sum(),
            c_latency_p99_ns_max: ev(Config::C).map(|e| e.latency_p99_ns).max().unwrap_or(0),
            c_latency_max_ns: ev(Config::C).map(|e| e.latency_max_ns).max().unwrap_or(0),
            b_events_in_window: ev(Config::B).map(|e| e.in_window).sum(),
            background_median: median(&mine.iter().map(|r| r.background_cores).collect::<Vec<_>>()),
            background_max: mine.iter().map(|r| r.background_cores).fold(0.0, f64::max),
            steal_max: mine.iter().map(|r| r.steal_cores).fold(0.0, f64::max),
            bpf_ns_per_op: [Config::B, Config::C].map(|c| {
                let v: Vec<f64> = of(c).filter_map(|r| r.bpf_ns_per_op()).collect();
                (!v.is_empty()).then(|| median(&v))
            }),
            c_programs: program_breakdown(&of(Config::C).copied().collect::<Vec<_>>()),
        }
    }

    /// "met", "MISSED", or "n/a", with a note when the difference is inside the noise.
    fn verdict(&self, ratio: f64, target: Option<f64>, cfg: usize) -> String {
        let Some(t) = target else { return "no target".into() };
        let noise = 2.0 * self.ops_per_sec[0].1.max(self.ops_per_sec[cfg].1);
        let mut s = format!("target ≤ {t:.2}×: {}", if ratio <= t { "met" } else { "MISSED" });
        if ((ratio - 1.0) * 100.0).abs() <= noise {
            s.push_str(" (within run-to-run noise)");
        }
        s
    }

    pub fn met_c(&self) -> Option<bool> {
        self.workload.target_c().map(|t| self.slowdown_c <= t)
    }

    /// The drop target applies at event rates up to 250k/s.
    pub fn drops_target_met(&self) -> bool {
        self.c_drops == 0 || self.c_events_per_sec_max > TARGET_ZERO_DROPS_EVENTS_PER_SEC
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let w = self.workload;
        let _ = writeln!(
            out,
            "\n{} — {}; {} ops per run, {} runs per configuration",
            w.name(),
            w.describe(),
            self.ops,
            self.total_runs[0]
        );
        let _ = writeln!(
            out,
            "  {:<30} {:>14} {:>8} {:>5} {:>11} {:>9}",
            "configuration", "median ops/s", "±MAD", "runs", "time/op", "vs (a)"
        );
        for (i, c) in Config::ALL.iter().enumerate() {
            let (m, sp) = self.ops_per_sec[i];
            let (ratio, verdict) = match c {
                Config::A => (1.0, String::new()),
                Config::B => (self.slowdown_b, self.verdict(self.slowdown_b, Some(TARGET_B), 1)),
                Config::C => (self.slowdown_c, self.verdict(self.slowdown_c, w.target_c(), 2)),
            };
            let _ = writeln!(
                out,
                "  {:<30} {:>14} {:>7.1}% {:>5} {:>11} {:>8.3}×  {verdict}",
                c.label(),
                thousands(m),
                sp,
                format!("{}/{}", self.samples[i].len(), self.total_runs[i]),
                time_per_op(m),
                ratio
            );
        }
        let _ = writeln!(
            out,
            "  (c) events: {} /s delivered (max {}), {:.2} per op; drops {} (target: none up to 250k/s: {}); undecodable {}",
            thousands(self.c_events_per_sec),
            thousands(self.c_events_per_sec_max),
            self.c_events_per_op,
            self.c_drops,
            if self.drops_target_met() { "met" } else { "MISSED" },
            self.c_undecodable,
        );
        if let Some((b, c)) = self.paired {
            let _ = writeln!(
                out,
                "  per-round paired ratios (median of undisturbed rounds): (b) {b:.3}×, (c) {c:.3}×"
            );
        }
        if let Some((b, c)) = self.cpu_paired {
            let _ = writeln!(
                out,
                "  worker CPU time per op (median of paired rounds, all rounds): (a) {:.2} µs, (b) {b:.3}×, (c) {c:.3}×",
                self.cpu_per_op[0] / 1e3
            );
        }
        if self.c_latency_max_ns > 0 {
            let _ = writeln!(
                out,
                "  (c) delivery latency: p99 ≤ {} µs, max {} µs",
                self.c_latency_p99_ns_max / 1000,
                self.c_latency_max_ns / 1000
            );
        }
        if self.b_events_in_window > 0 {
            let _ = writeln!(
                out,
                "  WARNING: (b) delivered {} events from an unwatched worker",
                self.b_events_in_window
            );
        }
        if let [Some(b), Some(c)] = self.bpf_ns_per_op {
            let per: Vec<String> = self
                .c_programs
                .iter()
                .filter(|(_, per_op, _)| *per_op > 0.0)
                .map(|(n, per_op, ns)| format!("{n} {per_op:.2}×{ns:.0} ns"))
                .collect();
            let _ = writeln!(
                out,
                "  in-kernel BPF time per op: (b) {b:.0} ns, (c) {c:.0} ns [{}]",
                per.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "  other processes used {:.2} cores (median; max {:.2}) during these runs; hypervisor steal max {:.2}{}",
            self.background_median,
            self.background_max,
            self.steal_max,
            if self.samples.iter().zip(self.total_runs).any(|(s, t)| s.len() < t) {
                format!(
                    "; runs where they used > {DISTURBED_BACKGROUND_CORES} core are left out of the medians"
                )
            } else if self.background_max > DISTURBED_BACKGROUND_CORES {
                "  <- disturbed runs in the medians: treat the ratios with care".to_string()
            } else {
                String::new()
            }
        );
        out
    }

    pub fn json(&self) -> Value {
        let cfg = |i: usize| {
            let s = &self.samples[i];
            json!({
                "median_ops_per_sec": self.ops_per_sec[i].0,
                "mad_pct": self.ops_per_sec[i].1,
            "runs_used": s.len(),
            "runs_total": self.total_runs[i],
                "min_ops_per_sec": s.iter().copied().fold(f64::INFINITY, f64::min),
                "max_ops_per_sec": s.iter().copied().fold(0.0, f64::max),
                "runs_ops_per_sec": s,
            })
        };
        json!({
            "name": self.workload.name(),
            "description": self.workload.describe(),
            "ops_per_run": self.ops,
            "a": cfg(0),
            "b": cfg(1),
            "c": cfg(2),
            "slowdown": { "b": self.slowdown_b, "c": self.slowdown_c },
            "paired_slowdown": self.paired.map(|(b, c)| json!({ "b": b, "c": c })),
            "cpu_paired_slowdown": self.cpu_paired.map(|(b, c)| json!({ "b": b, "c": c })),
            "cpu_ns_per_op": { "a": self.cpu_per_op[0], "b": self.cpu_per_op[1], "c": self.cpu_per_op[2] },
            "target": { "b": TARGET_B, "c": self.workload.target_c() },
            "met": { "b": self.slowdown_b <= TARGET_B, "c": self.met_c(), "zero_drops": self.drops_target_met() },
            "c_events": {
                "median_per_sec": self.c_events_per_sec,
                "max_per_sec": self.c_events_per_sec_max,
                "median_per_op": self.c_events_per_op,
                "drops": self.c_drops,
                "undecodable": self.c_undecodable,
                "latency_p99_ns_max": self.c_latency_p99_ns_max,
                "latency_max_ns": self.c_latency_max_ns,
            },
            "b_events_in_window": self.b_events_in_window,
            "background_cores": { "median": self.background_median, "max": self.background_max },
            "steal_cores_max": self.steal_max,
            "bpf_ns_per_op": { "b": self.bpf_ns_per_op[0], "c": self.bpf_ns_per_op[1] },
            "c_programs": self.c_programs.iter().map(|(n, per_op, ns)| json!({
                "name": n, "runs_per_op": per_op, "ns_per_run": ns,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Per program over `runs`: (name, runs per operation, ns per run).
fn program_breakdown(runs: &[&Run]) -> Vec<(String, f64, f64)> {
    let mut names: Vec<&str> = runs.iter().flat_map(|r| r.programs.iter().map(|p| p.name.as_str())).collect();
    names.sort();
    names.dedup();
    let total_ops: u64 = runs.iter().filter(|r| !r.programs.is_empty()).map(|r| r.executed_ops()).sum();
    names
        .into_iter()
        .map(|n| {
            let (cnt, ns) = runs
                .iter()
                .flat_map(|r| r.programs.iter().filter(|p| p.name == n))
                .fold((0u64, 0u64), |(c, t), p| (c + p.runs, t + p.ns));
            (
                n.to_string(),
                cnt as f64 / total_ops.max(1) as f64,
                if cnt > 0 { ns as f64 / cnt as f64 } else { 0.0 },
            )
        })
        .collect()
}

/// A compact summary table, one line per workload.
pub fn render_table(summaries: &[Summary]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<8} {:>12} {:>12} {:>12} {:>16} {:>16} {:>11} {:>6} {:>8}",
        "workload",
        "(a) ops/s",
        "(b) ops/s",
        "(c) ops/s",
        "(b)/(a) ≤1.02",
        "(c)/(a) target",
        "(c) ev/s",
        "drops",
        "bg max"
    );
    for s in summaries {
        let c_target = s.workload.target_c().map_or("-".to_string(), |t| format!("≤{t:.2}"));
        let mark = |met: bool| if met { " " } else { "!" };
        let _ = writeln!(
            out,
            "{:<8} {:>12} {:>12} {:>12} {:>15}{} {:>9} {:>5}{} {:>11} {:>6} {:>8.2}",
            s.workload.name(),
            thousands(s.ops_per_sec[0].0),
            thousands(s.ops_per_sec[1].0),
            thousands(s.ops_per_sec[2].0),
            format!("{:.3}×", s.slowdown_b),
            mark(s.slowdown_b <= TARGET_B),
            format!("{:.3}×", s.slowdown_c),
            c_target,
            mark(s.met_c().unwrap_or(true)),
            thousands(s.c_events_per_sec),
            s.c_drops,
            s.background_max,
        );
    }
    let _ = writeln!(out, "(! = target missed; targets are informational, nothing is asserted about time;");
    let _ =
        writeln!(out, " bg max = most CPU, in cores, other processes used during any run of the workload)");
    out
}

pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn time_per_op(ops_per_sec: f64) -> String {
    let ns = 1e9 / ops_per_sec;
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(percentile(&mut [5, 1, 4, 2, 3], 50.0), 3);
        assert_eq!(percentile(&mut [5, 1, 4, 2, 3], 100.0), 5);
        assert_eq!(percentile(&mut [], 99.0), 0);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }
}
