//! The step file, `STATE_DIR/jobs/<job>.<run>.step`: all a job run keeps on its node.
//!
//! The compute daemon writes the supervisor's instructions ([`StepSpec`]) into it and hands its
//! path to a supervisor (`cmstep`). When the job has ended on this node the supervisor appends
//! how it ended ([`NodeEnd`]) in one `write`. Whichever daemon runs then
//! reads the file, reports the end, and deletes the file once the head has acknowledged it.
//!
//! The supervisor holds a POSIX record lock on the whole file while it supervises the run
//! ([`LockedStep`]), and lets it go once the end is appended. The kernel drops the lock when the
//! process ends, however it ends, so whether a run still has a supervisor, and which process it
//! is, can be read off the file alone ([`supervisor_of`]): no process table to scan, no pid that
//! could have been reused.
//!
//! One file per run, appended to, rather than a directory of files written aside and renamed:
//! creating and deleting inodes is most of what a short job costs a node's file system (ext4
//! without a journal, for one, scans past every recently deleted inode on each allocation).

use crate::cgroup::{Hierarchy, Limits};
use cm_common::job::{Job, JobRun, NodeEnd};
use cm_common::{JobId, NodeId};
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What the daemon tells a supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSpec {
    pub job: Job,
    pub node: NodeId,
    /// Whom to run the replicas as, when not as the daemon's own user (a root daemon runs them
    /// as the job's user, with the groups this node's account database gives that user).
    #[serde(default)]
    pub run_as: Option<RunAs>,
    /// The GPUs (indices) this run may use, on a node that has any: the replicas see them, and
    /// only them, in `CUDA_VISIBLE_DEVICES`. `None`: the node has no GPU.
    #[serde(default)]
    pub gpus: Option<Vec<u32>>,
    pub kill_grace_ms: u64,
    /// The node's CPUs (indices below its CPU count) this run holds; `limits` has the host CPUs
    /// they stand for.
    #[serde(default)]
    pub cpus: Vec<u32>,
    /// Where the run's cgroup goes; `None`: the node runs jobs without containment.
    #[serde(default)]
    pub cgroup: Option<Hierarchy>,
    /// What the run may use here: its CPUs (the replicas are bound to them, by the cgroup or,
    /// without one, by their affinity), memory and processes.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// The compute daemon's socket for MPI fences across nodes ([`crate::pmi::relay`]).
    #[serde(default)]
    pub pmi_relay: Option<PathBuf>,
}

impl StepSpec {
    /// A run of `job` on `node` as the daemon's own user, with no GPU, CPU choice or cgroup.
    pub fn new(job: Job, node: NodeId, kill_grace_ms: u64) -> StepSpec {
        StepSpec {
            job,
            node,
            run_as: None,
            gpus: None,
            kill_grace_ms,
            cpus: vec![],
            cgroup: None,
            limits: None,
            pmi_relay: None,
        }
    }
}

/// A user's identity on this node: uid, primary gid and supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// What a step file holds.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// `None` if the daemon died while writing it.
    pub spec: Option<StepSpec>,
    /// `None` while the job runs, or if the supervisor died before recording the end.
    pub end: Option<NodeEnd>,
}

const SUFFIX: &str = ".step";

/// The step file of `run` in `dir`.
pub fn path(dir: &Path, run: JobRun) -> PathBuf {
    dir.join(format!("{}.{}{SUFFIX}", run.job, run.run))
}

/// The run a step file name stands for; `None` for any other file.
pub fn run_of(file_name: &str) -> Option<JobRun> {
    let (job, run) = file_name.strip_suffix(SUFFIX)?.split_once('.')?;
    Some(JobRun { job: JobId(job.parse().ok()?), run: run.parse().ok()? })
}

/// Writes a new step file holding `spec` (replacing any file of that name).
pub fn create(path: &Path, spec: &StepSpec) -> anyhow::Result<()> {
    let bytes = rmp_serde::to_vec_named(spec)?;
    // 0600: it holds the job's environment.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(&bytes));
    written.map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Reads a step file; `Ok(None)` if it does not exist. A part that does not decode (cut short by
/// a crash) reads as absent.
pub fn read(path: &Path) -> anyhow::Result<Option<StepRecord>> {
    Ok(bytes_of(path)?.map(|bytes| decode(&bytes)))
}

/// The step file's bytes; `Ok(None)` if it does not exist.
fn bytes_of(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// How the run ended, if the step file says (`None` also when there is no file): what a compute
/// daemon reads for every job that ends on it. The job part is stepped over, not decoded; with
/// its environment it is most of the file.
pub fn read_end(path: &Path) -> anyhow::Result<Option<NodeEnd>> {
    Ok(bytes_of(path)?.and_then(|bytes| end_of(&bytes)))
}

fn end_of(bytes: &[u8]) -> Option<NodeEnd> {
    let mut rest = bytes;
    serde::de::IgnoredAny::deserialize(&mut rmp_serde::Deserializer::new(&mut rest)).ok()?;
    if rest.is_empty() {
        return None;
    }
    rmp_serde::from_slice(rest).ok()
}

fn decode(bytes: &[u8]) -> StepRecord {
    let mut rest = bytes;
    let Ok(spec) = rmp_serde::from_read::<_, StepSpec>(&mut rest) else {
        return StepRecord { spec: None, end: None };
    };
    let end = if rest.is_empty() { None } else { rmp_serde::from_slice(rest).ok() };
    StepRecord { spec: Some(spec), end }
}

/// A write lock on the whole file, as `fcntl` takes it.
fn whole_file() -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers, for which all zeroes is a valid value.
    #[allow(unsafe_code)]
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// A step file held by its supervisor: opened once and locked until dropped (or the process
/// ends).
///
/// POSIX locks belong to the process and are dropped when it closes *any* descriptor of the
/// file, so the supervisor must read and append only through this handle, never by path.
pub struct LockedStep {
    file: File,
    path: PathBuf,
}

impl LockedStep {
    /// Opens and locks the step file at `path` and reads it. Fails if another process holds it.
    pub fn lock(path: &Path) -> anyhow::Result<(LockedStep, StepRecord)> {
        let fail = |what: &str, e: &dyn std::fmt::Display| anyhow::anyhow!("cannot {what} {}: {e}", path.display());
        let mut file = std::fs::OpenOptions::new().read(true).append(true).open(path).map_err(|e| fail("open", &e))?;
        match fcntl(file.as_raw_fd(), FcntlArg::F_SETLK(&whole_file())) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
                let holder =
                    supervisor_of(path).ok().flatten().map(|pid| format!(" (process {pid})")).unwrap_or_default();
                return Err(anyhow::anyhow!("{} already has a supervisor{holder}", path.display()));
            }
            Err(e) => return Err(fail("lock", &e)),
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| fail("read", &e))?;
        Ok((LockedStep { file, path: path.to_path_buf() }, decode(&bytes)))
    }

    /// Appends the end of the run, in one write so that a reader sees all of it or none of it.
    pub fn append_end(&mut self, end: &NodeEnd) -> anyhow::Result<()> {
        let bytes = rmp_serde::to_vec_named(end)?;
        self.file
            .write_all(&bytes)
            .map_err(|e| anyhow::anyhow!("cannot record the end in {}: {e}", self.path.display()))
    }
}

/// The pid of the live supervisor holding the step file at `path`, if any; `Ok(None)` also when
/// the file does not exist. Asked from the supervisor itself, it answers `None`: a process never
/// conflicts with its own lock.
pub fn supervisor_of(path: &Path) -> std::io::Result<Option<i32>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut lock = whole_file();
    fcntl(file.as_raw_fd(), FcntlArg::F_GETLK(&mut lock))?;
    Ok((lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_common::job::{ExitStatus, JobSpec, NodeEndCause, ReplicaExit};
    use cm_common::Timestamp;

    fn spec() -> StepSpec {
        StepSpec::new(Job::new(JobId(7), JobSpec::example(), Timestamp(1), "t".into()), NodeId::new("c1"), 500)
    }

    #[test]
    fn names_round_trip_and_other_files_are_not_steps() {
        let run = JobRun { job: JobId(42), run: 3 };
        let p = path(Path::new("/s/jobs"), run);
        assert_eq!(p, Path::new("/s/jobs/42.3.step"));
        assert_eq!(run_of("42.3.step"), Some(run));
        for other in ["42.step", "42.3", "x.3.step", "42.3.step.tmp", "cmstep.log"] {
            assert_eq!(run_of(other), None, "{other}");
        }
    }

    #[test]
    fn the_end_is_appended_after_the_spec_and_a_torn_end_reads_as_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("7.0.step");
        assert_eq!(read(&p).expect("read"), None);
        create(&p, &spec()).expect("create");
        assert_eq!(read(&p).expect("read"), Some(StepRecord { spec: Some(spec()), end: None }));
        let end = NodeEnd {
            ended_at: Timestamp(9),
            cause: NodeEndCause::Exited,
            replicas: vec![ReplicaExit { rank: 0, status: ExitStatus::Exited { code: 3 } }],
            usage: None,
        };
        assert_eq!(supervisor_of(&p).expect("no lock"), None);
        let (mut locked, record) = LockedStep::lock(&p).expect("lock");
        assert_eq!(record, StepRecord { spec: Some(spec()), end: None });
        locked.append_end(&end).expect("append");
        drop(locked);
        assert_eq!(read(&p).expect("read"), Some(StepRecord { spec: Some(spec()), end: Some(end.clone()) }));
        assert_eq!(read_end(&p).expect("read"), Some(end));

        // A crash in the middle of either write leaves bytes that do not decode.
        let whole = std::fs::read(&p).expect("bytes");
        std::fs::write(&p, &whole[..whole.len() - 2]).expect("cut");
        assert_eq!(read(&p).expect("read"), Some(StepRecord { spec: Some(spec()), end: None }));
        assert_eq!(read_end(&p).expect("read"), None);
        std::fs::write(&p, &whole[..10]).expect("cut");
        assert_eq!(read(&p).expect("read"), Some(StepRecord { spec: None, end: None }));
        assert_eq!(read_end(&p).expect("read"), None);
        std::fs::remove_file(&p).expect("remove");
        assert_eq!(read_end(&p).expect("read"), None);
    }
}
