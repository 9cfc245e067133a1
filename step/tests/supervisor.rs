//! The real `cmstep` binary on real step files: how a job's end is recorded when its replicas
//! exit, when it is killed, when its time limit passes, and when it cannot start.

use cm_common::job::{ExitStatus, Job, JobNode, JobRun, JobSpec, NodeEnd, NodeEndCause};
use cm_common::{JobId, NodeId, Timestamp};
use cm_step::record::{self, StepSpec};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture { dir: tempfile::tempdir().expect("tempdir") }
    }

    /// Writes a step file for a job running `command` in `procs` replicas (as the current user)
    /// and starts `cmstep` on it.
    fn start(&self, command: &str, procs: u32, edit: impl FnOnce(&mut JobSpec)) -> (PathBuf, Child) {
        let me = nix::unistd::getuid().as_raw();
        let mut spec = JobSpec {
            command: command.into(),
            workdir: self.dir.path().to_str().expect("utf-8").into(),
            procs_per_node: procs,
            env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
            ..JobSpec::example()
        };
        spec.user.uid = me;
        edit(&mut spec);
        let mut job = Job::new(JobId(5), spec, Timestamp::now(), "token".into());
        job.nodes = vec![JobNode { node: NodeId::new("n1"), started_at: None, end: None }];
        let path = record::path(self.dir.path(), JobRun { job: job.id, run: 0 });
        let step = StepSpec { job, node: NodeId::new("n1"), switch_user: false, kill_grace_ms: 300 };
        record::create(&path, &step).expect("step file");
        let child = Command::new(env!("CARGO_BIN_EXE_cmstep")).arg(&path).spawn().expect("cmstep");
        (path, child)
    }
}

/// Waits for `cmstep` to exit and returns the end it recorded.
fn end_of(path: &Path, mut child: Child) -> NodeEnd {
    let status = child.wait().expect("wait");
    assert!(status.success(), "cmstep exited with {status}");
    record::read(path).expect("read").and_then(|r| r.end).expect("an end record")
}

#[test]
fn every_replica_exit_is_recorded_and_replicas_start_with_no_blocked_signals() {
    let f = Fixture::new();
    // The supervisor blocks SIGCHLD and SIGTERM for itself; its replicas must not inherit that.
    let (path, child) =
        f.start("grep -q '^SigBlk:[[:space:]]*0*$' /proc/self/status || exit 9; echo out; exit 3", 2, |_| {});
    let end = end_of(&path, child);
    assert_eq!(end.cause, NodeEndCause::Exited);
    let mut codes: Vec<(u64, ExitStatus)> = end.replicas.iter().map(|r| (r.rank, r.status)).collect();
    codes.sort_by_key(|c| c.0);
    assert_eq!(codes, vec![(0, ExitStatus::Exited { code: 3 }), (1, ExitStatus::Exited { code: 3 })]);
    let out = std::fs::read_to_string(f.dir.path().join("cmlogs/5/n1.1.out")).expect("rank 1 stdout");
    assert_eq!(out, "out\n");
}

#[test]
fn sigterm_stops_the_replicas_and_records_a_kill() {
    let f = Fixture::new();
    let (path, child) = f.start("sleep 30", 2, |_| {});
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("signal");
    let end = end_of(&path, child);
    assert_eq!(end.cause, NodeEndCause::Killed);
    assert!(end.replicas.iter().all(|r| r.status == ExitStatus::Signaled { signal: 15 }), "{:?}", end.replicas);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn a_replica_that_ignores_sigterm_is_killed_after_the_grace_period_at_the_time_limit() {
    let f = Fixture::new();
    let started = Instant::now();
    let (path, child) = f.start("trap '' TERM; sleep 30", 1, |spec| spec.time_limit_secs = Some(1));
    let end = end_of(&path, child);
    assert_eq!(end.cause, NodeEndCause::TimedOut);
    assert_eq!(end.replicas[0].status, ExitStatus::Signaled { signal: 9 });
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1300) && took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_job_that_cannot_start_is_recorded_as_a_launch_failure() {
    let f = Fixture::new();
    let (path, child) = f.start("true", 1, |spec| spec.workdir = "/nonexistent/dir".into());
    let end = end_of(&path, child);
    let NodeEndCause::LaunchFailed { reason } = &end.cause else { panic!("{:?}", end.cause) };
    assert!(reason.contains("/nonexistent/dir"), "{reason}");
}
