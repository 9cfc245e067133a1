//! The compute daemon's view of its job supervisors (see [`super::step`]).
//!
//! Each job run on this node has a directory `STATE_DIR/jobs/<job>.<run>/` holding the
//! supervisor's instructions, its pid, its log and, once the job has ended here, the end record.
//! The directory is removed only when the head has acknowledged that end, so a daemon restarted
//! at any moment finds every job: still running (its supervisor is adopted), or ended and not yet
//! reported (reported again; the head ignores repeats).

use super::step::{read_file, write_atomically, StepSpec, END_FILE, PID_FILE, SPEC_FILE};
use cm_common::job::{Job, JobRun, NodeEnd, NodeEndCause};
use cm_common::{JobId, NodeId, Resources, Timestamp};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How many ended runs a node remembers, to refuse a late duplicate StartJob.
const REMEMBERED_ENDS: usize = 4096;

struct Step {
    run: u32,
    pid: i32,
    per_node: Resources,
    /// Started by an earlier daemon: not our child, so its exit is noticed by polling.
    adopted: bool,
}

/// The supervisors of this node's job runs.
pub struct Steps {
    root: PathBuf,
    exe: PathBuf,
    node: NodeId,
    kill_grace: Duration,
    steps: BTreeMap<JobId, Step>,
    ended: VecDeque<JobRun>,
    ended_set: HashSet<JobRun>,
}

/// Whether `pid` is a live (not zombie) supervisor of `dir`.
fn supervises(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z');
    let dir = dir.as_os_str().as_encoded_bytes();
    !zombie && cmdline.split(|&b| b == 0).any(|arg| arg == dir)
}

impl Steps {
    pub fn new(state_dir: &Path, node: NodeId, kill_grace: Duration) -> std::io::Result<Steps> {
        let root = state_dir.join("jobs");
        std::fs::create_dir_all(&root)?;
        // The supervisor binary is installed beside cmd.
        let exe = std::env::current_exe()?.with_file_name("cmstep");
        Ok(Steps {
            root,
            exe,
            node,
            kill_grace,
            steps: BTreeMap::new(),
            ended: VecDeque::new(),
            ended_set: HashSet::new(),
        })
    }

    fn dir(&self, run: JobRun) -> PathBuf {
        self.root.join(format!("{}.{}", run.job, run.run))
    }

    /// Whether this run runs here now or ended here lately.
    pub fn knows(&self, run: JobRun) -> bool {
        self.steps.get(&run.job).is_some_and(|s| s.run == run.run) || self.ended_set.contains(&run)
    }

    /// The run of `id` running here, if any.
    pub fn run_of(&self, id: JobId) -> Option<u32> {
        self.steps.get(&id).map(|s| s.run)
    }

    pub fn runs(&self) -> Vec<JobRun> {
        self.steps.iter().map(|(&job, s)| JobRun { job, run: s.run }).collect()
    }

    /// What the running jobs hold here.
    pub fn allocated(&self) -> Resources {
        self.steps.values().fold(Resources::default(), |sum, s| sum.saturating_add(&s.per_node))
    }

    /// Starts a supervisor for this node's share of `job`; `on_exit` is called when it exits.
    pub fn start(
        &mut self,
        job: &Job,
        switch_user: bool,
        on_exit: impl FnOnce(JobRun) + Send + 'static,
    ) -> Result<(), String> {
        let run = job.job_run();
        let dir = self.dir(run);
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("cannot {what} for job {run} on {}: {e}", self.node);
        std::fs::create_dir_all(&dir).map_err(|e| fail("create the job directory", &e))?;
        let kill_grace_ms = u64::try_from(self.kill_grace.as_millis()).unwrap_or(u64::MAX);
        let spec = StepSpec { job: job.clone(), node: self.node.clone(), switch_user, kill_grace_ms };
        write_atomically(&dir, SPEC_FILE, &spec).map_err(|e| fail("write the job file", &e))?;
        let log = std::fs::File::create(dir.join("step.log")).map_err(|e| fail("create the supervisor log", &e))?;
        let mut child = Command::new(&self.exe)
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: signals meant for the daemon (a terminal's ^C, a group kill)
            // do not reach the job.
            .process_group(0)
            .spawn()
            .map_err(|e| fail("start the job supervisor", &e))?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        if let Err(e) = std::fs::write(dir.join(PID_FILE), pid.to_string()) {
            tracing::warn!(job = %run, error = %e, "cannot record the supervisor's pid");
        }
        std::thread::Builder::new()
            .name(format!("step-{run}"))
            .spawn(move || {
                let _ = child.wait();
                on_exit(run);
            })
            .map_err(|e| fail("watch the job supervisor", &e))?;
        self.steps.insert(job.id, Step { run: run.run, pid, per_node: job.spec.per_node, adopted: false });
        Ok(())
    }

    /// Asks the supervisor of `id` to stop the job (SIGTERM, then SIGKILL after the grace period).
    pub fn stop(&self, id: JobId) {
        if let Some(step) = self.steps.get(&id) {
            tracing::info!(job = %id, "stopping job");
            let _ = kill(Pid::from_raw(step.pid), Signal::SIGTERM);
        }
    }

    /// The end of a run whose supervisor has exited: what it recorded, or Lost if it recorded
    /// nothing (it was killed). `None` if the run is not (or no longer) ours.
    pub fn end_of(&mut self, run: JobRun) -> Option<NodeEnd> {
        if self.steps.get(&run.job).is_none_or(|s| s.run != run.run) {
            return None;
        }
        self.steps.remove(&run.job);
        self.remember_end(run);
        Some(self.recorded_end(run))
    }

    fn recorded_end(&self, run: JobRun) -> NodeEnd {
        match read_file::<NodeEnd>(&self.dir(run), END_FILE) {
            Ok(Some(end)) => end,
            Ok(None) => NodeEnd {
                ended_at: Timestamp::now(),
                cause: NodeEndCause::Lost {
                    reason: format!("the job's supervisor on {} died without an exit record", self.node),
                },
                replicas: vec![],
            },
            Err(e) => NodeEnd {
                ended_at: Timestamp::now(),
                cause: NodeEndCause::Lost { reason: e.to_string() },
                replicas: vec![],
            },
        }
    }

    /// The head has the end of `run`: its directory can go.
    pub fn acknowledged(&self, run: JobRun) {
        let dir = self.dir(run);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a finished job's directory");
        }
    }

    /// After a daemon (re)start: adopts the supervisors still running and returns the ends of
    /// runs that finished (or whose supervisor vanished) while no daemon was watching.
    pub fn adopt(&mut self) -> Vec<(JobRun, NodeEnd)> {
        let mut ends = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.root) else { return ends };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some((job, run)) = name.split_once('.').and_then(|(j, r)| Some((j.parse().ok()?, r.parse().ok()?)))
            else {
                continue;
            };
            let run = JobRun { job: JobId(job), run };
            let dir = self.dir(run);
            let spec: Option<StepSpec> = read_file(&dir, SPEC_FILE).ok().flatten();
            let pid: Option<i32> = std::fs::read_to_string(dir.join(PID_FILE)).ok().and_then(|p| p.trim().parse().ok());
            match (spec, pid) {
                (Some(spec), Some(pid)) if supervises(pid, &dir) => {
                    tracing::info!(job = %run, pid, "adopted a running job");
                    self.steps
                        .insert(run.job, Step { run: run.run, pid, per_node: spec.job.spec.per_node, adopted: true });
                }
                _ => {
                    self.remember_end(run);
                    ends.push((run, self.recorded_end(run)));
                }
            }
        }
        ends
    }

    /// Adopted supervisors that have exited since (they are not our children, so nothing else
    /// tells us).
    pub fn exited_adopted(&self) -> Vec<JobRun> {
        self.steps
            .iter()
            .filter(|(&job, s)| s.adopted && !supervises(s.pid, &self.dir(JobRun { job, run: s.run })))
            .map(|(&job, s)| JobRun { job, run: s.run })
            .collect()
    }

    fn remember_end(&mut self, run: JobRun) {
        if self.ended.len() >= REMEMBERED_ENDS {
            if let Some(old) = self.ended.pop_front() {
                self.ended_set.remove(&old);
            }
        }
        if self.ended_set.insert(run) {
            self.ended.push_back(run);
        }
    }
}
