//! Host tier: a recorded session becomes an HTML report that renders in headless Chromium.
//! The DOM holds the process tree and the timeline with the session's pids and paths (and the
//! page's script ran under its Content-Security-Policy); the screenshot shows the denial
//! highlight and the tree's container.
//!
//! Chromium is Debian's `chromium` package; `cargo xtask test` installs it. Without it the test
//! prints `SKIP` (or fails, when `WARDEN_REQUIRE` lists `chromium`).
use std::{
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agent_user::report::html::{DENY_COLOUR, TREE_COLOUR};
use warden_tests::{require, run_warden, warden_bin};

/// Headless Chromium, if installed; otherwise prints why the test is skipped.
fn chromium(test: &str) -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let reason = "chromium is not installed (`cargo xtask test` installs Debian's package)";
        let required = std::env::var("WARDEN_REQUIRE").unwrap_or_default();
        if required.split(',').any(|f| f == "chromium") {
            panic!("{test}: required feature missing: {reason}");
        }
        println!("SKIP {test}: {reason}");
    }
    found
}

/// Runs headless Chromium on `page` with `args`, in a fresh profile; returns stdout.
fn headless(bin: &Path, profile: &Path, args: &[&str], page: &Path) -> String {
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Colours as written in the page, so pixels can be compared exactly.
            "--force-color-profile=srgb",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chromium") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().expect("reader thread");
    assert!(status.success(), "chromium failed: {status}");
    out
}

fn rgb(hex: &str) -> [u8; 3] {
    let h = hex.trim_start_matches('#');
    let b = |i: usize| u8::from_str_radix(&h[i..i + 2], 16).expect("hex colour");
    [b(0), b(2), b(4)]
}

/// Decodes a PNG to (width, height, RGB pixels).
fn pixels(png_path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let f = std::fs::File::open(png_path).expect("screenshot written");
    let mut decoder = png::Decoder::new(BufReader::new(f));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let mut px = Vec::with_capacity((info.width * info.height) as usize);
    for row in buf[..info.line_size * info.height as usize].chunks(info.line_size) {
        for p in row[..info.width as usize * channels].chunks(channels) {
            px.push([p[0], p[1], p[2]]);
        }
    }
    (info.width, info.height, px)
}

/// The part of `dom` from the element with `id` to the end of its section.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the DOM"));
    let rest = &dom[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

#[test]
fn a_recorded_session_renders_as_a_report_in_headless_chromium() {
    let test = "a_recorded_session_renders_as_a_report_in_headless_chromium";
    if !require(test, "tp_btf") {
        return;
    }
    let Some(chromium) = chromium(test) else { return };
    let scope = "version: 1\ntask: report\nexec:\n  allow: [/bin/sh, /usr/bin/true]\n";
    // Forks (a subshell and its children), a few tools, and one exec the scope refuses.
    let script = "/usr/bin/true; (/usr/bin/true; /usr/bin/true); /usr/bin/true; /usr/bin/id; exit 0";
    let out = run_warden(scope, script, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let denied: Vec<&serde_json::Value> =
        out.records.iter().filter(|r| r["kind"] == "exec" && r["decision"] == "deny").collect();
    assert_eq!(denied.len(), 1, "one refused exec: {:?}", out.records);
    let denied_pid = denied[0]["pid"].as_u64().unwrap();
    let task_pid = out.records[0]["pid"].as_u64().unwrap();
    let children: Vec<u64> =
        out.records.iter().filter(|r| r["kind"] == "fork").filter_map(|r| r["child_pid"].as_u64()).collect();
    assert!(children.len() >= 2, "the script forks: {:?}", out.records);

    let t = tempfile::tempdir().unwrap();
    // The parsed records, written back (keys reordered, so the hash chain no longer holds).
    let log = t.path().join("session.jsonl");
    std::fs::write(&log, &out.log).unwrap();
    let scope_path = t.path().join("scope.yaml");
    std::fs::write(&scope_path, scope).unwrap();
    let page = t.path().join("report.html");
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/starter");
    let rep = Command::new(warden_bin())
        .arg("report")
        .arg(&log)
        .arg("--html")
        .arg(&page)
        .arg("--scope")
        .arg(&scope_path)
        .arg("--rules")
        .arg(&rules)
        .output()
        .unwrap();
    assert_eq!(rep.status.code(), Some(0), "{}", String::from_utf8_lossy(&rep.stderr));

    // The DOM, after the page's script ran.
    let dom = headless(&chromium, &t.path().join("profile-dom"), &["--dump-dom"], &page);
    assert!(dom.contains("data-ready=\"1\""), "the page's script ran under its CSP:\n{dom}");
    let tree = section(&dom, "tree");
    for pid in std::iter::once(task_pid).chain(children.iter().copied()) {
        assert!(tree.contains(&format!("data-pid=\"{pid}\"")), "process {pid} in the tree:\n{tree}");
    }
    assert!(tree.contains("/usr/bin/true"), "{tree}");
    // "killed" on the fallback engine, "refused" on BPF LSM.
    assert!(tree.contains("exec /usr/bin/id — "), "the refused exec in the tree:\n{tree}");
    assert!(tree.contains("(exec.allow)"), "{tree}");
    let timeline = section(&dom, "timeline");
    let deny_row = timeline
        .split("<tr")
        .find(|row| row.contains("class=\"deny\""))
        .unwrap_or_else(|| panic!("no deny row in the timeline:\n{timeline}"));
    assert!(deny_row.contains("/usr/bin/id") && deny_row.contains(&format!("data-proc=\"0:{denied_pid}\"")));
    assert_eq!(timeline.matches("<tr id=\"r-").count(), out.records.len(), "one timeline row per record");
    let scope_use = section(&dom, "scope");
    assert!(scope_use.contains("/usr/bin/true") && scope_use.contains("used ("), "{scope_use}");
    assert!(section(&dom, "findings").contains("Findings ("), "rules ran");
    // The recorded lines, byte for byte: the report checked the chain.
    let integrity = section(&dom, "integrity");
    assert!(integrity.contains("Log intact") && !integrity.contains("NOT intact"), "{integrity}");

    // The screenshot: the denial highlight and the tree's background are drawn.
    let shot = t.path().join("report.png");
    headless(
        &chromium,
        &t.path().join("profile-shot"),
        &[&format!("--screenshot={}", shot.display()), "--window-size=1280,2000"],
        &page,
    );
    let (w, h, px) = pixels(&shot);
    assert_eq!((w, h), (1280, 2000));
    let count = |c: [u8; 3]| px.iter().filter(|p| **p == c).count();
    let (deny, tree_bg) = (count(rgb(DENY_COLOUR)), count(rgb(TREE_COLOUR)));
    // A highlighted table row is ~1200 x 20 pixels; the tree container is larger still.
    assert!(deny > 10_000, "deny highlight {DENY_COLOUR}: {deny} pixels");
    assert!(tree_bg > 20_000, "tree background {TREE_COLOUR}: {tree_bg} pixels");
    // The highlight spans a row, not a stray pixel: some screen line is mostly that red.
    let widest =
        px.chunks(w as usize).map(|line| line.iter().filter(|p| **p == rgb(DENY_COLOUR)).count()).max();
    assert!(widest.unwrap_or(0) > w as usize / 2, "a deny row spans the table: {widest:?}");
}
