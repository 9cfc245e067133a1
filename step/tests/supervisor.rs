//! The real `cmstep` binary on real step files: how a job's end is recorded when its replicas
//! exit, when it is killed, when its time limit passes, and when it cannot start; and
//! `cmstep --launcher`, which forks the supervisors for a compute daemon and keeps idle ones for
//! the next run.

use cm_common::job::{ExitStatus, Job, JobNode, JobRun, JobSpec, NodeEnd, NodeEndCause};
use cm_common::{JobId, NodeId, Timestamp};
use cm_step::record::{self, RunAs, StepSpec};
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

    /// Writes a step file for job `id` running `command` in `procs` replicas (as the current user).
    fn write(&self, id: u64, command: &str, procs: u32, edit: impl FnOnce(&mut JobSpec)) -> PathBuf {
        self.write_step(id, command, procs, false, edit)
    }

    /// As [`Fixture::write`]; with `switch_user`, the supervisor takes the job's user (root only).
    fn write_step(
        &self,
        id: u64,
        command: &str,
        procs: u32,
        switch_user: bool,
        edit: impl FnOnce(&mut JobSpec),
    ) -> PathBuf {
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
        let mut job = Job::new(JobId(id), spec, Timestamp::now(), "token".into());
        job.nodes = vec![JobNode { node: NodeId::new("n1"), started_at: None, end: None }];
        let path = record::path(self.dir.path(), JobRun { job: job.id, run: 0 });
        // The test's users have a group of the same number and no other.
        let uid = job.spec.user.uid;
        let run_as = switch_user.then(|| RunAs { uid, gid: uid, groups: vec![] });
        let step = StepSpec { run_as, ..StepSpec::new(job, NodeId::new("n1"), 300) };
        record::create(&path, &step).expect("step file");
        path
    }

    /// Writes a step file for job 5 and starts `cmstep` on it.
    fn start(&self, command: &str, procs: u32, edit: impl FnOnce(&mut JobSpec)) -> (PathBuf, Child) {
        let path = self.write(5, command, procs, edit);
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
fn a_replica_gets_the_job_environment_its_cm_variables_null_stdin_default_sigpipe_and_its_own_group() {
    let f = Fixture::new();
    // SigIgn bit 13 (SIGPIPE): the supervisor (Rust) ignores it; the job must not. A submitted
    // CM_JOB_ID loses to the real one. `read` at end of input fails, so stdin is empty.
    let script = "ignored=$(grep SigIgn /proc/self/status | cut -f2); [ $((0x$ignored & 0x1000)) = 0 ] || exit 9; \
                  [ \"$(cut -d' ' -f5 /proc/$$/stat)\" = $$ ] || exit 8; \
                  read line && exit 7; \
                  echo \"$GREETING $CM_JOB_ID $CM_PROC_RANK $CM_NPROCS\"; env | cut -d= -f1 | sort | tr '\\n' ' '";
    let (path, child) = f.start(script, 1, |spec| {
        spec.env.insert("GREETING".into(), "hello there".into());
        spec.env.insert("CM_JOB_ID".into(), "bogus".into());
    });
    let end = end_of(&path, child);
    assert_eq!(end.replicas[0].status, ExitStatus::Exited { code: 0 }, "{end:?}");
    let out = std::fs::read_to_string(f.dir.path().join("cmlogs/5/n1.0.out")).expect("stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello there 5 0 1");
    // The job's variables and the CM_* ones (CM_JOB_ID once), nothing of the supervisor's own.
    // The shell itself adds PWD.
    assert_eq!(
        lines[1],
        "CM_CPUS CM_JOB_ID CM_JOB_NAME CM_LOCAL_RANK CM_NNODES CM_NODELIST CM_NODENAME CM_NODE_RANK CM_NPROCS \
         CM_NPROCS_PER_NODE CM_PROC_RANK CM_RESTART_COUNT CM_SUBMIT_DIR GREETING PATH PMI_FD PMI_RANK PMI_SIZE PWD "
    );
}

#[test]
fn a_replica_runs_as_the_job_user_and_reaches_files_with_the_users_permissions_only() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: switching users needs root");
        return;
    }
    let f = Fixture::new();
    let nobody = 65534;
    let (home, locked) = (f.dir.path().join("home"), f.dir.path().join("locked"));
    std::fs::create_dir(&home).expect("home");
    std::fs::create_dir(&locked).expect("locked");
    nix::unistd::chown(&home, Some(nix::unistd::Uid::from_raw(nobody)), Some(nix::unistd::Gid::from_raw(nobody)))
        .expect("chown");
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
    std::fs::set_permissions(f.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let as_nobody = |id: u64, command: &str, stdout: Option<&Path>| {
        let path = f.write_step(id, command, 1, true, |spec| {
            spec.workdir = home.to_str().expect("utf-8").into();
            spec.user.uid = nobody;
            spec.stdout = stdout.map(|p| p.to_str().expect("utf-8").into());
        });
        let child = Command::new(env!("CARGO_BIN_EXE_cmstep")).arg(&path).spawn().expect("cmstep");
        end_of(&path, child)
    };
    // Real, effective and saved ids are all the user's, and so are the files it creates.
    let end = as_nobody(7, "cat /proc/self/status | grep -E '^(Uid|Gid|Groups):'", None);
    assert_eq!(end.replicas[0].status, ExitStatus::Exited { code: 0 }, "{end:?}");
    let out_path = home.join("cmlogs/7/n1.0.out");
    let out = std::fs::read_to_string(&out_path).expect("stdout");
    assert_eq!(out, "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t65534 \n");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&out_path).expect("meta")), nobody);
    // An output file in a directory only root may write to is refused, as it would be to the user.
    let end = as_nobody(8, "true", Some(&locked.join("out")));
    let NodeEndCause::LaunchFailed { reason } = &end.cause else { panic!("{:?}", end.cause) };
    assert!(reason.contains("cannot open the output files") && reason.contains("Permission denied"), "{reason}");
    assert!(!locked.join("out").exists());
}

#[test]
fn a_command_with_a_nul_byte_is_a_launch_failure() {
    let f = Fixture::new();
    let (path, child) = f.start("echo a\0b", 1, |_| {});
    let NodeEndCause::LaunchFailed { reason } = &end_of(&path, child).cause else { panic!("no launch failure") };
    assert!(reason.to_lowercase().contains("nul byte"), "{reason}");
}

#[test]
fn a_fifo_with_no_reader_as_output_fails_the_job_at_once_and_one_being_read_works() {
    let f = Fixture::new();
    let fifo = f.dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let pattern = fifo.to_str().expect("utf-8").to_string();
    let started = Instant::now();
    let (path, child) = f.start("echo never", 1, |spec| spec.stdout = Some(pattern.clone()));
    let NodeEndCause::LaunchFailed { reason } = &end_of(&path, child).cause else { panic!("no launch failure") };
    assert!(reason.contains("cannot open the output files"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5), "the supervisor waited {:?}", started.elapsed());
    // With a reader, the job writes to it as to any file, its writes blocking as usual.
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::read_to_string(fifo).expect("read the fifo")
    });
    std::thread::sleep(Duration::from_millis(200));
    let (path, child) = f.start("echo through", 1, |spec| spec.stdout = Some(pattern));
    assert_eq!(end_of(&path, child).cause, NodeEndCause::Exited);
    assert_eq!(reader.join().expect("join"), "through\n");
}

#[test]
fn replicas_run_under_the_users_process_limit_and_a_job_over_it_fails_whole() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("SKIPPED: switching users needs root");
        return;
    }
    let f = Fixture::new();
    std::fs::set_permissions(f.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
    let started = Instant::now();
    let path = f.write_step(5, "sleep 21", 12, true, |spec| {
        spec.user.uid = 65534;
        spec.max_user_processes = Some(4);
    });
    let child = Command::new(env!("CARGO_BIN_EXE_cmstep")).arg(&path).spawn().expect("cmstep");
    let NodeEndCause::LaunchFailed { reason } = &end_of(&path, child).cause else { panic!("no launch failure") };
    assert!(reason.contains("their limit (ulimit -u)"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let sleepers = std::process::Command::new("pgrep").args(["-u", "65534", "-f", "sleep 21"]).output().expect("pgrep");
    assert!(String::from_utf8_lossy(&sleepers.stdout).trim().is_empty(), "replicas of the failed start live on");
    // And the limit holds for what the job itself forks.
    let path = f.write_step(6, "grep 'Max processes' /proc/self/limits | tr -s ' ' | cut -d' ' -f3", 1, true, |spec| {
        spec.user.uid = 65534;
        spec.max_user_processes = Some(50);
    });
    let child = Command::new(env!("CARGO_BIN_EXE_cmstep")).arg(&path).spawn().expect("cmstep");
    assert_eq!(end_of(&path, child).cause, NodeEndCause::Exited);
    let out = std::fs::read_to_string(f.dir.path().join("cmlogs/6/n1.0.out")).expect("stdout");
    assert_eq!(out.trim(), "50");
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

/// `cmstep --launcher` with its stdin and a channel of the lines it writes.
struct LauncherProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl LauncherProcess {
    /// Keeping idle supervisors for `keep_idle_ms`.
    fn start(keep_idle_ms: u64) -> LauncherProcess {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_cmstep"))
            .args(["--launcher", &keep_idle_ms.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cmstep --launcher");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                if tx.send(line.expect("line")).is_err() {
                    break;
                }
            }
        });
        LauncherProcess { child, lines }
    }

    fn request(&mut self, path: &Path) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{}", path.display()).expect("request");
    }

    fn next(&self) -> Vec<String> {
        let line = self.lines.recv_timeout(Duration::from_secs(10)).expect("a line from the launcher");
        line.split('\t').map(String::from).collect()
    }

    /// Asks for a supervisor of `path` and returns its pid.
    fn started(&mut self, path: &Path) -> i32 {
        self.request(path);
        let started = self.next();
        assert_eq!((started[0].as_str(), started[2].as_str()), ("started", path.to_str().expect("utf-8")));
        started[1].parse().expect("pid")
    }

    fn nothing_more_within(&self, wait: Duration) {
        if let Ok(line) = self.lines.recv_timeout(wait) {
            panic!("the launcher said {line:?}");
        }
    }
}

fn wait_until_unlocked(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while record::supervisor_of(path).expect("lock").is_some() {
        assert!(Instant::now() < deadline, "the supervisor did not let {} go", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_launcher_reuses_an_idle_supervisor_reports_ends_and_leaves_busy_ones_running_when_closed() {
    let f = Fixture::new();
    let quick = f.write(1, "exit 4", 1, |_| {});
    let slow = f.write(2, "sleep 30", 1, |_| {});
    let mut launcher = LauncherProcess::start(60_000);

    let pid = launcher.started(&quick);
    assert_eq!(launcher.next(), vec!["ended".to_string(), pid.to_string(), quick.to_str().expect("utf-8").into()]);
    let end = record::read(&quick).expect("read").and_then(|r| r.end).expect("an end record");
    assert_eq!(end.replicas[0].status, ExitStatus::Exited { code: 4 });
    assert_eq!(record::supervisor_of(&quick).expect("lock"), None, "the file is let go with the end");

    // The idle supervisor takes the next run. The lock is taken before `started` is written, so
    // the daemon can find the supervisor by its file at once.
    assert_eq!(launcher.started(&slow), pid, "the idle supervisor is reused");
    assert_eq!(record::supervisor_of(&slow).expect("lock"), Some(pid));

    // A second supervisor for the same file (a new process: none is idle) is refused, and stays.
    launcher.request(&slow);
    let refused = launcher.next();
    assert_eq!(refused[0], "failed");
    assert!(refused[2].contains(&format!("process {pid}")), "{refused:?}");

    // A stop order for the run it ended before is not one for the run it has now.
    cm_step::supervisor::ask_to_stop(pid, JobId(1)).expect("queue a stop");
    launcher.nothing_more_within(Duration::from_millis(500));
    assert_eq!(record::supervisor_of(&slow).expect("lock"), Some(pid), "the stale order stopped nothing");

    // Closing its stdin (the daemon is gone) ends the launcher and the idle supervisor, not the job.
    drop(launcher.child.stdin.take());
    assert!(launcher.child.wait().expect("wait").success());
    assert_eq!(record::supervisor_of(&slow).expect("lock"), Some(pid));
    cm_step::supervisor::ask_to_stop(pid, JobId(2)).expect("queue a stop");
    wait_until_unlocked(&slow);
    let end = record::read(&slow).expect("read").and_then(|r| r.end).expect("an end record");
    assert_eq!(end.cause, NodeEndCause::Killed);
}

#[test]
fn idle_supervisors_are_retired_and_one_killed_while_idle_is_replaced() {
    let f = Fixture::new();
    let first = f.write(1, "true", 1, |_| {});
    let second = f.write(2, "true", 1, |_| {});
    let third = f.write(3, "true", 1, |_| {});
    let mut launcher = LauncherProcess::start(400);

    let pid = launcher.started(&first);
    assert_eq!(launcher.next()[0], "ended");
    // An operator's plain SIGTERM to an idle supervisor ends it; the next run gets a new one.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).expect("signal");
    assert_eq!(launcher.next(), vec!["exited".to_string(), pid.to_string()]);
    let second_pid = launcher.started(&second);
    assert_ne!(second_pid, pid);
    assert_eq!(launcher.next()[0], "ended");

    // Left idle past its keep, it is retired: its orders close and it exits.
    let idle_since = Instant::now();
    assert_eq!(launcher.next(), vec!["exited".to_string(), second_pid.to_string()]);
    assert!(idle_since.elapsed() >= Duration::from_millis(300), "retired after {:?}", idle_since.elapsed());
    let third_pid = launcher.started(&third);
    assert_ne!(third_pid, second_pid);
    assert_eq!(launcher.next()[0], "ended");
    let end = record::read(&third).expect("read").and_then(|r| r.end).expect("an end record");
    assert_eq!(end.replicas[0].status, ExitStatus::Exited { code: 0 });
}
