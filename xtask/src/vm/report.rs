//! Judging one guest run, printing it, and the machine-readable `results.json`.
use std::time::Duration;

use serde_json::{Value, json};

use super::{
    kernels::Kernel,
    protocol::{Binary, Outcome},
    qemu::Run,
};

/// One kernel's verdict.
pub struct KernelReport {
    pub kernel: Kernel,
    pub run: Run,
    /// The test binaries this guest was to run.
    pub binaries: Vec<String>,
    /// (binary::test, outcome), in run order.
    pub tests: Vec<(String, Outcome)>,
    /// binary::test → seconds it ran in the guest; binary → seconds for the whole binary.
    pub seconds: Vec<(String, f64)>,
    pub binary_seconds: Vec<(String, f64)>,
    /// binary::test → skip reason, or why a skip counts as a failure.
    pub notes: Vec<(String, String)>,
    /// What went wrong outside single tests (timeouts, crashes, a binary with no result).
    pub problems: Vec<String>,
    pub passed: usize,
    /// Failed tests plus problems no failed test accounts for.
    pub failed: usize,
    pub skipped: usize,
    pub probe: Option<Value>,
}

impl KernelReport {
    /// `expected`: the test binaries the guest was to run; `required`: features that must
    /// not be skipped (`WARDEN_REQUIRE`).
    pub fn assess(
        kernel: Kernel,
        run: Run,
        expected: &[String],
        required: &[String],
        timeout: Duration,
    ) -> Self {
        let mut tests = Vec::new();
        let mut seconds = Vec::new();
        let mut binary_seconds = Vec::new();
        let mut notes = Vec::new();
        let mut problems = Vec::new();
        let mut extra_failures = 0;
        let c = &run.console;
        if run.timed_out {
            problems.push(format!("timed out after {}s; killed QEMU", timeout.as_secs()));
        }
        if let Some(s) = run.status.filter(|s| !s.success() && !run.timed_out) {
            problems.push(format!("QEMU exited with {s} (see qemu.stderr)"));
        }
        if run.boot.is_none() {
            problems.push("the guest never reached /init".to_string());
        }
        if let Some(u) = c.kernel.as_deref().filter(|u| *u != kernel.release) {
            problems.push(format!("the guest runs kernel {u}, not {}", kernel.release));
        }
        for m in &c.mount_failures {
            problems.push(format!("guest mount failed: {m}"));
        }
        for name in expected {
            let Some(b) = c.binaries.iter().find(|b| &b.name == name) else {
                problems.push(format!("{name}: never ran"));
                extra_failures += 1;
                continue;
            };
            let failed_tests = judge_binary(b, required, &mut tests, &mut notes);
            seconds.extend(b.seconds.iter().map(|(t, s)| (format!("{name}::{t}"), *s)));
            if let Some(t) = b.total {
                binary_seconds.push((name.clone(), (t.as_secs_f64() * 10.0).round() / 10.0));
            }
            match b.exit {
                None => {
                    problems.push(format!("{name}: no result (the guest stopped during the run)"));
                    extra_failures += 1;
                }
                Some(0) if b.tests.is_empty() => {
                    problems.push(format!("{name}: ran no test"));
                    extra_failures += 1;
                }
                Some(0) => {}
                Some(code) if failed_tests == 0 => {
                    problems.push(format!("{name}: exited with {code} without a failed test"));
                    extra_failures += 1;
                }
                Some(_) => {}
            }
        }
        let probe = serde_json::from_str::<Value>(c.probe_json.trim()).ok();
        if run.boot.is_some() && (c.probe_status != Some(0) || probe.is_none()) {
            problems.push(format!("`warden probe --json` failed (status {:?})", c.probe_status));
            extra_failures += 1;
        }
        let count = |o: Outcome| tests.iter().filter(|(_, x)| *x == o).count();
        let (passed, skipped) = (count(Outcome::Ok), count(Outcome::Skipped));
        let failed = count(Outcome::Failed) + extra_failures;
        Self {
            kernel,
            run,
            binaries: expected.to_vec(),
            tests,
            seconds,
            binary_seconds,
            notes,
            problems,
            passed,
            failed,
            skipped,
            probe,
        }
    }

    pub fn ok(&self) -> bool {
        self.failed == 0 && self.problems.is_empty()
    }

    /// `6.1.0-56`, `7.3.4+deb13`: short enough to prefix live console lines.
    pub fn tag(kernel: &Kernel) -> String {
        kernel.release.trim_end_matches("-cloud-amd64").to_string()
    }

    /// The result block printed after the guest powered off.
    pub fn print(&self) {
        let k = &self.kernel;
        let secs = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
        let run_time = self.run.boot.map(|b| self.run.total.saturating_sub(b));
        println!(
            "\nvm {} ({}; {} {}): {}",
            k.release,
            k.families.join(", "),
            k.package,
            k.version,
            if self.ok() { "ok" } else { "FAILED" }
        );
        if let Some(p) = &self.probe {
            println!("  probe: {}", probe_line(p));
        }
        for (name, o) in &self.tests {
            match self.seconds.iter().find(|(n, _)| n == name) {
                Some((_, s)) => println!("test {name} ... {} ({s:.1}s)", o.as_str()),
                None => println!("test {name} ... {}", o.as_str()),
            }
        }
        if !self.binary_seconds.is_empty() {
            let each: Vec<String> = self.binary_seconds.iter().map(|(b, s)| format!("{b} {s:.0}s")).collect();
            println!("  binaries: {}", each.join(", "));
        }
        for (name, why) in &self.notes {
            println!("SKIP {name}: {why}");
        }
        for p in &self.problems {
            println!("  problem: {p}");
        }
        if !self.ok() {
            self.print_failure_details();
        }
        println!(
            "test result: {}. {} passed; {} failed; {} skipped; boot {}, tests {}, cycle {} ({})",
            if self.ok() { "ok" } else { "FAILED" },
            self.passed,
            self.failed,
            self.skipped,
            secs(self.run.boot),
            secs(run_time),
            secs(Some(self.run.total)),
            k.release
        );
    }

    /// The output of failed binaries, or the console's last lines when the guest did not finish.
    fn print_failure_details(&self) {
        let c = &self.run.console;
        let failed: Vec<&Binary> = c.binaries.iter().filter(|b| b.exit != Some(0)).collect();
        for b in &failed {
            println!("  ---- output of {} in the guest ----", b.name);
            for l in &b.lines {
                println!("  | {l}");
            }
        }
        // Kernel messages explain a failure no test output does (a crash, a failed mount).
        if !c.kernel_lines.is_empty() && failed.is_empty() {
            println!("  ---- kernel messages ----");
            for l in c.kernel_lines.iter().rev().take(40).collect::<Vec<_>>().into_iter().rev() {
                println!("  | {l}");
            }
        }
        if c.done.is_none() {
            println!("  ---- last console lines ----");
            for l in &self.run.tail {
                println!("  | {l}");
            }
        }
        println!("  full console: {}", self.run.console_log.display());
    }

    pub fn json(&self) -> Value {
        let k = &self.kernel;
        let c = &self.run.console;
        let run_time = self.run.boot.map(|b| self.run.total.saturating_sub(b));
        let round = |d: Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
        let tests: serde_json::Map<String, Value> =
            self.tests.iter().map(|(n, o)| (n.clone(), json!(o.as_str()))).collect();
        let notes: serde_json::Map<String, Value> =
            self.notes.iter().map(|(n, w)| (n.clone(), json!(w))).collect();
        let seconds: serde_json::Map<String, Value> =
            self.seconds.iter().map(|(n, s)| (n.clone(), json!(s))).collect();
        let binary_seconds: serde_json::Map<String, Value> =
            self.binary_seconds.iter().map(|(n, s)| (n.clone(), json!(s))).collect();
        json!({
            "families": k.families,
            "package": k.package,
            "version": k.version,
            "uname": c.kernel,
            "lsm": c.lsm,
            "status": if self.ok() { "passed" } else { "failed" },
            "problems": self.problems,
            "boot_seconds": self.run.boot.map(round),
            "tests_seconds": run_time.map(round),
            "cycle_seconds": round(self.run.total),
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "engine": self.probe.as_ref().and_then(|p| p.pointer("/engine/primary")).cloned(),
            "binaries": self.binaries,
            "binary_seconds": binary_seconds,
            "tests": tests,
            "test_seconds": seconds,
            "notes": notes,
        })
    }
}

/// Adds a binary's tests as `binary::test`; a skip of a required feature (or a root skip:
/// the guest runs as root) becomes a failure. Returns the number of failed tests.
fn judge_binary(
    b: &Binary,
    required: &[String],
    tests: &mut Vec<(String, Outcome)>,
    notes: &mut Vec<(String, String)>,
) -> usize {
    let mut failed = 0;
    for (name, outcome) in &b.tests {
        let full = format!("{}::{name}", b.name);
        let mut outcome = *outcome;
        if let Some(why) = b.notes.get(name) {
            let required_skip = outcome == Outcome::Skipped
                && (why.starts_with("needs root") || required.iter().any(|f| why.contains(f.as_str())));
            if required_skip {
                outcome = Outcome::Failed;
                notes.push((full.clone(), format!("skipped although required in the VM: {why}")));
            } else {
                notes.push((full.clone(), why.clone()));
            }
        }
        if outcome == Outcome::Failed {
            failed += 1;
        }
        tests.push((full, outcome));
    }
    failed
}

/// `engine bpf-lsm; unavailable: fentry (…)`.
fn probe_line(p: &Value) -> String {
    let engine = p.pointer("/engine/primary").and_then(Value::as_str).unwrap_or("?");
    let missing: Vec<String> = p
        .get("features")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|f| f.get("available").and_then(Value::as_bool) == Some(false))
        .filter_map(|f| f.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    if missing.is_empty() {
        format!("engine {engine}; every probed feature available")
    } else {
        format!("engine {engine}; unavailable: {}", missing.join(", "))
    }
}
