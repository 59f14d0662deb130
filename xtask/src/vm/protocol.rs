//! What the guest's `/init` prints on the serial console, and its parser.
//!
//! `/init` frames everything with marker lines:
//!
//! ```text
//! WARDEN-VM: init kernel=<uname -r> lsm=<active LSMs>
//! WARDEN-VM: probe-begin
//! <warden probe --json>
//! WARDEN-VM: probe-end status=<exit>
//! WARDEN-VM: test-begin <binary>
//! <libtest output: `test <name> ... ok|FAILED|ignored`, `---- <name> stdout ----`, `SKIP <name>: why`>
//! WARDEN-VM: test-end <binary> status=<exit>
//! WARDEN-VM: coverage-begin / coverage-end  (the coverage cells the tests noted, JSON lines)
//! WARDEN-VM: dmesg-begin / dmesg-end      (only when something failed)
//! WARDEN-VM: done status=<0|1>
//! ```
use std::{collections::BTreeMap, time::Duration};

pub const MARKER: &str = "WARDEN-VM:";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    /// Passed in libtest's eyes, but printed `SKIP` (a kernel feature was missing).
    Skipped,
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Ignored => "ignored",
        }
    }
}

/// One test binary's run in the guest.
#[derive(Debug, Default)]
pub struct Binary {
    pub name: String,
    /// Its exit status; `None` if the guest never reported the end of the run.
    pub exit: Option<i32>,
    /// Test name → outcome, in the order they ran.
    pub tests: Vec<(String, Outcome)>,
    /// Test name → why it was skipped (or why a required test failed).
    pub notes: BTreeMap<String, String>,
    /// libtest's `test result: ...` line.
    pub summary: Option<String>,
    /// Everything it printed.
    pub lines: Vec<String>,
    /// Test name → how long it ran in the guest, by when the host read its result line (the
    /// guest runs one test at a time, and libtest prints `test <name> ... ` as a test starts
    /// and its outcome as it ends, so the time between two result lines is the later test's).
    pub seconds: BTreeMap<String, f64>,
    /// From `test-begin` to `test-end`, when the console lines were timed.
    pub total: Option<Duration>,
    /// The `---- <name> stdout ----` section being read.
    section: Option<String>,
    /// When the binary started, and when its last test ended (console time).
    began: Option<Duration>,
    last_end: Option<Duration>,
}

impl Binary {
    fn set(&mut self, test: &str, outcome: Outcome) {
        match self.tests.iter_mut().find(|(n, _)| n == test) {
            Some((_, o)) => *o = outcome,
            None => self.tests.push((test.to_string(), outcome)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Boot,
    Init,
    Probe,
    Test,
    Coverage,
    Dmesg,
}

/// What a console line meant, for the host's live output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `/init` started: the kernel booted.
    Init,
    /// The guest reported its overall status; it powers off next.
    Done,
    /// Worth showing live (test output, markers).
    Show,
    /// Boot messages, probe JSON, dmesg: kept in the log only.
    Quiet,
}

/// The parsed console of one guest run.
#[derive(Debug)]
pub struct Console {
    pub kernel: Option<String>,
    pub lsm: Option<String>,
    pub probe_status: Option<i32>,
    pub probe_json: String,
    pub binaries: Vec<Binary>,
    pub done: Option<i32>,
    pub mount_failures: Vec<String>,
    /// Coverage cells (`$WARDEN_COVERAGE_OUT` lines) the guest's tests wrote.
    pub coverage: Vec<String>,
    /// Kernel messages before `/init` and the guest's dmesg dump, if any.
    pub kernel_lines: Vec<String>,
    section: Section,
    /// When the line being fed was read (from the guest's start), if the caller timed it.
    now: Option<Duration>,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            kernel: None,
            lsm: None,
            probe_status: None,
            probe_json: String::new(),
            binaries: Vec::new(),
            done: None,
            mount_failures: Vec::new(),
            coverage: Vec::new(),
            kernel_lines: Vec::new(),
            section: Section::Boot,
            now: None,
        }
    }
}

fn status_of(rest: &str) -> Option<i32> {
    rest.split_whitespace().find_map(|w| w.strip_prefix("status=")).and_then(|s| s.parse().ok())
}

impl Console {
    /// Feeds one console line read `at` this long after the guest started: tests are timed.
    pub fn feed_at(&mut self, line: &str, at: Duration) -> Seen {
        self.now = Some(at);
        self.feed(line)
    }

    /// Feeds one console line (without its line ending).
    pub fn feed(&mut self, line: &str) -> Seen {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(rest) = line.strip_prefix(MARKER) {
            return self.marker(rest.trim());
        }
        match self.section {
            Section::Boot | Section::Dmesg => {
                self.kernel_lines.push(line.to_string());
                Seen::Quiet
            }
            Section::Coverage => {
                if !line.trim().is_empty() {
                    self.coverage.push(line.to_string());
                }
                Seen::Quiet
            }
            Section::Probe => {
                self.probe_json.push_str(line);
                self.probe_json.push('\n');
                Seen::Quiet
            }
            Section::Init => {
                if line.trim().is_empty() {
                    Seen::Quiet
                } else {
                    Seen::Show
                }
            }
            Section::Test => {
                if let Some(b) = self.binaries.last_mut() {
                    b.lines.push(line.to_string());
                    test_line(b, line, self.now);
                }
                if line.trim().is_empty() { Seen::Quiet } else { Seen::Show }
            }
        }
    }

    fn marker(&mut self, rest: &str) -> Seen {
        let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "init" => {
                for kv in args.split_whitespace() {
                    if let Some(k) = kv.strip_prefix("kernel=") {
                        self.kernel = Some(k.to_string());
                    } else if let Some(l) = kv.strip_prefix("lsm=") {
                        self.lsm = Some(l.to_string());
                    }
                }
                self.section = Section::Init;
                return Seen::Init;
            }
            "mount-failed" => self.mount_failures.push(args.to_string()),
            "probe-begin" => self.section = Section::Probe,
            "probe-end" => {
                self.probe_status = status_of(args);
                self.section = Section::Init;
            }
            "test-begin" => {
                self.binaries.push(Binary {
                    name: args.trim().to_string(),
                    began: self.now,
                    last_end: self.now,
                    ..Binary::default()
                });
                self.section = Section::Test;
            }
            "test-end" => {
                if let Some(b) = self.binaries.last_mut() {
                    b.exit = status_of(args);
                    b.total = self.now.zip(b.began).map(|(now, began)| now.saturating_sub(began));
                }
                self.section = Section::Init;
            }
            "coverage-begin" => {
                self.section = Section::Coverage;
                return Seen::Quiet;
            }
            "coverage-end" => {
                self.section = Section::Init;
                return Seen::Quiet;
            }
            "dmesg-begin" => self.section = Section::Dmesg,
            "dmesg-end" => self.section = Section::Init,
            "done" => {
                self.done = status_of(args);
                self.section = Section::Init;
                return Seen::Done;
            }
            _ => {}
        }
        Seen::Show
    }
}

/// Reads libtest's pretty output, `--show-output` sections and Warden's `SKIP` lines; `now`
/// (console time) times each test.
fn test_line(b: &mut Binary, line: &str, now: Option<Duration>) {
    if let Some(rest) = line.strip_prefix("test ") {
        if let Some(summary) = rest.strip_prefix("result: ") {
            b.summary = Some(format!("test result: {summary}"));
            return;
        }
        if let Some((name, outcome)) = rest.rsplit_once(" ... ") {
            let outcome = match outcome.trim() {
                "ok" => Outcome::Ok,
                "FAILED" => Outcome::Failed,
                o if o.starts_with("ignored") => Outcome::Ignored,
                _ => return,
            };
            if let (Some(now), Some(from)) = (now, b.last_end) {
                let secs = now.saturating_sub(from).as_secs_f64();
                b.seconds.insert(name.trim().to_string(), (secs * 10.0).round() / 10.0);
                b.last_end = Some(now);
            }
            b.set(name.trim(), outcome);
        }
        return;
    }
    if let Some(name) = line.strip_prefix("---- ").and_then(|r| r.strip_suffix(" stdout ----")) {
        b.section = Some(name.to_string());
        return;
    }
    if line == "successes:" || line == "failures:" {
        b.section = None;
        return;
    }
    if let Some((name, reason)) = line.strip_prefix("SKIP ").and_then(|r| r.split_once(": ")) {
        // Attribute the skip to the test whose captured output this is, else to the name it gives.
        let test = b.section.clone().unwrap_or_else(|| name.trim().to_string());
        let failed = b.tests.iter().any(|(n, o)| *n == test && *o == Outcome::Failed);
        if !failed {
            b.set(&test, Outcome::Skipped);
            b.notes.insert(test, reason.trim().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    0.000000] Linux version 6.1.0-56-cloud-amd64\r
WARDEN-VM: init kernel=6.1.0-56-cloud-amd64 lsm=lockdown,capability,landlock,yama,bpf\r
WARDEN-VM: probe-begin\r
{\"kernel\": \"6.1.0-56-cloud-amd64\"}\r
WARDEN-VM: probe-end status=0\r
WARDEN-VM: test-begin lsm\r
\r
running 3 tests\r
test a_works ... ok\r
test b_skips ... ok\r
test c_breaks ... FAILED\r
\r
successes:\r
\r
---- b_skips stdout ----\r
SKIP b_skips_custom_name: fentry unavailable on 6.1\r
\r
successes:\r
    a_works\r
    b_skips\r
\r
failures:\r
\r
---- c_breaks stdout ----\r
thread 'c_breaks' panicked at tests/lsm.rs:1:1:\r
\r
failures:\r
    c_breaks\r
\r
test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r
\r
WARDEN-VM: test-end lsm status=101\r
WARDEN-VM: coverage-begin\r
{\"control\":\"exec identity\"}\r
WARDEN-VM: coverage-end\r
WARDEN-VM: dmesg-begin\r
[    1.0] something\r
WARDEN-VM: dmesg-end\r
WARDEN-VM: done status=1\r
";

    #[test]
    fn parses_a_guest_console() {
        let mut c = Console::default();
        let seen: Vec<Seen> = CONSOLE.lines().map(|l| c.feed(l)).collect();
        assert_eq!(seen[0], Seen::Quiet);
        assert_eq!(seen[1], Seen::Init);
        assert_eq!(*seen.last().unwrap(), Seen::Done);
        assert_eq!(c.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert!(c.lsm.as_deref().unwrap().ends_with(",bpf"));
        assert_eq!(c.probe_status, Some(0));
        assert_eq!(c.probe_json.trim(), "{\"kernel\": \"6.1.0-56-cloud-amd64\"}");
        assert_eq!(c.done, Some(1));
        let b = &c.binaries[0];
        assert_eq!(b.name, "lsm");
        assert_eq!(b.exit, Some(101));
        assert_eq!(
            b.tests,
            [
                ("a_works".to_string(), Outcome::Ok),
                ("b_skips".to_string(), Outcome::Skipped),
                ("c_breaks".to_string(), Outcome::Failed)
            ]
        );
        assert_eq!(b.notes["b_skips"], "fentry unavailable on 6.1");
        assert!(b.summary.as_deref().unwrap().starts_with("test result: FAILED. 2 passed; 1 failed"));
        assert_eq!(c.kernel_lines.len(), 2);
        assert_eq!(c.coverage, ["{\"control\":\"exec identity\"}"]);
    }

    #[test]
    fn tests_are_timed_by_when_their_results_arrive() {
        let mut c = Console::default();
        let s = Duration::from_secs;
        for (l, t) in [
            ("WARDEN-VM: init kernel=x lsm=bpf", 5),
            ("WARDEN-VM: test-begin scope", 10),
            ("running 2 tests", 11),
            ("test a ... ok", 14),
            ("test b ... FAILED", 30),
            ("test result: FAILED. 1 passed; 1 failed", 31),
            ("WARDEN-VM: test-end scope status=101", 32),
        ] {
            c.feed_at(l, s(t));
        }
        let b = &c.binaries[0];
        assert_eq!(b.seconds["a"], 4.0);
        assert_eq!(b.seconds["b"], 16.0);
        assert_eq!(b.total, Some(s(22)));
    }

    #[test]
    fn a_run_cut_short_has_no_exit_status() {
        let mut c = Console::default();
        for l in [
            "WARDEN-VM: init kernel=x lsm=bpf",
            "WARDEN-VM: test-begin lsm",
            "test a ... ok",
            "[ 9.9] Kernel panic",
        ] {
            c.feed(l);
        }
        assert_eq!(c.binaries[0].exit, None);
        assert_eq!(c.done, None);
    }
}
