//! `warden rules test DIR` and `warden replay`.
use std::{
    fs::File,
    io::{IsTerminal, Read, Write},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::anyhow;
use serde_json::Value;

use super::{
    Failure,
    call_filter::{CallFilter, Take},
};
use crate::{
    audit::{ocsf, schema},
    loader::user_dev_to_kernel,
    rules::{
        RuleSet, Severity,
        engine::{Engine, Evaluator, Finding, Outcome, test_rules},
        view::{RecordView, ReplayRecord},
    },
    scope::{
        Scope,
        compile::{CompiledScope, egress_allows},
    },
};

#[derive(Debug, clap::Subcommand)]
pub enum RulesCmd {
    /// Run every rule's example streams (`tests.fire` must fire, `tests.quiet` must not).
    Test {
        /// Directory of rule files (*.yaml).
        dir: PathBuf,
    },
}

pub fn rules(cmd: RulesCmd) -> Result<i32, Failure> {
    let RulesCmd::Test { dir } = cmd;
    let set = RuleSet::load_dir(&dir).map_err(|e| Failure::Usage(e.into()))?;
    let results = test_rules(&set);
    let mut failed = 0;
    for r in &results {
        if r.failures.is_empty() {
            println!("PASS {} ({} examples)", r.rule, r.passed);
        } else {
            failed += 1;
            println!("FAIL {}", r.rule);
            for f in &r.failures {
                println!("     {f}");
            }
        }
    }
    println!("rules: {} passed, {failed} failed", results.len() - failed);
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Output format of replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplayFormat {
    /// One finding per line, for people.
    Text,
    /// One finding per line, as JSON.
    Json,
    /// Every record mapped to an OCSF 1.x event, one per line, findings as Detection Findings
    /// (docs/ocsf.md). Needs neither --rules nor --scope.
    Ocsf,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Recorded logs (JSON Lines), in order.
    #[arg(required_unless_present = "nats")]
    pub files: Vec<PathBuf>,
    /// Also replay a NATS JetStream stream (after the files), e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// The JetStream stream to replay.
    #[arg(long, default_value = crate::audit::nats::STREAM)]
    pub stream: String,
    /// Rule directory to run over the recording.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Re-judge the recording against this scope: what would it have refused?
    #[arg(long)]
    pub scope: Option<PathBuf>,
    /// Only this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only this call (a tool call or stage) and the calls under it, with their task's
    /// task_start and task_end as context.
    #[arg(long, value_name = "ID")]
    pub call: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReplayFormat,
    /// Skip (and count) corrupt lines instead of stopping at the first one.
    #[arg(long)]
    pub keep_going: bool,
    /// Threads that parse and evaluate lines ahead of the (sequential) rule state; the output
    /// is byte-identical whatever the number. Default: the CPUs this process may use.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    /// --format ocsf: `device.hostname` of every event, overriding the node the records name
    /// (default: the node each task's task_start names, else this host).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
}

/// Re-judges exec and egress records against a compiled scope.
fn rejudge(rec: &dyn RecordView, scope: &CompiledScope) -> Option<String> {
    match rec.str_field("kind")? {
        "exec" => {
            let allow = scope.exec.as_ref()?;
            let (dev, ino) = (rec.u64_field("dev")?, rec.u64_field("ino")?);
            let allowed =
                allow.iter().any(|f| f.ino == ino && user_dev_to_kernel(f.dev) == user_dev_to_kernel(dev))
                    || rec.str_field("exe").is_some_and(|e| scope.in_exec_dir(std::path::Path::new(e)));
            (!allowed)
                .then(|| format!("exec of {} (not in exec.allow)", rec.str_field("path").unwrap_or("?")))
        }
        k @ ("connect" | "sendmsg") => {
            let entries = scope.egress.as_ref()?;
            let addr: IpAddr = rec.str_field("addr")?.parse().ok()?;
            let port = rec.u64_field("port")? as u16;
            let proto = match rec.str_field("protocol")? {
                "tcp" => 6,
                "udp" => 17,
                other => other.parse().ok()?,
            };
            (!egress_allows(entries, addr, port, proto))
                .then(|| format!("{k} to {addr}:{port} (not in network.egress)"))
        }
        _ => None,
    }
}

fn print(
    f: &Finding,
    format: ReplayFormat,
    ctx: &ocsf::Context,
    out: &mut impl Write,
) -> std::io::Result<()> {
    match format {
        ReplayFormat::Ocsf => {
            serde_json::to_writer(&mut *out, &ocsf::finding(f, ctx))?;
            writeln!(out)
        }
        ReplayFormat::Json => {
            serde_json::to_writer(&mut *out, f)?;
            writeln!(out)
        }
        ReplayFormat::Text => writeln!(
            out,
            "{} {:<8} {} task={} records={:?}: {}",
            f.time,
            format!("{:?}", f.severity).to_lowercase(),
            f.rule,
            f.task,
            f.seqs,
            f.description
        ),
    }
}

pub fn replay(args: ReplayArgs) -> Result<i32, Failure> {
    let usage = |e: anyhow::Error| Failure::Usage(e);
    let set = match &args.rules {
        Some(d) => RuleSet::load_dir(d).map_err(|e| usage(e.into()))?,
        None => RuleSet::empty(),
    };
    let scope = match &args.scope {
        Some(p) => Some(
            CompiledScope::compile(&Scope::load(p).map_err(|e| usage(e.into()))?)
                .map_err(|e| usage(e.into()))?,
        ),
        None => None,
    };
    if set.rules.is_empty() && scope.is_none() && args.format != ReplayFormat::Ocsf {
        return Err(usage(anyhow!("give --rules DIR, --scope FILE, or both")));
    }
    let total: u64 = args.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let bar = (total > 64 << 20 && std::io::stderr().is_terminal())
        .then(|| indicatif::ProgressBar::new(total).with_style(indicatif::ProgressStyle::default_bar()));
    let ctx = ocsf::Context::new(
        args.host.clone(),
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()),
    );
    let stdout = std::io::stdout();
    // Big writes: OCSF output is ~1.5 KB per record.
    let mut r = Replayer {
        uses_event: set.uses_event(),
        engine: Engine::new(&set),
        scope: scope.as_ref(),
        ctx,
        out: std::io::BufWriter::with_capacity(1 << 20, stdout.lock()),
        args: &args,
        calls: args.call.as_deref().map(CallFilter::new),
        records: 0,
        findings: 0,
        skipped: 0,
    };
    let jobs = args.jobs.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    );
    let mut ahead: Vec<Evaluator<'_>> = (0..jobs).map(|_| Evaluator::new(&set)).collect();
    for path in &args.files {
        let f = File::open(path).map_err(|e| usage(anyhow!("cannot open {}: {e}", path.display())))?;
        if !r.file(f, &path.display().to_string(), &mut ahead, bar.as_ref())? {
            return Ok(1);
        }
    }
    let mut incomplete = false;
    if let Some(url) = &args.nats {
        let (ok, got) = replay_stream(url, &args.stream, &mut r)?;
        if !ok {
            return Ok(1);
        }
        eprintln!(
            "replay: stream {}: read {} of {} messages (up to sequence {})",
            args.stream, got.read, got.held, got.last_sequence
        );
        if got.read < got.held {
            eprintln!(
                "warden: stream {} delivered {} of the {} messages it held at the start; \
                 the replay is incomplete (were messages removed by the stream's limits?)",
                args.stream, got.read, got.held
            );
            incomplete = true;
        }
    }
    r.out.flush().map_err(|e| Failure::Runtime(e.into()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(c) = &r.calls {
        eprintln!(
            "replay: call {}: {} records matched (the call and {} calls under it), {} task records as context",
            c.root(),
            c.matched,
            c.descendants,
            c.context
        );
    }
    eprintln!(
        "replay: {} records, {} findings, {} lines skipped, {} expressions failed to evaluate",
        r.records, r.findings, r.skipped, r.engine.eval_errors
    );
    Ok(if incomplete { 1 } else { 0 })
}

/// Replays one record at a time, whatever it is read from.
struct Replayer<'a, W: Write> {
    /// A rule reads `event`: records are read as JSON trees.
    uses_event: bool,
    engine: Engine<'a>,
    scope: Option<&'a CompiledScope>,
    ctx: ocsf::Context,
    out: W,
    args: &'a ReplayArgs,
    /// `--call`: which records belong to the call.
    calls: Option<CallFilter>,
    records: u64,
    findings: u64,
    skipped: u64,
}

/// Bytes of a log read and handled as one block: a block's lines are parsed, their rule steps
/// evaluated and their OCSF events written by one worker thread, while other workers do the
/// next blocks; the blocks' results are then fed to the rule state in order. Bounds replay's
/// memory (the blocks in flight, their parsed records, outcomes and events) whatever the log's
/// size.
const BLOCK_BYTES: usize = 2 << 20;

/// Blocks queued for a worker: with one waiting for it and the one it works on (or has done and
/// hands over when the rule state asks for it), `--jobs N` keeps at most 2N + 1 blocks in memory
/// (the reader's own included).
const QUEUED_PER_WORKER: usize = 1;

/// A line of a block, as the worker that read it ahead left it.
// Nearly every line is a `Record`: boxing it would cost an allocation per line and save nothing.
#[allow(clippy::large_enum_variant)]
enum Ahead<'b> {
    /// A current-schema record read for rules; its steps' outcomes are at its index × steps.
    Record(ReplayRecord<'b>),
    /// A current-schema record read whole (OCSF output): the same fields serve the rules and
    /// the event, so the line is parsed once.
    Fields(ocsf::Fields<'b>),
    /// Readable only through the JSON tree (older schema): handled in order, the slow way.
    Tree,
    /// Not a record: why.
    Bad(String),
}

/// Checks a parsed line's schema version: `Ok(true)` current, `Ok(false)` older (to be upgraded
/// through the JSON tree), `Err` unreadable.
fn current_schema(v: Option<u64>) -> Result<bool, String> {
    match schema::check(v) {
        Ok(v) => Ok(v == u64::from(crate::audit::SCHEMA_VERSION)),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads one line ahead: parse, check the schema, evaluate every rule step. With `whole`
/// (OCSF output) the line is read into all its fields, which the event is then written from.
fn read_ahead<'b>(
    line: &'b [u8],
    task: Option<&str>,
    whole: bool,
    eval: &mut Evaluator<'_>,
    one: &mut Vec<Outcome>,
    outcomes: &mut Vec<Outcome>,
) -> Ahead<'b> {
    let steps = eval.step_count();
    let skip = |outcomes: &mut Vec<Outcome>| outcomes.extend(std::iter::repeat_n(Outcome::No, steps));
    let line = match std::str::from_utf8(line) {
        Ok(l) => l,
        Err(e) => {
            skip(outcomes);
            return Ahead::Bad(format!("not UTF-8: {e}"));
        }
    };
    // OCSF output: all fields, parsed once. A line that is not an object (or not JSON) takes
    // the rules' reading below, so it is judged with the same words as without OCSF.
    if whole && let Ok(Some(f)) = ocsf::Fields::parse(line) {
        return read_current(f, Ahead::Fields, task, eval, one, outcomes);
    }
    match ReplayRecord::parse(line) {
        Ok(rec) => read_current(rec, Ahead::Record, task, eval, one, outcomes),
        Err(e) => {
            skip(outcomes);
            Ahead::Bad(format!("not a JSON record: {e}"))
        }
    }
}

/// A parsed line, by its schema version: a current record has its rule steps evaluated and is
/// kept (`keep`); an older one goes the JSON tree's way ([`Ahead::Tree`]); anything else is
/// [`Ahead::Bad`], with why. The same check for both readings of [`read_ahead`].
fn read_current<'b, R: RecordView>(
    rec: R,
    keep: impl FnOnce(R) -> Ahead<'b>,
    task: Option<&str>,
    eval: &mut Evaluator<'_>,
    one: &mut Vec<Outcome>,
    outcomes: &mut Vec<Outcome>,
) -> Ahead<'b> {
    let not_current = match current_schema(rec.u64_field("v")) {
        Ok(true) => {
            evaluate(&rec, task, eval, one, outcomes);
            return keep(rec);
        }
        Ok(false) => Ahead::Tree,
        Err(e) => Ahead::Bad(e),
    };
    outcomes.extend(std::iter::repeat_n(Outcome::No, eval.step_count()));
    not_current
}

/// Appends the outcomes of every rule step for `rec` (all "no" for another task's record).
fn evaluate(
    rec: &dyn RecordView,
    task: Option<&str>,
    eval: &mut Evaluator<'_>,
    one: &mut Vec<Outcome>,
    outcomes: &mut Vec<Outcome>,
) {
    let steps = eval.step_count();
    if task.is_some_and(|t| rec.str_field("task") != Some(t)) {
        outcomes.extend(std::iter::repeat_n(Outcome::No, steps));
    } else {
        eval.outcomes(rec, one);
        debug_assert_eq!(one.len(), steps);
        outcomes.extend_from_slice(one);
    }
}

/// A record's OCSF event, as [`Replayer::record`] gets it.
enum Ocsf<'x> {
    /// None to write (not OCSF output, or a record with no OCSF counterpart).
    None,
    /// To be written from the record's JSON tree.
    Tree(&'x Value),
    /// Written ahead, newline included.
    Bytes(&'x [u8]),
}

/// What records of a block teach the OCSF context: (line index in the block, task, node) of
/// every `task_start` with a node, in order. Only lines that can be one are parsed.
fn teachings(lines: &[&[u8]]) -> Vec<(usize, String, String)> {
    let kind = memchr::memmem::Finder::new(b"task_start");
    let escape = memchr::memmem::Finder::new(b"\\u");
    lines
        .iter()
        .enumerate()
        // A key or value spelled with \u escapes could hide the word: parse those too.
        .filter(|(_, l)| kind.find(l).is_some() || escape.find(l).is_some())
        .filter_map(|(i, l)| {
            let v = schema::upgrade(serde_json::from_slice::<Value>(l).ok()?).ok()?;
            let (task, node) = ocsf::Context::teaches(&v)?;
            Some((i, task.to_string(), node.to_string()))
        })
        .collect()
}

/// [`teachings`] of a block's lines; most blocks hold neither word and are not split.
fn teachings_of(block: &[u8]) -> Vec<(usize, String, String)> {
    if memchr::memmem::find(block, b"task_start").is_none() && memchr::memmem::find(block, b"\\u").is_none() {
        return Vec::new();
    }
    teachings(&lines_of(block))
}

/// The lines of a block (whole lines, the last one's newline optional).
fn lines_of(block: &[u8]) -> Vec<&[u8]> {
    let body = block.strip_suffix(b"\n").unwrap_or(block);
    let mut lines: Vec<&[u8]> = Vec::with_capacity(body.len() / 256 + 1);
    let mut from = 0;
    for i in memchr::memchr_iter(b'\n', body) {
        lines.push(&body[from..i]);
        from = i + 1;
    }
    lines.push(&body[from..]);
    lines
}

/// One worker's OCSF conversion of a block: the context as of each line, and the events written.
struct OcsfAhead<'c> {
    on: bool,
    ctx: std::borrow::Cow<'c, ocsf::Context>,
    teach: &'c [(usize, String, String)],
    /// The next of `teach` not yet applied to `ctx`.
    next: usize,
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl<'c> OcsfAhead<'c> {
    /// For the `n` lines of a block; `ctx` is the context as of the block's start.
    fn new(on: bool, ctx: &'c ocsf::Context, teach: &'c [(usize, String, String)], n: usize) -> Self {
        OcsfAhead {
            on,
            ctx: std::borrow::Cow::Borrowed(ctx),
            teach,
            next: 0,
            out: Vec::with_capacity(if on { n * 1536 } else { 0 }),
            ends: Vec::with_capacity(if on { n } else { 0 }),
        }
    }

    fn learn_up_to(&mut self, at: usize) {
        while let Some((i, task, node)) = self.teach.get(self.next)
            && *i <= at
        {
            self.ctx.to_mut().learn_node(task, node);
            self.next += 1;
        }
    }

    /// Writes line `at`'s event, if it is a record of the replayed task. A line that cannot be
    /// read this way goes the tree's way ([`Ahead::Tree`]).
    fn line<'b>(&mut self, at: usize, line: &'b [u8], a: Ahead<'b>, task: Option<&str>) -> Ahead<'b> {
        if !self.on {
            return a;
        }
        self.learn_up_to(at);
        let a = match a {
            Ahead::Fields(f) => {
                if task.is_none_or(|t| f.str("task") == Some(t)) {
                    ocsf::write_line(&f, &self.ctx, &mut self.out);
                }
                Ahead::Fields(f)
            }
            Ahead::Record(rec) if task.is_none_or(|t| rec.str_field("task") == Some(t)) => {
                let fields =
                    std::str::from_utf8(line).ok().and_then(|l| ocsf::Fields::parse(l).ok().flatten());
                match fields {
                    Some(f) => {
                        ocsf::write_line(&f, &self.ctx, &mut self.out);
                        Ahead::Record(rec)
                    }
                    None => Ahead::Tree,
                }
            }
            other => other,
        };
        self.ends.push(self.out.len());
        a
    }
}

/// How a record's rule steps are answered.
enum Steps<'o> {
    /// Evaluated now, as the rule state asks.
    Now,
    /// Evaluated ahead (see [`read_ahead`]).
    Ahead(&'o [Outcome]),
}

/// A block on its way to a worker: its bytes, and what the OCSF context is as of its first
/// line and learns from its lines.
struct Job {
    block: Vec<u8>,
    ctx: std::sync::Arc<ocsf::Context>,
    teach: Vec<(usize, String, String)>,
}

/// A block as a worker left it: its lines read, their rule steps evaluated, their OCSF events
/// written.
struct Parsed {
    // The fields that borrow from `block` come first: they are dropped before it.
    /// Each line's reading; borrows `block`'s bytes (see [`Parsed::read`]).
    read: Vec<Ahead<'static>>,
    /// Each line; borrows `block`'s bytes.
    lines: Vec<&'static [u8]>,
    /// The rule steps' outcomes, `steps` per line.
    outcomes: Vec<Outcome>,
    /// The OCSF events of the lines (OCSF output only) ...
    ocsf: Vec<u8>,
    /// ... and where each line's ends in `ocsf`.
    ends: Vec<usize>,
    teach: Vec<(usize, String, String)>,
    /// Rule steps per line.
    steps: usize,
    /// Never changed, moved out or freed while `read` and `lines` exist.
    #[allow(dead_code)]
    block: Vec<u8>,
}

impl Parsed {
    /// Reads a block's lines: the worker's share of a replay.
    fn of(job: Job, eval: &mut Evaluator<'_>, task: Option<&str>, ocsf_out: bool) -> Parsed {
        let Job { block, ctx, teach } = job;
        // SAFETY: the slice points into `block`'s heap buffer, which `Parsed` owns and never
        // changes, moves out of or frees while it exists; moving a `Vec` does not move its
        // buffer. Everything borrowing it (`read`, `lines`) is dropped before `block` (field
        // order) and is handed out only with the lifetime of a borrow of the `Parsed`
        // ([`Parsed::read`], [`Parsed::lines`]).
        let bytes: &'static [u8] = unsafe { std::slice::from_raw_parts(block.as_ptr(), block.len()) };
        let lines = lines_of(bytes);
        let steps = eval.step_count();
        let mut outcomes = Vec::with_capacity(lines.len() * steps);
        let mut one = Vec::with_capacity(steps);
        let mut ocsf = OcsfAhead::new(ocsf_out, &ctx, &teach, lines.len());
        let read = lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let a = read_ahead(l, task, ocsf_out, eval, &mut one, &mut outcomes);
                ocsf.line(i, l, a, task)
            })
            .collect();
        let (ocsf, ends) = (ocsf.out, ocsf.ends);
        Parsed { read, lines, outcomes, ocsf, ends, teach, steps, block }
    }

    fn read(&self) -> &[Ahead<'_>] {
        &self.read
    }

    fn lines(&self) -> &[&[u8]] {
        &self.lines
    }
}

/// Reads a log in blocks of whole lines (the last line of a file may lack its newline).
struct Blocks<R> {
    r: R,
    /// The start of the next block's first line.
    carry: Vec<u8>,
    eof: bool,
}

impl<R: Read> Blocks<R> {
    fn new(r: R) -> Self {
        Blocks { r, carry: Vec::new(), eof: false }
    }

    /// The next block, `None` at the end.
    fn next_block(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(BLOCK_BYTES);
        buf.append(&mut self.carry);
        let mut want = BLOCK_BYTES;
        loop {
            if buf.len() < want && !self.eof {
                // Into the buffer's spare room (no zeroing first); short of `want` only at the end.
                let room = want - buf.len();
                let got = (&mut self.r).take(room as u64).read_to_end(&mut buf)?;
                self.eof = got < room;
            }
            if buf.is_empty() {
                return Ok(None);
            }
            if self.eof {
                return Ok(Some(buf));
            }
            match memchr::memrchr(b'\n', &buf) {
                Some(i) => {
                    self.carry = buf[i + 1..].to_vec();
                    buf.truncate(i + 1);
                    return Ok(Some(buf));
                }
                // One line longer than a block: read more of it.
                None => want *= 2,
            }
        }
    }
}

/// What the reader hands a worker, in log order.
enum Work {
    Block(Job),
    Failed(String),
}

/// What a worker hands the rule state, in log order.
enum Done {
    Block(Parsed),
    Failed(String),
}

impl<W: Write> Replayer<'_, W> {
    /// Replays one log file block by block; `Ok(false)`: stopped at a corrupt line.
    ///
    /// Three stages run at once: a reader thread cuts the file into blocks (and notes what
    /// they teach the OCSF context), `ahead.len()` workers read one block each (parse,
    /// evaluate rule steps, write OCSF events), and this thread feeds their results to the rule
    /// state in log order (block i is worker i mod N's), so the output is the same whatever
    /// the number of workers.
    fn file(
        &mut self,
        f: File,
        source: &str,
        ahead: &mut [Evaluator<'_>],
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<bool, Failure> {
        if self.uses_event {
            return self.file_in_order(f, source, bar);
        }
        let ocsf_out = self.args.format == ReplayFormat::Ocsf;
        let task = self.args.task.clone();
        let workers = ahead.len();
        let start_ctx = self.ctx.clone();
        std::thread::scope(|s| {
            let mut to_workers = Vec::with_capacity(workers);
            let mut from_workers = Vec::with_capacity(workers);
            for eval in ahead.iter_mut() {
                let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<Work>(QUEUED_PER_WORKER);
                // A rendezvous: a done block stays with its worker until the rule state takes it.
                let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Done>(0);
                let task = task.as_deref().map(str::to_string);
                std::thread::Builder::new()
                    .name("replay-worker".into())
                    .spawn_scoped(s, move || {
                        for w in work_rx {
                            let done = match w {
                                Work::Block(job) => {
                                    Done::Block(Parsed::of(job, eval, task.as_deref(), ocsf_out))
                                }
                                Work::Failed(e) => Done::Failed(e),
                            };
                            if done_tx.send(done).is_err() {
                                return; // the rule state stopped
                            }
                        }
                    })
                    .expect("spawn a replay worker");
                to_workers.push(work_tx);
                from_workers.push(done_rx);
            }
            std::thread::Builder::new()
                .name("replay-reader".into())
                .spawn_scoped(s, move || {
                    let mut blocks = Blocks::new(f);
                    let mut ctx = std::sync::Arc::new(start_ctx);
                    for i in 0.. {
                        let work = match blocks.next_block() {
                            Ok(Some(block)) => {
                                let teach = if ocsf_out { teachings_of(&block) } else { Vec::new() };
                                let job = Job { block, ctx: ctx.clone(), teach };
                                for (_, t, node) in &job.teach {
                                    std::sync::Arc::make_mut(&mut ctx).learn_node(t, node);
                                }
                                Work::Block(job)
                            }
                            Ok(None) => return,
                            Err(e) => Work::Failed(e.to_string()),
                        };
                        let failed = matches!(work, Work::Failed(_));
                        if to_workers[i % workers].send(work).is_err() || failed {
                            return;
                        }
                    }
                })
                .expect("spawn the replay reader");
            let mut n = 0usize;
            for i in 0.. {
                let Ok(done) = from_workers[i % workers].recv() else {
                    return Ok(true); // the reader reached the end
                };
                let go = match done {
                    Done::Block(p) => {
                        if let Some(b) = bar {
                            b.inc(p.block.len() as u64);
                        }
                        self.consume(&p, source, &mut n, ocsf_out)
                    }
                    Done::Failed(e) => Err(Failure::Runtime(anyhow!("{source}: {e}"))),
                };
                match go {
                    Ok(true) => {}
                    // Stopping: the workers' and the reader's next sends fail, and they end.
                    other => {
                        drop(from_workers);
                        return other;
                    }
                }
            }
            unreachable!("blocks are counted in usize")
        })
    }

    /// Replays one log file a line at a time on this thread (rules that read `event` need
    /// every record as a JSON tree anyway).
    fn file_in_order(
        &mut self,
        f: File,
        source: &str,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<bool, Failure> {
        let mut blocks = Blocks::new(f);
        let mut n = 0usize;
        while let Some(block) = blocks.next_block().map_err(|e| Failure::Runtime(anyhow!("{source}: {e}")))? {
            for line in lines_of(&block) {
                n += 1;
                let line = String::from_utf8_lossy(line);
                if !self.line(source, n, &line)? {
                    return Ok(false);
                }
            }
            if let Some(b) = bar {
                b.inc(block.len() as u64);
            }
        }
        Ok(true)
    }

    /// Feeds a block's records, as a worker read them, to the rule state in order.
    fn consume(&mut self, p: &Parsed, source: &str, n: &mut usize, ocsf_out: bool) -> Result<bool, Failure> {
        let steps = p.steps;
        let mut teach_next = p.teach.iter().peekable();
        let mut from = 0usize;
        for (i, (a, line)) in p.read().iter().zip(p.lines()).enumerate() {
            *n += 1;
            while let Some((_, t, node)) = teach_next.next_if(|(at, ..)| *at <= i) {
                self.ctx.learn_node(t, node);
            }
            let event = match p.ends.get(i) {
                Some(&end) if ocsf_out => {
                    let bytes = &p.ocsf[from..end];
                    from = end;
                    Ocsf::Bytes(bytes)
                }
                _ => Ocsf::None,
            };
            let outcomes = Steps::Ahead(&p.outcomes[i * steps..(i + 1) * steps]);
            let go = match a {
                Ahead::Record(rec) => self.record(rec, line, event, outcomes)?,
                Ahead::Fields(f) => self.record(f, line, event, outcomes)?,
                Ahead::Tree => self.line(source, *n, &String::from_utf8_lossy(line))?,
                Ahead::Bad(e) => self.bad_line(source, *n, e.clone())?,
            };
            if !go {
                return Ok(false);
            }
        }
        Ok(true)
    }
    /// Handles one line from `source` (line `n`); `Ok(false)` means stop: a corrupt line
    /// without --keep-going (the error is printed).
    ///
    /// Rules and re-judging read the line's fields in place ([`ReplayRecord`]); a JSON tree is
    /// built only for OCSF output, for rules that read `event`, and for records of an older
    /// schema (which the converter upgrades).
    fn line(&mut self, source: &str, n: usize, line: &str) -> Result<bool, Failure> {
        if self.args.format != ReplayFormat::Ocsf && !self.uses_event {
            let typed = ReplayRecord::parse(line)
                .map_err(|e| format!("not a JSON record: {e}"))
                .and_then(|r| schema::check(r.u64_field("v")).map(|v| (r, v)).map_err(|e| e.to_string()));
            match typed {
                Ok((rec, v)) if v == u64::from(crate::audit::SCHEMA_VERSION) => {
                    return self.record(&rec, line.as_bytes(), Ocsf::None, Steps::Now);
                }
                Ok(_) => {} // older: through the converter below
                Err(e) => return self.bad_line(source, n, e),
            }
        }
        let parsed = serde_json::from_str::<Value>(line)
            .map_err(|e| format!("not a JSON record: {e}"))
            .and_then(|v| schema::upgrade(v).map_err(|e| e.to_string()));
        match parsed {
            Ok(rec) => {
                self.ctx.learn(&rec);
                self.record(&rec, line.as_bytes(), Ocsf::Tree(&rec), Steps::Now)
            }
            Err(e) => self.bad_line(source, n, e),
        }
    }

    /// A line that is not a readable record: skipped and counted with --keep-going, else the
    /// end of the replay.
    fn bad_line(&mut self, source: &str, n: usize, e: String) -> Result<bool, Failure> {
        if self.args.keep_going {
            self.skipped += 1;
            tracing::warn!(source, line = n, error = %e, "skipped");
            return Ok(true);
        }
        eprintln!("warden: {source}:{n}: {e} (use --keep-going to skip bad lines)");
        Ok(false)
    }

    /// Handles one readable record (`event`: its OCSF event, written ahead or to write from
    /// the record's JSON tree, for OCSF output).
    fn record(
        &mut self,
        rec: &dyn RecordView,
        line: &[u8],
        event: Ocsf<'_>,
        steps: Steps<'_>,
    ) -> Result<bool, Failure> {
        if self.args.task.as_deref().is_some_and(|t| rec.str_field("task") != Some(t)) {
            return Ok(true);
        }
        if let Some(calls) = &mut self.calls {
            match calls.take(rec, || String::from_utf8_lossy(line).into_owned()) {
                Take::Skip => return Ok(true),
                Take::Keep => {}
                // The task's task_start, held until now: replayed first, in the slow way (it
                // is one line per task).
                Take::KeepAfter(start) => {
                    if !self.line("task_start", 0, &start)? {
                        return Ok(false);
                    }
                }
            }
        }
        self.records += 1;
        if self.args.format == ReplayFormat::Ocsf {
            let written = match event {
                Ocsf::Bytes(b) => self.out.write_all(b),
                Ocsf::Tree(tree) => match ocsf::Fields::of_value(tree) {
                    Some(f) => {
                        let mut line = Vec::with_capacity(2048);
                        ocsf::write_line(&f, &self.ctx, &mut line);
                        self.out.write_all(&line)
                    }
                    None => Ok(()),
                },
                Ocsf::None => Ok(()),
            };
            written.map_err(|e| Failure::Runtime(e.into()))?;
        }
        let mut found = match steps {
            Steps::Now => self.engine.observe_view(rec),
            Steps::Ahead(outcomes) => self.engine.observe_with(rec, outcomes),
        };
        if let Some(s) = self.scope
            && let Some(what) = rejudge(rec, s)
        {
            found.push(Finding {
                rule: "scope".into(),
                severity: Severity::Medium,
                description: format!("this scope would have refused: {what}"),
                task: rec.str_field("task").unwrap_or("").to_string(),
                pid: rec.u64_field("pid"),
                seqs: vec![rec.u64_field("seq").unwrap_or(0)],
                time: rec.str_field("time").unwrap_or("").to_string(),
            });
        }
        for f in &found {
            print(f, self.args.format, &self.ctx, &mut self.out).map_err(|e| Failure::Runtime(e.into()))?;
        }
        self.findings += found.len() as u64;
        Ok(true)
    }
}

/// How much of a stream a replay read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRead {
    /// Messages read.
    pub read: u64,
    /// Messages the stream held when the replay started.
    pub held: u64,
    /// The stream's last sequence when the replay started: the replay reads up to it.
    pub last_sequence: u64,
}

/// How long a replay waits for the server to deliver the next message before it calls the
/// stream incomplete.
const STREAM_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// Replays a JetStream stream in stream order, up to its last sequence as of the start.
///
/// The consumer acknowledges nothing (`AckPolicy::None`), so no pending-acknowledgement limit
/// stops delivery; the end is the last sequence the stream had when the replay began, never
/// "a fetch came back empty". Messages published after the start are left for the next replay.
fn replay_stream<W: Write>(
    url: &str,
    stream: &str,
    r: &mut Replayer<'_, W>,
) -> Result<(bool, StreamRead), Failure> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures_util::StreamExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    rt.block_on(async {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| Failure::Usage(anyhow!("cannot reach NATS at {url}: {e}")))?;
        let js = async_nats::jetstream::new(client);
        let s = js.get_stream(stream).await.map_err(|e| Failure::Usage(anyhow!("stream {stream}: {e}")))?;
        let source = format!("{url}/{stream}");
        let state = s.get_info().await.map_err(|e| Failure::Runtime(anyhow!("{source}: {e}")))?.state;
        let mut got = StreamRead { read: 0, held: state.messages, last_sequence: state.last_sequence };
        if state.messages == 0 {
            return Ok((true, got));
        }
        let consumer = s
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::None,
                inactive_threshold: std::time::Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(|e| Failure::Runtime(anyhow!("{source}: {e}")))?;
        let mut n = 0usize;
        let mut last_progress = std::time::Instant::now();
        loop {
            let mut batch = consumer
                .fetch()
                .max_messages(1000)
                .expires(std::time::Duration::from_secs(1))
                .messages()
                .await
                .map_err(|e| Failure::Runtime(anyhow!("{source}: {e}")))?;
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| Failure::Runtime(anyhow!("{source}: {e}")))?;
                let seq = m.info().map_err(|e| Failure::Runtime(anyhow!("{source}: {e}")))?.stream_sequence;
                if seq > got.last_sequence {
                    return Ok((true, got));
                }
                n += 1;
                got.read += 1;
                last_progress = std::time::Instant::now();
                let line = String::from_utf8_lossy(&m.payload);
                if !r.line(&source, n, &line)? {
                    return Ok((false, got));
                }
                if seq == got.last_sequence {
                    return Ok((true, got));
                }
            }
            if last_progress.elapsed() > STREAM_STALL {
                // Messages up to the last sequence were removed (limits, purge) or the server
                // stopped delivering: what was read is reported, and the replay fails.
                return Ok((true, got));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/calls/calls.jsonl");

    fn args(call: Option<&str>, format: ReplayFormat) -> ReplayArgs {
        ReplayArgs {
            files: vec![FIXTURE.into()],
            nats: None,
            stream: String::new(),
            rules: None,
            scope: None,
            task: None,
            call: call.map(str::to_string),
            format,
            keep_going: false,
            jobs: None,
            host: Some("h".into()),
        }
    }

    /// Replays the fixture with a rule that fires on every record it is fed, and returns the
    /// seqs the findings name (so: the records replayed, in order) and the filter's counts.
    fn replayed(
        call: Option<&str>,
        jobs: usize,
        format: ReplayFormat,
    ) -> (Vec<u64>, String, (u64, u64, u64)) {
        let mut set = RuleSet::empty();
        set.add(
            "- id: every\n  description: every record\n  severity: info\n  match: kind != \"\"\n",
            std::path::Path::new("every.yaml"),
        )
        .unwrap();
        let a = args(call, format);
        let mut r = Replayer {
            uses_event: false,
            engine: Engine::new(&set),
            scope: None,
            ctx: ocsf::Context::new(a.host.clone(), None),
            out: Vec::new(),
            args: &a,
            calls: a.call.as_deref().map(CallFilter::new),
            records: 0,
            findings: 0,
            skipped: 0,
        };
        let mut ahead: Vec<Evaluator<'_>> = (0..jobs).map(|_| Evaluator::new(&set)).collect();
        assert!(r.file(File::open(FIXTURE).unwrap(), "calls.jsonl", &mut ahead, None).unwrap());
        let out = String::from_utf8(r.out.clone()).unwrap();
        let seqs = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["rule"] == "every")
            .map(|v| v["seqs"][0].as_u64().unwrap())
            .collect();
        let counts = r.calls.as_ref().map_or((r.records, 0, 0), |c| (c.matched, c.context, c.descendants));
        (seqs, out, counts)
    }

    /// `--call` over a recorded log: the call, its sub-call, and the task's start and end; not
    /// the sibling call, the task's own records or the other task. Whatever the parallelism.
    #[test]
    fn replay_of_one_call_keeps_its_records_and_its_sub_calls() {
        let (all, _, (n, ..)) = replayed(None, 1, ReplayFormat::Json);
        assert_eq!(all, (1..=21).collect::<Vec<u64>>());
        assert_eq!(n, 21);
        for jobs in [1, 3] {
            let (seqs, _, counts) = replayed(Some("agent-7f3a/c1"), jobs, ReplayFormat::Json);
            assert_eq!(seqs, vec![1, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 21], "jobs {jobs}");
            assert_eq!(counts, (10, 2, 1), "matched, context, descendants");
        }
        let (seqs, _, counts) = replayed(Some("agent-7f3a/c1/c2"), 2, ReplayFormat::Json);
        assert_eq!(seqs, vec![1, 8, 9, 10, 11, 12, 21]);
        assert_eq!(counts, (5, 2, 0));
        let (seqs, _, counts) = replayed(Some("nope"), 2, ReplayFormat::Json);
        assert!(seqs.is_empty());
        assert_eq!(counts, (0, 0, 0));
    }

    /// OCSF output of one call: the held task_start is written (first), then the call's events.
    #[test]
    fn ocsf_replay_of_one_call_starts_with_its_task() {
        let (_, out, _) = replayed(Some("agent-7f3a/c3"), 2, ReplayFormat::Ocsf);
        let events: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v.get("class_uid").is_some_and(|c| c != 2004))
            .collect();
        let seqs: Vec<i64> = events.iter().map(|e| e["metadata"]["sequence"].as_i64().unwrap()).collect();
        assert_eq!(seqs, vec![1, 15, 16, 17, 18, 21]);
        assert_eq!(events[0]["device"]["hostname"], "h");
    }
}
