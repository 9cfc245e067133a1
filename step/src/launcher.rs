//! `cmstep --launcher`: the fork server a compute daemon keeps, so that a job's supervisor
//! costs a fork of this small, single-threaded process rather than the exec of a new program.
//! Here that is about 0.2 ms of CPU per job instead of 0.9 ms (`cmbench` scenario 2).
//!
//! Each supervisor is still a process of its own, in a process group of its own, holding its
//! step file's lock ([`crate::record::LockedStep`]). So jobs outlive this launcher and the daemon
//! alike, and a daemon finds them again by their step files. The launcher only saves the exec.
//!
//! The protocol is one line per message over the launcher's stdin and stdout, both pipes to the
//! daemon:
//! - in, `PATH`: start a supervisor for the step file at PATH;
//! - out, `started<TAB>PID<TAB>PATH`: written by the new supervisor once it holds the lock, so
//!   from then on the daemon can also find it by the file;
//! - out, `failed<TAB>PATH<TAB>REASON`: no supervisor runs for PATH;
//! - out, `exited<TAB>PID`: a supervisor has exited (the launcher is their parent and reaps them).
//!
//! Paths with a newline or a tab are refused by the daemon before they get here.
//!
//! Each line goes out in one `write` shorter than `PIPE_BUF`, so lines written by the launcher
//! and by its children never interleave. The launcher exits when its stdin closes (the daemon
//! is gone); the supervisors keep running.

use crate::supervisor::Supervisor;
use anyhow::Context;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, getpid, read, setpgid, ForkResult, Pid};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

/// The longest line the launcher writes: `PIPE_BUF` on Linux, below which a pipe write is atomic.
pub const MAX_LINE: usize = 4096;

/// Serves launch requests on stdin until it closes.
pub fn serve() -> anyhow::Result<()> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().context("cannot block SIGCHLD")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("cannot create a signalfd")?;
    let stdin = std::io::stdin();
    let mut pending = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN), PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("cannot wait for requests"),
        }
        while signals.read_signal().context("cannot read a signal")?.is_some() {}
        reap()?;
        let input = fds[0].revents().unwrap_or(PollFlags::empty());
        if input.is_empty() {
            continue;
        }
        let n = match read(stdin.as_raw_fd(), &mut buffer) {
            Ok(0) => return Ok(()), // the daemon is gone
            Ok(n) => n,
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => return Err(e).context("cannot read requests"),
        };
        pending.extend_from_slice(&buffer[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let path = String::from_utf8_lossy(&line[..end]).into_owned();
            launch(&path, &signals)?;
        }
    }
}

/// Writes one line to the daemon in one `write`; the line is cut to [`MAX_LINE`].
fn say(line: &str) -> anyhow::Result<()> {
    let mut bytes = line.replace('\n', " ").into_bytes();
    bytes.truncate(MAX_LINE - 1);
    bytes.push(b'\n');
    let written = nix::unistd::write(std::io::stdout(), &bytes).context("cannot write to the daemon")?;
    anyhow::ensure!(written == bytes.len(), "a line to the daemon was cut short");
    Ok(())
}

/// Reports every supervisor that has exited.
fn reap() -> anyhow::Result<()> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => say(&format!("exited\t{pid}"))?,
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("cannot collect a supervisor's exit"),
        }
    }
}

fn launch(path: &str, signals: &SignalFd) -> anyhow::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: the launcher never starts a thread, so the child is a complete copy of a
    // single-threaded process and may run any code, allocation included.
    let forked = unsafe { fork() };
    match forked {
        Ok(ForkResult::Parent { .. }) => Ok(()),
        Ok(ForkResult::Child) => {
            let code = match supervise(path, signals) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(step = %path, "{e:#}");
                    1
                }
            };
            std::process::exit(code)
        }
        Err(e) => say(&format!("failed\t{path}\tcannot fork a supervisor: {e}")),
    }
}

/// The new supervisor's life, in the forked child.
fn supervise(path: &str, signals: &SignalFd) -> anyhow::Result<()> {
    // Nothing of the launcher's stays: its signalfd and mask, its process group, its pipes (a
    // supervisor holding them would keep the daemon from seeing the launcher exit).
    let _ = nix::unistd::close(signals.as_raw_fd());
    SigSet::empty().thread_set_mask().context("cannot reset the signal mask")?;
    setpgid(Pid::from_raw(0), Pid::from_raw(0)).context("cannot start a process group")?;
    let supervisor = Supervisor::lock(Path::new(path));
    match &supervisor {
        Ok(_) => say(&format!("started\t{}\t{path}", getpid()))?,
        Err(e) => say(&format!("failed\t{path}\t{e:#}"))?,
    }
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").context("cannot open /dev/null")?;
    dup2(null.as_raw_fd(), 0).context("cannot redirect stdin")?;
    dup2(null.as_raw_fd(), 1).context("cannot redirect stdout")?;
    supervisor?.run()
}
