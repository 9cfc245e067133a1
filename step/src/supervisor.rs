//! The supervisor's loop: a process apart from the compute daemon, like SLURM's slurmstepd, so
//! jobs outlive a restart of the daemon.
//!
//! For each job run it supervises, it locks the step file ([`LockedStep`]), reads its
//! [`StepSpec`](crate::record::StepSpec) from it, starts the node's replicas, and then waits, on
//! one thread, for whichever comes first: a replica's exit (SIGCHLD), a stop order (SIGTERM or
//! SIGINT; see [`ask_to_stop`]), the time limit or grace period running out, or a rank's PMI
//! request (an MPI program's, served by [`crate::pmi`] from the same loop). The signals are
//! blocked and read from a signalfd, so none is lost between two waits and no handler runs. When
//! the last replica has exited it appends the end to the step file and lets the file go.
//!
//! `cmstep STEP_FILE` supervises that one run and exits ([`run`]). A supervisor forked by the
//! launcher then waits for its next run instead ([`serve`]): the launcher hands it step files one
//! at a time, so a job costs no process of its own beyond its replicas. It exits when the
//! launcher closes its orders (the launcher retires idle supervisors, and exits with the daemon).

use crate::cgroup::{cgroup_name, JobCgroup};
use crate::launcher::{say, Lines};
use crate::pmi::{Pmi, PmiSetup};
use crate::record::{LockedStep, StepSpec};
use crate::replicas::Replicas;
use anyhow::Context;
use cm_common::job::{ExitStatus, Mpi, NodeEnd, NodeEndCause};
use cm_common::{JobId, Timestamp};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{siginfo, SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{getpid, Pid};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

/// A supervisor that holds its step file and has not started the job yet.
pub struct Supervisor {
    step: LockedStep,
    spec: StepSpec,
}

/// Runs the supervisor of the step file at `path` until the job's replicas have all exited.
pub fn run(path: &Path) -> anyhow::Result<()> {
    become_subreaper()?;
    let supervisor = Supervisor::lock(path)?;
    let hierarchy = supervisor.spec.cgroup.clone();
    let result = supervisor.run(&block_signals()?);
    if let Some(hierarchy) = &hierarchy {
        JobCgroup::leave(hierarchy);
    }
    result
}

/// Asks the supervisor `pid` to stop `job`: SIGTERM to its replicas, SIGKILL after the grace
/// period. The order carries the job (`sigqueue`), so a supervisor that has ended that job and
/// taken another ignores it rather than stopping the wrong one. A plain SIGTERM (an operator's
/// `kill`) stops whatever job the supervisor runs.
pub fn ask_to_stop(pid: i32, job: JobId) -> std::io::Result<()> {
    let value = libc::sigval { sival_ptr: job.0 as usize as *mut libc::c_void };
    // SAFETY: a plain system call with integer arguments; the value is carried, never followed.
    #[allow(unsafe_code)]
    let result = unsafe { libc::sigqueue(pid, libc::SIGTERM, value) };
    if result == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a SIGTERM or SIGINT read off the signalfd stops `job` (`None`: no job runs).
fn stops(info: &siginfo, job: Option<JobId>) -> bool {
    let signal = i32::try_from(info.ssi_signo).unwrap_or(0);
    if signal != libc::SIGTERM && signal != libc::SIGINT {
        return false;
    }
    // Queued by `ask_to_stop` for one job; anything else (kill, a terminal) means "stop".
    info.ssi_code != libc::SI_QUEUE || job.is_some_and(|job| info.ssi_ptr == job.0)
}

/// Blocks the signals a supervisor waits for and returns the signalfd that reads them. Blocked
/// before any child exists, so no exit can slip by; children start with an empty mask (each
/// replica's child clears it right before its exec: [`crate::launch`]).
pub fn block_signals() -> anyhow::Result<SignalFd> {
    let mut mask = SigSet::empty();
    for signal in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        mask.add(signal);
    }
    mask.thread_block().context("cannot block signals")?;
    SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).context("cannot create a signalfd")
}

/// Makes the supervisor the parent of whatever its jobs leave behind (a daemonised grandchild
/// whose parent exited), instead of the host's init: it reaps them, so none lingers as a zombie
/// still counted against the run's processes, whatever init does.
fn become_subreaper() -> anyhow::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("cannot become a child subreaper")
}

impl Supervisor {
    /// Takes the step file at `path`: from here on, [`record::supervisor_of`](crate::record::supervisor_of)
    /// names this process.
    pub fn lock(path: &Path) -> anyhow::Result<Supervisor> {
        let (step, record) = LockedStep::lock(path)?;
        let spec = record
            .spec
            .with_context(|| format!("{} holds no job (was it written by the compute daemon?)", path.display()))?;
        Ok(Supervisor { step, spec })
    }

    /// Starts the job and supervises it until its replicas have all exited; then records the end
    /// and lets the step file go. `signals` is [`block_signals`]' signalfd.
    pub fn run(self, signals: &SignalFd) -> anyhow::Result<()> {
        let Supervisor { mut step, spec } = self;
        let job = spec.job.id;
        tracing::info!(job = %spec.job.job_run(), "supervising");
        let cgroup = match (&spec.cgroup, &spec.limits) {
            (Some(hierarchy), Some(limits)) => {
                JobCgroup::create(hierarchy, &cgroup_name(spec.job.job_run()), limits).map(Some)
            }
            _ => Ok(None),
        };
        let mut pmi = None;
        let started = cgroup.and_then(|cgroup| {
            let server = pmi_server(&spec)?;
            let fds = server.as_ref().map(|(server, fds)| (&fds[..], server.size()));
            let replicas = Replicas::start(&spec, cgroup, fds)?;
            // The ranks hold their ends now; ours close here.
            pmi = server.map(|(server, _)| server);
            Ok(replicas)
        });
        let mut replicas = match started {
            Ok(replicas) => replicas,
            Err(reason) => {
                tracing::warn!(%reason, "cannot start the job");
                let end = NodeEnd {
                    ended_at: Timestamp::now(),
                    cause: NodeEndCause::LaunchFailed { reason },
                    replicas: vec![],
                    usage: None,
                };
                return step.append_end(&end);
            }
        };
        loop {
            reap(Some(&mut replicas))?;
            if replicas.all_exited() && !replicas.lingering(Instant::now()) {
                return step.append_end(&replicas.end());
            }
            let deadline = match (replicas.next_deadline(), pmi.as_ref().and_then(Pmi::next_deadline)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = match deadline {
                None => PollTimeout::NONE,
                // Rounded up, so the loop never spins through the last fraction of a millisecond.
                Some(at) => {
                    let ms = at.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000);
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
                }
            };
            {
                let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
                if let Some(pmi) = &pmi {
                    fds.extend(pmi.poll_fds().into_iter().map(|(fd, flags)| PollFd::new(fd, flags)));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => return Err(e).context("cannot wait for signals"),
                }
            }
            while let Some(info) = signals.read_signal().context("cannot read a signal")? {
                if stops(&info, Some(job)) {
                    replicas.stop(NodeEndCause::Killed);
                }
                // SIGCHLD: the next `reap` collects every exited child (signals of a kind coalesce).
            }
            if let Some(reason) = pmi.as_mut().and_then(|pmi| pmi.pump(Instant::now())) {
                replicas.stop(NodeEndCause::Aborted { reason });
            }
            replicas.enforce(Instant::now());
        }
    }
}

/// The run's PMI server and the ends its ranks inherit, unless the job asked for none.
fn pmi_server(spec: &StepSpec) -> Result<Option<(Pmi, Vec<OwnedFd>)>, String> {
    let job = &spec.job;
    if job.spec.mpi != Mpi::Pmi1 {
        return Ok(None);
    }
    let node_rank = job.nodes.iter().position(|n| n.node == spec.node).unwrap_or(0);
    let setup = PmiSetup {
        run: job.job_run(),
        node_rank,
        nodes: job.nodes.len().max(1),
        procs_per_node: job.spec.procs_per_node,
        relay: spec.pmi_relay.clone(),
    };
    Pmi::new(setup).map(Some).map_err(|e| format!("cannot create the PMI connections: {e}"))
}

/// Collects the exit of every child that has exited; with no replicas (between runs), any child
/// is one left over.
fn reap(mut replicas: Option<&mut Replicas>) -> anyhow::Result<()> {
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited { code }),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitStatus::Signaled { signal: signal as i32 }),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(()),
            Ok(_) => continue, // stopped or continued: not an exit
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e).context("cannot collect a replica's exit"),
        };
        if !replicas.as_deref_mut().is_some_and(|r| r.exited(pid, status)) {
            tracing::debug!(%pid, "reaped a process that is not a replica");
        }
    }
}

/// The launcher's end of a supervisor it forked: where its next step files come from and where
/// it says what became of each.
pub struct Orders {
    /// Step file paths, one per line, from the launcher; end of file: retire.
    pub from_launcher: OwnedFd,
    /// Lines for the launcher ([`crate::launcher`] lists them).
    pub to_launcher: OwnedFd,
}

/// The life of a supervisor forked by the launcher: supervises `first`, then each step file the
/// launcher sends, until the launcher closes `orders` or an operator's SIGTERM finds it idle.
/// For each it tells the launcher `started<TAB>PID<TAB>PATH` once it holds the file (or
/// `failed<TAB>PID<TAB>PATH<TAB>REASON`), and `ended<TAB>PID<TAB>PATH` once the end is recorded and
/// the file let go.
pub fn serve(first: &str, orders: &Orders) -> anyhow::Result<()> {
    let signals = block_signals()?;
    become_subreaper()?;
    let pid = getpid();
    let mut pending = Lines::default();
    let mut path = first.to_string();
    // Where this supervisor's own cgroups are, once a run has put it in them.
    let mut hierarchy = None;
    let result = loop {
        let told = match Supervisor::lock(Path::new(&path)) {
            Ok(supervisor) => {
                hierarchy = supervisor.spec.cgroup.clone().or(hierarchy);
                // The run goes on even if the launcher cannot be told: see below.
                let _ = say(&orders.to_launcher, &format!("started\t{pid}\t{path}"));
                if let Err(e) = supervisor.run(&signals) {
                    tracing::error!(step = %path, "{e:#}");
                }
                say(&orders.to_launcher, &format!("ended\t{pid}\t{path}"))
            }
            Err(e) => say(&orders.to_launcher, &format!("failed\t{pid}\t{path}\t{e:#}")),
        };
        // Failing to tell the launcher means it is gone, and with it the daemon that ordered the
        // run: no order can come any more (the next daemon finds the run by its step file).
        if told.is_err() {
            break Ok(());
        }
        match wait_for_order(orders, &signals, &mut pending) {
            Ok(Some(next)) => path = next,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if let Some(hierarchy) = &hierarchy {
        JobCgroup::leave(hierarchy);
    }
    result
}

/// Waits, idle, for the launcher's next step file; `None` when the supervisor is to exit.
fn wait_for_order(orders: &Orders, signals: &SignalFd, pending: &mut Lines) -> anyhow::Result<Option<String>> {
    loop {
        if let Some(line) = pending.next() {
            return Ok(Some(line));
        }
        let mut fds = [
            PollFd::new(orders.from_launcher.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e).context("cannot wait for orders"),
        }
        while let Some(info) = signals.read_signal().context("cannot read a signal")? {
            if stops(&info, None) {
                return Ok(None);
            }
        }
        reap(None)?;
        let orders_ready = !fds[0].revents().unwrap_or(PollFlags::empty()).is_empty();
        if orders_ready && pending.read_from(orders.from_launcher.as_fd())? == Some(0) {
            return Ok(None);
        }
    }
}
