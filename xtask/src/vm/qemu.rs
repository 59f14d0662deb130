//! One guest boot under QEMU (TCG), its serial console read live and saved, with a hard
//! time limit: a guest that hangs is killed.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::protocol::{Console, Seen};

/// The kernel command line. `lsm=` puts `bpf` in the active LSM list (Debian's default
/// already ends in `bpf`; stated so the tier does not depend on it). `panic=-1` with
/// `-no-reboot` turns a guest panic (and, with `oops=panic`, an oops) into a QEMU exit
/// instead of a hang. The boot log stays on (it costs well under a second) for `console.log`.
pub const CMDLINE: &str =
    "console=ttyS0 panic=-1 oops=panic lsm=lockdown,capability,landlock,yama,bpf rdinit=/init";

/// After the guest reports `done`, how long it may take to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);

pub struct Boot<'a> {
    pub qemu: &'a Path,
    pub vmlinuz: &'a Path,
    pub initramfs: &'a Path,
    /// Gets `console.log` and `qemu.stderr`.
    pub out_dir: &'a Path,
    pub timeout: Duration,
    pub memory: &'a str,
    pub cpus: u32,
    /// Added to [`CMDLINE`] (e.g. `warden.tests=...`, which `/init` reads).
    pub append: &'a str,
}

pub struct Run {
    pub console: Console,
    /// From QEMU's start to `/init` running.
    pub boot: Option<Duration>,
    /// From QEMU's start to its exit (or kill).
    pub total: Duration,
    pub timed_out: bool,
    pub status: Option<ExitStatus>,
    /// The last console lines, for reports on runs that went wrong.
    pub tail: Vec<String>,
    pub console_log: PathBuf,
}

impl Boot<'_> {
    fn command(&self) -> Command {
        let mut c = Command::new(self.qemu);
        c.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
            // /dev/kvm on these machines is nested PVM and cannot run the guest: TCG only.
            .args(["-accel", "tcg", "-cpu", "max"])
            .args(["-smp", &self.cpus.to_string(), "-m", self.memory])
            .arg("-kernel")
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initramfs)
            .arg("-append")
            .arg(format!("{CMDLINE} {}", self.append).trim_end())
            .args(["-serial", "stdio"]);
        c
    }

    /// Boots, streams the console (live lines go to `show`), and returns what happened.
    pub fn run(&self, mut show: impl FnMut(&str)) -> anyhow::Result<Run> {
        fs::create_dir_all(self.out_dir)?;
        let console_log = self.out_dir.join("console.log");
        let mut log =
            fs::File::create(&console_log).with_context(|| format!("creating {}", console_log.display()))?;
        let stderr = fs::File::create(self.out_dir.join("qemu.stderr"))?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr);
        // SAFETY: prctl only; async-signal-safe. QEMU dies with us, so an interrupted run
        // leaves no guest behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let start = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("starting {}", self.qemu.display()))?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut buf = Vec::new();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx.send(buf).is_err() {
                            break;
                        }
                    }
                }
            }
        });

        let mut console = Console::default();
        let mut boot = None;
        let mut tail: Vec<String> = Vec::new();
        let mut deadline = start + self.timeout;
        let mut timed_out = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(bytes) => {
                    log.write_all(&bytes)?;
                    let line = String::from_utf8_lossy(&bytes);
                    let line = line.trim_end_matches(['\r', '\n']);
                    tail.push(line.to_string());
                    if tail.len() > 60 {
                        tail.remove(0);
                    }
                    match console.feed_at(line, start.elapsed()) {
                        Seen::Init => {
                            boot = Some(start.elapsed());
                            show(line);
                        }
                        Seen::Done => {
                            show(line);
                            deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                        }
                        Seen::Show => show(line),
                        Seen::Quiet => {}
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // A guest that reported `done` but did not power off still gave its results.
                    timed_out = console.done.is_none();
                    kill(&mut child);
                    break;
                }
            }
        }
        log.flush()?;
        let status = wait(&mut child, Duration::from_secs(10));
        let _ = reader.join();
        Ok(Run { console, boot, total: start.elapsed(), timed_out, status, tail, console_log })
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
}

/// Waits for QEMU to exit, killing it if it does not within `grace`.
fn wait(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let until = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                kill(child);
                return child.wait().ok();
            }
            Err(_) => return None,
        }
    }
}
