//! `cmstep --launcher`: the fork server a compute daemon keeps, so that a job's supervisor
//! costs neither the exec of a new program nor, most of the time, even a fork.
//!
//! Each supervisor is a process of its own, in a process group of its own, holding its step
//! file's lock while it supervises the run ([`crate::record::LockedStep`]). So jobs outlive this
//! launcher and the daemon alike, and a daemon finds them again by their step files.
//!
//! A supervisor whose run has ended is kept, idle, for the next step file
//! ([`crate::supervisor::serve`]): a fork, its exit and the page faults of a fresh copy were
//! most of what a short job cost beyond its own process (`cmbench` scenario 1). One that stays
//! idle for a while ([`IDLE_KEEP`]) is retired (its orders are closed and it exits), so a burst of jobs
//! leaves no crowd of processes behind. Only the launcher hands out step files, so a supervisor
//! is never retired while an order is on its way to it.
//!
//! The protocol is one line per message over the launcher's stdin and stdout, both pipes to the
//! daemon:
//! - in, `PATH`: supervise the step file at PATH;
//! - out, `started<TAB>PID<TAB>PATH`: supervisor PID holds the lock of PATH, so from then on the
//!   daemon can also find it by the file;
//! - out, `failed<TAB>PATH<TAB>REASON`: no supervisor runs PATH;
//! - out, `ended<TAB>PID<TAB>PATH`: supervisor PID has recorded the end of PATH's run and let the
//!   file go (it may take another run next);
//! - out, `exited<TAB>PID`: a supervisor has exited (the launcher is their parent and reaps them).
//!   For one that had a run, its end is whatever the step file holds.
//!
//! Supervisors tell the launcher over a pipe of its own, with the pid added to `failed`, and the
//! launcher passes their lines on. Only the launcher writes to the daemon, and no supervisor holds
//! the daemon's pipes, so the daemon sees the launcher exit when its stdout closes.
//!
//! Paths with a newline or a tab are refused by the daemon before they get here. Each line goes
//! out in one `write` shorter than `PIPE_BUF`, so lines written to one pipe never interleave.
//! The launcher exits when its stdin closes (the daemon is gone); idle supervisors exit with it,
//! and busy ones after their run.

use crate::supervisor::{self, Orders};
use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, pipe2, read, setpgid, ForkResult, Pid};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

/// The longest line the launcher writes: `PIPE_BUF` on Linux, below which a pipe write is atomic.
pub const MAX_LINE: usize = 4096;

/// How long an idle supervisor is kept for a next run before it is retired, unless the daemon
/// says otherwise.
pub const IDLE_KEEP: Duration = Duration::from_secs(10);

/// A supervisor with a run.
struct Busy {
    /// The write end of its orders.
    orders: OwnedFd,
    path: String,
    /// Whether its `started` line has been passed on.
    started: bool,
}

/// A supervisor waiting for a run.
struct Idle {
    pid: Pid,
    orders: OwnedFd,
    since: Instant,
}

/// The supervisors this launcher has forked and not yet seen exit.
#[derive(Default)]
struct Pool {
    busy: HashMap<Pid, Busy>,
    /// Oldest first. The newest is handed the next run, so the others age out when fewer runs
    /// come than there are idle supervisors.
    idle: VecDeque<Idle>,
}

impl Pool {
    /// The supervisor `pid` has no run any more.
    fn now_idle(&mut self, pid: Pid) {
        if let Some(busy) = self.busy.remove(&pid) {
            self.idle.push_back(Idle { pid, orders: busy.orders, since: Instant::now() });
        }
    }

    /// Hands `path` to an idle supervisor; false if none is left to take it.
    fn hand_out(&mut self, path: &str) -> bool {
        while let Some(idle) = self.idle.pop_back() {
            // Failing means it has exited (its exit is reaped and reported as any other).
            if say(&idle.orders, path).is_ok() {
                self.busy.insert(idle.pid, Busy { orders: idle.orders, path: path.into(), started: false });
                return true;
            }
        }
        false
    }

    /// Closes the orders of those idle for `keep`: they exit. Returns when the next is due.
    fn retire(&mut self, now: Instant, keep: Duration) -> Option<Instant> {
        while self.idle.front().is_some_and(|idle| idle.since + keep <= now) {
            self.idle.pop_front();
        }
        self.idle.front().map(|idle| idle.since + keep)
    }
}

/// Bytes read off a pipe, cut into lines: the daemon's requests and the supervisors' lines here,
/// a supervisor's orders in [`crate::supervisor::serve`].
#[derive(Default)]
pub(crate) struct Lines(Vec<u8>);

impl Lines {
    /// One `read` of `fd`: `Some(0)` at its end, `None` if a non-blocking `fd` has nothing now.
    pub(crate) fn read_from(&mut self, fd: BorrowedFd<'_>) -> anyhow::Result<Option<usize>> {
        let mut buffer = [0u8; 4096];
        loop {
            match read(fd.as_raw_fd(), &mut buffer) {
                Ok(n) => {
                    self.0.extend_from_slice(&buffer[..n]);
                    return Ok(Some(n));
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e).context("cannot read a pipe"),
            }
        }
    }

    pub(crate) fn next(&mut self) -> Option<String> {
        let end = self.0.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.0.drain(..=end).collect();
        Some(String::from_utf8_lossy(&line[..end]).into_owned())
    }
}

/// Serves launch requests on stdin until it closes, keeping idle supervisors for `keep_idle`.
pub fn serve(keep_idle: Duration) -> anyhow::Result<()> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().context("cannot block SIGCHLD")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create a signalfd")?;
    // What the supervisors say; they all write to one pipe, a line per write. Only the
    // launcher's end is non-blocking: a supervisor waits rather than lose a line to a full pipe.
    let (news, news_for_supervisors) = pipe2(OFlag::O_CLOEXEC).context("cannot create the supervisors' pipe")?;
    fcntl(news.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).context("cannot set up the supervisors' pipe")?;
    let stdin = std::io::stdin();
    let mut pool = Pool::default();
    let (mut requests, mut heard) = (Lines::default(), Lines::default());
    let mut next_retirement: Option<Instant> = None;
    loop {
        let timeout = match next_retirement {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis() + 1;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [
            PollFd::new(stdin.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(news.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("cannot wait for requests"),
        }
        let ready = |fd: &PollFd| !fd.revents().unwrap_or(PollFlags::empty()).is_empty();
        let (request_ready, news_ready) = (ready(&fds[0]), ready(&fds[2]));
        // The supervisors' lines before their exits, so the daemon reads `ended` before `exited`.
        if news_ready {
            hear(&news, &mut heard, &mut pool)?;
        }
        while signals.read_signal().context("cannot read a signal")?.is_some() {}
        reap(&mut pool, &news, &mut heard)?;
        if request_ready {
            // A blocking read, as stdin is the daemon's: poll said it has bytes or has ended.
            if requests.read_from(stdin.as_fd())? == Some(0) {
                break; // the daemon is gone
            }
            while let Some(path) = requests.next() {
                if !pool.hand_out(&path) {
                    launch(&path, &mut pool, &signals, &news, &news_for_supervisors)?;
                }
            }
        }
        next_retirement = pool.retire(Instant::now(), keep_idle);
    }
    // Idle supervisors exit as their orders close; collected here, so none is left a zombie of a
    // parent that is gone. Busy ones finish their runs under whoever adopts them.
    for idle in std::mem::take(&mut pool.idle) {
        drop(idle.orders);
        let _ = waitpid(idle.pid, None);
    }
    Ok(())
}

/// Writes one line to `fd` in one `write`; the line is cut to [`MAX_LINE`].
pub(crate) fn say(fd: impl AsFd, line: &str) -> anyhow::Result<()> {
    let mut bytes = line.replace('\n', " ").into_bytes();
    bytes.truncate(MAX_LINE - 1);
    bytes.push(b'\n');
    let written = nix::unistd::write(fd, &bytes).context("cannot write a line")?;
    anyhow::ensure!(written == bytes.len(), "a line was cut short");
    Ok(())
}

/// Passes on all that the supervisors have said.
fn hear(news: &OwnedFd, heard: &mut Lines, pool: &mut Pool) -> anyhow::Result<()> {
    while heard.read_from(news.as_fd())?.is_some_and(|n| n > 0) {}
    while let Some(line) = heard.next() {
        pass_on(&line, pool)?;
    }
    Ok(())
}

/// Passes a supervisor's line on to the daemon, noting which supervisors are idle again.
fn pass_on(line: &str, pool: &mut Pool) -> anyhow::Result<()> {
    let words: Vec<&str> = line.splitn(4, '\t').collect();
    let pid = words.get(1).and_then(|pid| pid.parse().ok()).map(Pid::from_raw);
    match (words.as_slice(), pid) {
        (["started", _, _], Some(pid)) => {
            if let Some(busy) = pool.busy.get_mut(&pid) {
                busy.started = true;
            }
            say(std::io::stdout(), line)
        }
        (["ended", _, _], Some(pid)) => {
            pool.now_idle(pid);
            say(std::io::stdout(), line)
        }
        (["failed", _, path, reason], Some(pid)) => {
            pool.now_idle(pid);
            say(std::io::stdout(), &format!("failed\t{path}\t{reason}"))
        }
        _ => {
            tracing::warn!(%line, "a supervisor said something unexpected");
            Ok(())
        }
    }
}

/// Reports every supervisor that has exited. One that exits with a step file it never said it
/// took (killed before it could read its order) fails that launch, so the daemon is not left
/// waiting for it. (What it wrote before it exited is read first: it may have said `started`.)
fn reap(pool: &mut Pool, news: &OwnedFd, heard: &mut Lines) -> anyhow::Result<()> {
    loop {
        let pid = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("cannot collect a supervisor's exit"),
        };
        pool.idle.retain(|idle| idle.pid != pid);
        if pool.busy.get(&pid).is_some_and(|busy| !busy.started) {
            hear(news, heard, pool)?;
        }
        if let Some(busy) = pool.busy.remove(&pid).filter(|busy| !busy.started) {
            say(std::io::stdout(), &format!("failed\t{}\tits supervisor exited before taking it", busy.path))?;
        }
        say(std::io::stdout(), &format!("exited\t{pid}"))?;
    }
}

/// Forks a new supervisor for `path`.
fn launch(
    path: &str,
    pool: &mut Pool,
    signals: &SignalFd,
    news: &OwnedFd,
    news_for_supervisors: &OwnedFd,
) -> anyhow::Result<()> {
    let (from_launcher, orders) = pipe2(OFlag::O_CLOEXEC).context("cannot create a supervisor's pipe")?;
    #[allow(unsafe_code)]
    // SAFETY: the launcher never starts a thread, so the child is a complete copy of a
    // single-threaded process and may run any code, allocation included.
    let forked = unsafe { fork() };
    match forked {
        Ok(ForkResult::Parent { child }) => {
            pool.busy.insert(child, Busy { orders, path: path.into(), started: false });
            Ok(())
        }
        Ok(ForkResult::Child) => {
            // Nothing of the launcher's stays: its signalfd and mask, its ends of every pipe (a
            // supervisor holding another's orders would keep that one from ever seeing them
            // close; one holding the daemon's pipes would keep the daemon from seeing the
            // launcher exit), its process group.
            drop(orders);
            drop(std::mem::take(pool));
            let _ = nix::unistd::close(signals.as_raw_fd());
            let _ = nix::unistd::close(news.as_raw_fd());
            let code = match supervise(path, from_launcher, news_for_supervisors) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(step = %path, "{e:#}");
                    1
                }
            };
            std::process::exit(code)
        }
        Err(e) => say(std::io::stdout(), &format!("failed\t{path}\tcannot fork a supervisor: {e}")),
    }
}

/// The new supervisor's life, in the forked child.
fn supervise(path: &str, from_launcher: OwnedFd, news_for_supervisors: &OwnedFd) -> anyhow::Result<()> {
    SigSet::empty().thread_set_mask().context("cannot reset the signal mask")?;
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).context("cannot start a process group")?;
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").context("cannot open /dev/null")?;
    dup2(null.as_raw_fd(), 0).context("cannot redirect stdin")?;
    dup2(null.as_raw_fd(), 1).context("cannot redirect stdout")?;
    let to_launcher = news_for_supervisors.try_clone().context("cannot keep the launcher's pipe")?;
    supervisor::serve(path, &Orders { from_launcher, to_launcher })
}
