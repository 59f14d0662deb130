//! A terminal of the task's own, relayed to the user's.
//!
//! A task never gets the user's terminal. When `warden run` (or `warden task exec`) is used
//! interactively — stdin and stdout are terminals, or `--tty` — Warden opens a pty pair: the
//! task's first process gets the pty's slave as stdin and stdout (and stderr, unless that is
//! not a terminal: then it gets Warden's stderr as it is) and makes it the controlling terminal
//! of its own session (`TIOCSCTTY` after `setsid`, see `launch.rs`). Warden puts the user's
//! terminal in raw mode and relays bytes both ways on a thread of its own; window size changes
//! (`SIGWINCH`) are copied to the pty; the user's terminal settings are restored on every way
//! out ([`Relay`]'s drop: normal end, errors, the signals that end a task, panics).
//!
//! What the task does to its terminal stays in the pty: `TIOCSTI` pushes input into the pty
//! (the task reads it back, nobody else), `vhangup` needs a capability the task does not hold,
//! and a typed `^C`, `^Z` or `^\` becomes a signal of the pty's line discipline to the task's
//! foreground process group — the user's terminal is raw, so Warden itself gets none of them.
use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicI32, Ordering},
    thread::JoinHandle,
};

/// Whether a task gets a terminal of its own (`--tty` / `--no-tty`).
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct TtyArgs {
    /// Give the task a terminal of its own (a pty Warden relays to this one) even when stdin
    /// or stdout is not a terminal. By default it gets one when both are.
    #[arg(long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never give the task a terminal: it gets Warden's stdin, stdout and stderr as they are
    /// (it runs in a session of its own, so a terminal among them is never its controlling
    /// terminal).
    #[arg(long)]
    pub no_tty: bool,
}

impl TtyArgs {
    /// Whether to open a pty: `--tty`, or stdin and stdout are terminals and not `--no-tty`.
    pub fn wanted(&self) -> bool {
        // SAFETY: isatty(3) on the standard descriptors.
        let interactive = unsafe { libc::isatty(0) == 1 && libc::isatty(1) == 1 };
        self.tty || (!self.no_tty && interactive)
    }

    /// A pty for the task, if one is wanted. When only the terminals asked for one (no
    /// `--tty`) and this host cannot open a pty (no devpts), the task runs as with `--no-tty`
    /// — in a session of its own, never holding the terminal — and a warning says so; with
    /// `--tty` that is an error that says how to fix it.
    pub fn open(&self) -> io::Result<Option<Pty>> {
        if !self.wanted() {
            return Ok(None);
        }
        match Pty::open() {
            Ok(p) => Ok(Some(p)),
            Err(e) if !self.tty => {
                tracing::warn!(
                    error = %e,
                    "cannot open a pty for the task; it runs without a terminal of its own (as with --no-tty)"
                );
                Ok(None)
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("{e} (is devpts mounted at /dev/pts? --no-tty runs the task without a terminal)"),
            )),
        }
    }
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(last_err()) } else { Ok(r) }
}

fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty(3) on a descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// A pty pair for one task: the master stays with Warden, the slave goes to the task.
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
    /// Warden's own stderr when it is not a terminal (a file, a pipe): the task's stderr goes
    /// there as without a pty instead of being mixed into the terminal's output.
    stderr: Option<OwnedFd>,
}

impl Pty {
    /// Opens a pty pair with the user's terminal settings and window size (those of stdin,
    /// when it is a terminal).
    pub fn open() -> io::Result<Self> {
        // SAFETY: posix_openpt(3) returns a new descriptor or -1.
        let m = cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
        // SAFETY: `m` was just opened and is owned here.
        let master = unsafe { OwnedFd::from_raw_fd(m) };
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER (Linux 4.13) opens the slave through the
        // master, without a path lookup that a rename in /dev/pts could redirect.
        let slave = unsafe {
            cvt(libc::ioctl(m, libc::TIOCSPTLCK, &unlock))?;
            let s = cvt(libc::ioctl(m, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC))?;
            OwnedFd::from_raw_fd(s)
        };
        if is_tty(0) {
            // SAFETY: termios is plain data filled by tcgetattr.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            // SAFETY: tcgetattr/tcsetattr with a valid termios pointer.
            unsafe {
                if libc::tcgetattr(0, &mut t) == 0 {
                    libc::tcsetattr(slave.as_raw_fd(), libc::TCSANOW, &t);
                }
            }
            copy_winsize(0, master.as_raw_fd());
        }
        let stderr = if is_tty(2) {
            None
        } else {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) duplicates our own stderr.
            let e = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
            // SAFETY: a new descriptor owned here.
            (e >= 0).then(|| unsafe { OwnedFd::from_raw_fd(e) })
        };
        Ok(Self { master, slave, stderr })
    }

    /// The slave: the task's terminal.
    pub fn slave(&self) -> BorrowedFd<'_> {
        self.slave.as_fd()
    }

    /// What the task's stdin, stdout and stderr are.
    pub fn stdio(&self) -> io::Result<[std::process::Stdio; 3]> {
        let err = match &self.stderr {
            Some(e) => e.try_clone()?,
            None => self.slave.try_clone()?,
        };
        Ok([self.slave.try_clone()?.into(), self.slave.try_clone()?.into(), err.into()])
    }

    /// Once the task's first process holds the slave: Warden drops its own copy (so the
    /// master sees the end when the task's last process closes it), puts the user's terminal
    /// in raw mode and starts relaying.
    pub fn relay(self) -> io::Result<Relay> {
        let Pty { master, slave, stderr } = self;
        drop(slave);
        drop(stderr);
        let (wake_rx, wake_tx) = pipe()?;
        let raw = if is_tty(0) { Some(RawMode::enter(0)?) } else { None };
        let winch = if is_tty(0) { Some(Winch::install()?) } else { None };
        let winch_fd = winch.as_ref().map(|w| w.rx.as_raw_fd()).unwrap_or(-1);
        // The thread borrows the handler's pipe by number: `Relay` joins it before the
        // handler (and its pipe) goes.
        let thread = std::thread::Builder::new()
            .name("tty-relay".into())
            .spawn(move || relay_loop(master, wake_rx, winch_fd))?;
        Ok(Relay { thread: Some(thread), wake: wake_tx, winch, raw })
    }
}

/// The relay at work; [`Relay::finish`] (or drop) ends it and restores the user's terminal.
pub struct Relay {
    thread: Option<JoinHandle<()>>,
    wake: OwnedFd,
    winch: Option<Winch>,
    raw: Option<RawMode>,
}

impl Relay {
    /// After the task ended: passes on what the task wrote last, stops relaying and restores
    /// the user's terminal.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            // SAFETY: write(2) of one byte from a local to our own pipe.
            unsafe { libc::write(self.wake.as_raw_fd(), b"x".as_ptr().cast(), 1) };
            let _ = t.join();
        }
        self.winch.take();
        self.raw.take();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: both were just created and are owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Copies the window size of terminal `from` to the pty master `to` (the kernel then sends
/// SIGWINCH to the pty's foreground process group if it changed).
fn copy_winsize(from: RawFd, to: RawFd) {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it, TIOCSWINSZ reads it.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(from, libc::TIOCGWINSZ, &mut ws) == 0 {
            let mut cur: libc::winsize = std::mem::zeroed();
            let same = libc::ioctl(to, libc::TIOCGWINSZ, &mut cur) == 0
                && (cur.ws_row, cur.ws_col, cur.ws_xpixel, cur.ws_ypixel)
                    == (ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel);
            if !same {
                libc::ioctl(to, libc::TIOCSWINSZ, &ws);
            }
        }
    }
}

/// The user's terminal in raw mode; its settings come back on drop.
struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    fn enter(fd: RawFd) -> io::Result<Self> {
        // SAFETY: termios is plain data filled by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr with a valid pointer.
        cvt(unsafe { libc::tcgetattr(fd, &mut saved) })?;
        let mut raw = saved;
        // SAFETY: cfmakeraw edits the local copy.
        unsafe { libc::cfmakeraw(&mut raw) };
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        without_sigttou(|| {
            // SAFETY: tcsetattr with a valid pointer.
            cvt(unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, &raw) }).map(drop)
        })?;
        Ok(Self { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: tcsetattr with the settings saved at entry.
        let _ = without_sigttou(|| cvt(unsafe { libc::tcsetattr(self.fd, libc::TCSADRAIN, &self.saved) }));
    }
}

/// Runs `f` with SIGTTOU blocked in this thread: setting the terminal from a background
/// process group (the user put Warden in the background) must not stop Warden.
fn without_sigttou<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data; pthread_sigmask on this thread with valid pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// The write end of the SIGWINCH pipe, for the handler (`-1`: none installed).
static WINCH_TX: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    // SAFETY: async-signal-safe: errno saved and restored, one write(2) to a non-blocking pipe.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = WINCH_TX.load(Ordering::Relaxed);
        if fd >= 0 {
            libc::write(fd, b"w".as_ptr().cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

/// A SIGWINCH handler that wakes the relay; the previous disposition comes back on drop.
struct Winch {
    rx: OwnedFd,
    /// Kept open while the handler may write to it.
    _tx: OwnedFd,
    old: libc::sigaction,
}

impl Winch {
    fn install() -> io::Result<Self> {
        let (rx, tx) = pipe()?;
        WINCH_TX.store(tx.as_raw_fd(), Ordering::Relaxed);
        // SAFETY: sigaction is plain data; the handler is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_winch as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGWINCH, &sa, &mut old) != 0 {
                WINCH_TX.store(-1, Ordering::Relaxed);
                return Err(last_err());
            }
            Ok(Self { rx, _tx: tx, old })
        }
    }
}

impl Drop for Winch {
    fn drop(&mut self) {
        // SAFETY: restores the disposition saved at install.
        unsafe { libc::sigaction(libc::SIGWINCH, &self.old, std::ptr::null_mut()) };
        WINCH_TX.store(-1, Ordering::Relaxed);
    }
}

/// Reading the master.
enum Got {
    Data(usize),
    /// Nothing now (EAGAIN).
    Empty,
    /// Every copy of the slave is closed (EIO), and everything written before was read.
    Closed,
}

fn read_master(master: RawFd, buf: &mut [u8]) -> Got {
    loop {
        // SAFETY: read(2) into a buffer we own.
        let n = unsafe { libc::read(master, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return Got::Data(n as usize);
        }
        if n == 0 {
            return Got::Closed;
        }
        match last_err().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Got::Empty,
            _ => return Got::Closed,
        }
    }
}

/// Writes all of `data` to `fd` (blocking), retrying on EINTR. False if `fd` is gone.
fn write_all(fd: RawFd, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: write(2) from a slice we hold.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            if last_err().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

/// What ends the task's input when Warden's stdin ends: the pty's EOF character (twice when
/// a line is pending: the first only ends the line), if the pty is in canonical mode.
fn eof_bytes(master: RawFd, last: u8) -> Vec<u8> {
    // SAFETY: termios is plain data; on a pty master TCGETS reads the slave's settings.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr with a valid pointer.
    if unsafe { libc::tcgetattr(master, &mut t) } != 0 || t.c_lflag & libc::ICANON == 0 {
        return vec![];
    }
    let eof = t.c_cc[libc::VEOF];
    if last == b'\n' || last == eof { vec![eof] } else { vec![eof, eof] }
}

/// Output drained after the task ended: at most this much, so a leftover that keeps writing
/// cannot hold Warden's end.
const DRAIN_LIMIT: usize = 1 << 20;

/// The relay: stdin → master (buffered, so a task that does not read never blocks the other
/// direction), master → stdout, SIGWINCH → window size, until the task's last process closed
/// its terminal or Warden says stop (`wake`). Warden's stdin is read only when poll(2) says
/// it has input, and never after the relay ends: what the user types after the task belongs
/// to the user's shell.
fn relay_loop(master: OwnedFd, wake: OwnedFd, winch: RawFd) {
    let m = master.as_raw_fd();
    // SAFETY: fcntl on the master, which only this thread uses.
    unsafe {
        let fl = libc::fcntl(m, libc::F_GETFL);
        libc::fcntl(m, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let stdin_tty = is_tty(0);
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_open = true;
    let mut last_in = b'\n';
    loop {
        let want_out = if pending.is_empty() { 0 } else { libc::POLLOUT };
        let mut fds = [
            libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: m, events: libc::POLLIN | want_out, revents: 0 },
            libc::pollfd {
                fd: if stdin_open && pending.is_empty() { 0 } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd { fd: winch, events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: poll(2) on a local array.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if last_err().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        let ready = |i: usize| fds[i].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        if ready(3) {
            let mut sink = [0u8; 64];
            // SAFETY: read(2) from our non-blocking pipe into a local buffer.
            while unsafe { libc::read(winch, sink.as_mut_ptr().cast(), sink.len()) } > 0 {}
            copy_winsize(0, m);
        }
        if ready(1) {
            match read_master(m, &mut buf) {
                Got::Data(n) => {
                    if !write_all(1, &buf[..n]) {
                        return;
                    }
                }
                Got::Empty => {}
                Got::Closed => return,
            }
        }
        if fds[1].revents & libc::POLLOUT != 0 && !pending.is_empty() {
            // SAFETY: write(2) from our buffer to the non-blocking master.
            let n = unsafe { libc::write(m, pending.as_ptr().cast(), pending.len()) };
            if n > 0 {
                pending.drain(..n as usize);
            }
        }
        if stdin_open && fds[2].fd >= 0 && ready(2) {
            // SAFETY: read(2) into our buffer; poll said stdin has input (or ended).
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let n = n as usize;
                // A resize that came with the input (the signal may still be on its way).
                if stdin_tty {
                    copy_winsize(0, m);
                }
                pending.extend_from_slice(&buf[..n]);
                last_in = buf[n - 1];
            } else if n == 0 || !matches!(last_err().raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                stdin_open = false;
                pending.extend(eof_bytes(m, last_in));
            }
        }
        if ready(0) {
            // The task ended: what it wrote last, then stop.
            let mut drained = 0;
            while drained < DRAIN_LIMIT {
                match read_master(m, &mut buf) {
                    Got::Data(n) => {
                        drained += n;
                        if !write_all(1, &buf[..n]) {
                            return;
                        }
                    }
                    Got::Empty | Got::Closed => return,
                }
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_reads_what_the_task_wrote_before_it_sees_the_end() {
        let pty = Pty::open().unwrap();
        assert!(write_all(pty.slave.as_raw_fd(), b"last words\n"));
        let Pty { master, slave, .. } = pty;
        drop(slave);
        let m = master.as_raw_fd();
        // SAFETY: fcntl on our own fd.
        unsafe { libc::fcntl(m, libc::F_SETFL, libc::O_NONBLOCK) };
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        loop {
            match read_master(m, &mut buf) {
                Got::Data(n) => got.extend_from_slice(&buf[..n]),
                Got::Empty => std::thread::sleep(std::time::Duration::from_millis(5)),
                Got::Closed => break,
            }
        }
        assert_eq!(got, b"last words\r\n", "output passes (with the terminal's CRLF) before the end");
    }

    #[test]
    fn eof_ends_a_pending_line_first() {
        let pty = Pty::open().unwrap();
        let m = pty.master.as_raw_fd();
        // A fresh pty is canonical, ^D its EOF character.
        assert_eq!(eof_bytes(m, b'\n'), [4]);
        assert_eq!(eof_bytes(m, b'x'), [4, 4]);
    }
}
