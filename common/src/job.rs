//! Jobs: what a user submits ([`JobSpec`]) and what the head tracks ([`Job`], [`JobState`]).
//!
//! A job runs `procs_per_node` replicas of one shell command on each of `nodes` nodes, reserving
//! `per_node` resources on each. Replicas are numbered by a global rank
//! (`node_rank * procs_per_node + local_rank`), as MPI and torch.distributed expect.

use crate::array::{ArraySpec, ArrayTask};
use crate::dependency::Dependency;
use crate::{JobId, NodeId, Resources, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Who a job runs as. The head sets the uid from the submitter's verified identity, never from
/// the request; the node that runs the job takes the gid and supplementary groups from its own
/// account database, as slurmd does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIdentity {
    pub uid: u32,
    /// The user name, for display; the uid is what counts. The tool sends a hint (its `$USER`);
    /// the head replaces it with the account name it has for the uid.
    pub name: String,
}

/// A job as submitted: everything needed to run it anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// A short name, shown in tables; defaults to the command's first word.
    pub name: String,
    pub user: UserIdentity,
    /// Run as `sh -c COMMAND` by every replica.
    pub command: String,
    /// Absolute directory every replica starts in.
    pub workdir: String,
    /// The submitter's environment; cm adds CM_* variables on top.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub nodes: u32,
    pub procs_per_node: u32,
    /// Reserved on each node.
    pub per_node: Resources,
    /// Wall-clock limit in seconds; `None` means no limit.
    #[serde(default)]
    pub time_limit_secs: Option<u64>,
    /// stdout path pattern (`%j` job id, `%n` node, `%r` rank); default `cmlogs/%j/%n.%r.out`.
    #[serde(default)]
    pub stdout: Option<String>,
    /// stderr path pattern, as for `stdout`; default `cmlogs/%j/%n.%r.err`.
    #[serde(default)]
    pub stderr: Option<String>,
    /// If a node of the job is lost, put the job back in the queue instead of ending it as
    /// NodeFail (`cmrun --requeue`).
    #[serde(default)]
    pub requeue: bool,
    /// The submitter's limit on processes (`ulimit -u`), which the job's replicas run under, as
    /// SLURM propagates resource limits; `None`: unlimited (the node's own limit applies).
    #[serde(default)]
    pub max_user_processes: Option<u64>,
    /// The partition it runs in (`cmrun -P`); empty: the default one, which the head writes in.
    #[serde(default)]
    pub partition: String,
    /// Lowers the job's priority by this much (`cmrun --nice`); only operators may raise it
    /// (below zero). From -10,000 to 10,000.
    #[serde(default)]
    pub nice: i32,
    /// A priority fixed by an operator (`cmrun --priority`, `cmctl update job`), instead of the
    /// one worked out from age, partition and nice; 0 holds the job.
    #[serde(default)]
    pub priority: Option<u32>,
    /// How the ranks find each other as one MPI program.
    #[serde(default)]
    pub mpi: Mpi,
    /// Submitted as an array of tasks (`cmrun --array`), each a job of this spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArraySpec>,
    /// What must happen before it starts (`cmrun --dependency`), as submitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependency: Vec<Dependency>,
    /// Held by its owner (`cmrun --hold`, `cmctl hold`) until released (`cmctl release`).
    #[serde(default)]
    pub hold: bool,
}

/// How a job's ranks find each other as one MPI program (`cmrun --mpi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mpi {
    /// Each rank gets a PMI-1 connection (`PMI_FD`, `PMI_RANK`, `PMI_SIZE`), which MPICH's
    /// `MPI_Init` uses to find the other ranks.
    #[default]
    Pmi1,
    /// No PMI: each rank that calls `MPI_Init` is an MPI program of its own.
    None,
}

impl Mpi {
    pub fn name(self) -> &'static str {
        match self {
            Mpi::Pmi1 => "pmi1",
            Mpi::None => "none",
        }
    }
}

/// Characters that reorder how text is shown (Unicode bidirectional controls): in a name they
/// can make a listing lie about what it shows.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Where a replica's output goes unless the user says otherwise (relative to the working directory).
pub const DEFAULT_STDOUT: &str = "cmlogs/%j/%n.%r.out";
pub const DEFAULT_STDERR: &str = "cmlogs/%j/%n.%r.err";

impl JobSpec {
    /// A minimal valid spec for tests: `true` on 1 node, 1 process, 1 CPU, 100 MB, by alice
    /// (uid 1000) in /home/alice. Tests change the fields they care about.
    #[cfg(any(test, feature = "test-util"))]
    pub fn example() -> JobSpec {
        JobSpec {
            name: "true".into(),
            user: UserIdentity { uid: 1000, name: "alice".into() },
            command: "true".into(),
            workdir: "/home/alice".into(),
            env: BTreeMap::new(),
            nodes: 1,
            procs_per_node: 1,
            per_node: Resources::new(1, 100),
            time_limit_secs: None,
            stdout: None,
            stderr: None,
            requeue: false,
            max_user_processes: None,
            partition: String::new(),
            nice: 0,
            priority: None,
            mpi: Mpi::Pmi1,
            array: None,
            dependency: Vec::new(),
            hold: false,
        }
    }

    pub fn time_limit(&self) -> Option<Duration> {
        self.time_limit_secs.map(Duration::from_secs)
    }

    pub fn total_procs(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.procs_per_node)
    }

    /// Checks what the head can check without looking at the cluster; the message says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.command.trim().is_empty() {
            return Err("the command is empty; give the command to run, e.g. `cmrun hostname`".into());
        }
        if self.nodes == 0 {
            return Err("a job needs at least one node (-n 1 or more)".into());
        }
        if self.procs_per_node == 0 {
            return Err("a job needs at least one process per node (-p 1 or more)".into());
        }
        if self.per_node.cpus == 0 {
            return Err("a job must reserve at least one CPU per node (-c 1 or more)".into());
        }
        if !Path::new(&self.workdir).is_absolute() {
            return Err(format!("the working directory {:?} is not an absolute path", self.workdir));
        }
        if self.name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
            return Err("the job name contains control or text-direction characters; name it with -a NAME".into());
        }
        if self.nice.abs() > crate::partition::MAX_NICE {
            return Err(format!("--nice must be between -{0} and {0}", crate::partition::MAX_NICE));
        }
        if self.command.contains('\0') || self.workdir.contains('\0') {
            return Err("the command or the working directory contains a NUL byte".into());
        }
        if let Some(name) = self.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            return Err(format!("the environment variable name {name:?} is empty or contains '=' or a NUL byte"));
        }
        if let Some(name) = self.env.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
            return Err(format!("the environment variable {name} contains a NUL byte"));
        }
        if let Some(array) = &self.array {
            array.check()?;
        }
        if self.dependency.len() > crate::dependency::MAX_DEPENDENCY_JOBS
            || self.dependency.iter().map(|d| d.jobs.len()).sum::<usize>() > crate::dependency::MAX_DEPENDENCY_JOBS
        {
            return Err(format!(
                "a job may name at most {} jobs it depends on",
                crate::dependency::MAX_DEPENDENCY_JOBS
            ));
        }
        for pattern in [&self.stdout, &self.stderr].into_iter().flatten() {
            if pattern.is_empty() || pattern.contains('\0') {
                return Err(format!("the output path {pattern:?} is empty or contains a NUL byte"));
            }
        }
        Ok(())
    }

    /// Refuses a job larger than `limits` allow, saying which limit and how to stay within it.
    pub fn check_limits(&self, limits: &crate::config::JobLimits) -> Result<(), String> {
        let over = |what: &str, size: usize, max: usize, setting: &str| {
            (size > max).then(|| {
                format!("the {what} is {size} bytes, over the limit of {max} ({setting} in the head's config.yaml)")
            })
        };
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let longest_path = [Some(&self.workdir), self.stdout.as_ref(), self.stderr.as_ref()]
            .into_iter()
            .flatten()
            .map(String::len)
            .max();
        let refusal = over("command", self.command.len(), limits.max_command_bytes, "limits.max_command_bytes")
            .or_else(|| over("job name", self.name.len(), limits.max_name_bytes, "limits.max_name_bytes"))
            .or_else(|| over("environment", env_bytes, limits.max_env_bytes, "limits.max_env_bytes"))
            .or_else(|| {
                over(
                    "working directory or output pattern",
                    longest_path.unwrap_or(0),
                    limits.max_path_bytes,
                    "limits.max_path_bytes",
                )
            });
        match refusal {
            Some(message) => Err(message),
            None => Ok(()),
        }
    }
}

/// How one replica ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum ExitStatus {
    /// The process exited with this code.
    Exited { code: i32 },
    /// The process was killed by this signal.
    Signaled { signal: i32 },
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited { code: 0 })
    }

    /// The status a shell would report: the code, or 128 + signal.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Exited { code } => code,
            ExitStatus::Signaled { signal } => 128 + signal,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited { code } => write!(f, "exit {code}"),
            ExitStatus::Signaled { signal } => write!(f, "signal {signal}"),
        }
    }
}

/// One replica's outcome, reported by its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaExit {
    /// Global rank.
    pub rank: u64,
    pub status: ExitStatus,
}

/// Why a node's share of a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum NodeEndCause {
    /// Every replica exited by itself.
    Exited,
    /// The time limit ran out and the node killed the replicas.
    TimedOut,
    /// The head asked the node to kill the job.
    Killed,
    /// The node could not start the replicas (bad directory, unknown user, unreachable node, ...).
    LaunchFailed { reason: String },
    /// The node lost the job: its daemon restarted without it, or the node stopped answering.
    Lost { reason: String },
    /// The job's MPI program ended itself: a rank called `MPI_Abort`, crashed mid-MPI or broke
    /// the PMI protocol, or a fence could not complete. The node stopped its replicas, and the
    /// head stops the other nodes'.
    Aborted { reason: String },
}

/// What a job's processes used on one node, read from its cgroup when it ended there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeUsage {
    /// CPU time, user and system, of every process of the job there; `None`: not measured.
    #[serde(default)]
    pub cpu_time_ms: Option<u64>,
    /// The most memory the job's processes held there at once (the cgroup's peak, page cache
    /// included, as the limit counts it); `None`: not measured.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    /// Processes of the job the kernel killed there for going over its memory.
    #[serde(default)]
    pub oom_kills: u64,
}

/// A node's report that its share of a job is over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEnd {
    pub ended_at: Timestamp,
    pub cause: NodeEndCause,
    /// Every replica that ran on the node, by rank.
    #[serde(default)]
    pub replicas: Vec<ReplicaExit>,
    /// What the job used there; `None` where nothing ran or nothing was measured.
    #[serde(default)]
    pub usage: Option<NodeUsage>,
}

/// One of a running job's nodes, in node-rank order, with what that node has reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobNode {
    pub node: NodeId,
    /// When the node started the replicas (the node's clock).
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// Set once the node reports the job's end there.
    #[serde(default)]
    pub end: Option<NodeEnd>,
}

/// A job's lifecycle. Terminal states never change again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status")]
pub enum JobState {
    /// Queued, waiting for resources.
    Pending,
    /// Placed on its nodes at `started_at`; replicas run until every node reports an end.
    Running { started_at: Timestamp },
    /// Every replica exited 0.
    Completed { started_at: Timestamp, ended_at: Timestamp },
    /// A replica exited non-zero or could not start.
    Failed { started_at: Timestamp, ended_at: Timestamp, reason: String },
    /// Cancelled by `cmkill` (`started_at` is absent if it was still pending).
    Killed { started_at: Option<Timestamp>, ended_at: Timestamp, by_uid: u32 },
    /// The time limit ran out.
    TimedOut { started_at: Timestamp, ended_at: Timestamp },
    /// A node of the job was lost (went down, or its daemon restarted without the job).
    NodeFail { started_at: Timestamp, ended_at: Timestamp, reason: String },
    /// The kernel killed a process of the job for going over the job's memory on a node.
    OutOfMemory { started_at: Timestamp, ended_at: Timestamp, reason: String },
    /// A dependency could never be met, and the head ends such jobs
    /// (`scheduling.kill_invalid_depend`); it never started.
    DependencyNeverSatisfied { ended_at: Timestamp, reason: String },
}

impl JobState {
    /// Every state's name, as [`JobState::name`] gives it.
    pub const NAMES: [&'static str; 9] = [
        "Pending",
        "Running",
        "Completed",
        "Failed",
        "Killed",
        "TimedOut",
        "NodeFail",
        "OutOfMemory",
        "DependencyNeverSatisfied",
    ];

    /// The name shown in tables and accepted by filters.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Pending => "Pending",
            JobState::Running { .. } => "Running",
            JobState::Completed { .. } => "Completed",
            JobState::Failed { .. } => "Failed",
            JobState::Killed { .. } => "Killed",
            JobState::TimedOut { .. } => "TimedOut",
            JobState::NodeFail { .. } => "NodeFail",
            JobState::OutOfMemory { .. } => "OutOfMemory",
            JobState::DependencyNeverSatisfied { .. } => "DependencyNeverSatisfied",
        }
    }

    /// Why the job ended as it did, for the states that carry a reason.
    pub fn reason(&self) -> Option<&str> {
        match self {
            JobState::Failed { reason, .. }
            | JobState::NodeFail { reason, .. }
            | JobState::OutOfMemory { reason, .. }
            | JobState::DependencyNeverSatisfied { reason, .. } => Some(reason),
            _ => None,
        }
    }

    pub fn is_terminal(&self) -> bool {
        !matches!(self, JobState::Pending | JobState::Running { .. })
    }

    pub fn started_at(&self) -> Option<Timestamp> {
        match self {
            JobState::Pending | JobState::DependencyNeverSatisfied { .. } => None,
            JobState::Running { started_at }
            | JobState::Completed { started_at, .. }
            | JobState::Failed { started_at, .. }
            | JobState::TimedOut { started_at, .. }
            | JobState::NodeFail { started_at, .. }
            | JobState::OutOfMemory { started_at, .. } => Some(*started_at),
            JobState::Killed { started_at, .. } => *started_at,
        }
    }

    pub fn ended_at(&self) -> Option<Timestamp> {
        match self {
            JobState::Pending | JobState::Running { .. } => None,
            JobState::Completed { ended_at, .. }
            | JobState::Failed { ended_at, .. }
            | JobState::Killed { ended_at, .. }
            | JobState::TimedOut { ended_at, .. }
            | JobState::NodeFail { ended_at, .. }
            | JobState::OutOfMemory { ended_at, .. }
            | JobState::DependencyNeverSatisfied { ended_at, .. } => Some(*ended_at),
        }
    }
}

/// Which jobs a listing wants (`cmacct`'s filters); the default wants every job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFilter {
    /// Jobs of these users (uids); empty: any user.
    #[serde(default)]
    pub users: Vec<u32>,
    /// Jobs in these states (names, as [`JobState::name`]); empty: any state.
    #[serde(default)]
    pub states: Vec<String>,
    /// These jobs; empty: any job.
    #[serde(default)]
    pub jobs: Vec<JobId>,
    /// Jobs not ended before this time (still running ones too).
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// Jobs submitted before this time.
    #[serde(default)]
    pub until: Option<Timestamp>,
    /// Jobs placed on any of these nodes; empty: anywhere, or nowhere yet.
    #[serde(default)]
    pub nodes: Vec<NodeId>,
    /// Tasks of these arrays; empty: any job.
    #[serde(default)]
    pub arrays: Vec<JobId>,
}

impl JobFilter {
    pub fn matches(&self, job: &Job) -> bool {
        (self.users.is_empty() || self.users.contains(&job.spec.user.uid))
            && (self.states.is_empty() || self.states.iter().any(|s| s == job.state.name()))
            && (self.jobs.is_empty() || self.jobs.contains(&job.id))
            && self.since.is_none_or(|since| job.state.ended_at().is_none_or(|ended| ended >= since))
            && self.until.is_none_or(|until| job.submitted_at < until)
            && (self.nodes.is_empty() || job.nodes.iter().any(|n| self.nodes.contains(&n.node)))
            && (self.arrays.is_empty() || job.array.as_ref().is_some_and(|a| self.arrays.contains(&a.array)))
    }
}

/// A job as the head tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub spec: JobSpec,
    pub submitted_at: Timestamp,
    pub state: JobState,
    /// The nodes the job was placed on, in node-rank order; empty while pending.
    #[serde(default)]
    pub nodes: Vec<JobNode>,
    /// The client's token for this submission, so a retried submit returns the same id.
    #[serde(default)]
    pub submit_token: String,
    /// Which run of the job this is: 0 at first, one more at each requeue. Nodes tag their
    /// reports with it, so nothing from an earlier run is taken for the current one.
    #[serde(default)]
    pub run: u32,
    /// Changes made to it while it was pending (`cmctl update job`), oldest first, the last
    /// [`MAX_UPDATES`] of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updates: Vec<JobUpdate>,
    /// A pending job's priority when the head answered a listing (it grows as the job waits);
    /// never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u64>,
    /// Why a pending job waits, as the head sees it when it answers a listing; never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<PendingReason>,
    /// Its place in an array (`cmrun --array`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayTask>,
    /// Its dependencies not yet met; the head drops each as it is met.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependency: Vec<Dependency>,
    /// Why one of its dependencies can never be met, once the head has found so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency_never: Option<String>,
}

/// How many of a job's [`JobUpdate`]s it keeps.
pub const MAX_UPDATES: usize = 16;

/// A change to a pending job, and who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUpdate {
    pub at: Timestamp,
    pub by_uid: u32,
    /// Who, for display.
    pub by: String,
    /// What, as `cmctl update job` takes it: `priority=0`, `nice=100`, `priority=auto`.
    pub change: String,
}

/// Why a pending job waits: a word for tables (`Priority`, `Resources`, `NodesDown`, ...) and a
/// sentence for one job that says what is missing where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReason {
    pub word: String,
    pub sentence: String,
    /// For the job first in line: when it is expected to start at the latest, from the running
    /// jobs' time limits, and the nodes held for it until then (backfill may not delay it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_start: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_nodes: Vec<NodeId>,
}

/// One run of a job, as nodes name what they are running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobRun {
    pub job: JobId,
    pub run: u32,
}

impl std::fmt::Display for JobRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.job, self.run)
    }
}

impl Job {
    pub fn new(id: JobId, spec: JobSpec, submitted_at: Timestamp, submit_token: String) -> Self {
        Job {
            id,
            submitted_at,
            state: JobState::Pending,
            nodes: Vec::new(),
            submit_token,
            run: 0,
            updates: Vec::new(),
            priority: None,
            pending_reason: None,
            array: spec_array_record(id, &spec),
            dependency: spec.dependency.clone(),
            dependency_never: None,
            spec,
        }
    }

    /// The job as listings show it: everything but the submitter's environment, which is most
    /// of a job's size and which no listing shows (`GetJob` returns it).
    pub fn summary(&self) -> Job {
        let spec = &self.spec;
        Job {
            spec: JobSpec {
                env: BTreeMap::new(), // not cloned: listings are hot and environments large
                name: spec.name.clone(),
                user: spec.user.clone(),
                command: spec.command.clone(),
                workdir: spec.workdir.clone(),
                stdout: spec.stdout.clone(),
                stderr: spec.stderr.clone(),
                partition: spec.partition.clone(),
                array: spec.array.clone(),
                dependency: spec.dependency.clone(),
                ..*spec
            },
            state: self.state.clone(),
            nodes: self.nodes.clone(),
            submit_token: self.submit_token.clone(),
            updates: self.updates.clone(),
            pending_reason: self.pending_reason.clone(),
            array: self.array.clone(),
            dependency: self.dependency.clone(),
            dependency_never: self.dependency_never.clone(),
            ..*self
        }
    }

    /// The stdout and stderr files of the replica with global `rank` on `node`: the patterns
    /// with `%j` the job id, `%n` the node, `%r` the rank, `%A` the array's id (the job id
    /// outside an array), `%a` the array task's index (nothing outside an array), `%%` a `%`.
    pub fn output_paths(&self, node: &NodeId, rank: u64) -> (PathBuf, PathBuf) {
        let expand = |pattern: &str| {
            let mut out = String::with_capacity(pattern.len() + 16);
            let mut chars = pattern.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('j') => out.push_str(&self.id.to_string()),
                    Some('n') => out.push_str(node.as_str()),
                    Some('r') => out.push_str(&rank.to_string()),
                    Some('A') => out.push_str(&self.array.as_ref().map_or(self.id, |a| a.array).to_string()),
                    Some('a') => out.push_str(&self.array.as_ref().map(|a| a.task.to_string()).unwrap_or_default()),
                    Some('%') => out.push('%'),
                    Some(other) => {
                        out.push('%');
                        out.push(other);
                    }
                    None => out.push('%'),
                }
            }
            Path::new(&self.spec.workdir).join(out)
        };
        (
            expand(self.spec.stdout.as_deref().unwrap_or(DEFAULT_STDOUT)),
            expand(self.spec.stderr.as_deref().unwrap_or(DEFAULT_STDERR)),
        )
    }

    /// How it is named in tables: `12`, an array task `12_7`, an array's waiting tasks `12_[8-99]`.
    pub fn display_id(&self) -> String {
        match &self.array {
            Some(task) => task.to_string(),
            None => self.id.to_string(),
        }
    }

    /// Splits `task`, which waits in this array's record, off as job `id`, pending; the record
    /// keeps the other tasks.
    pub fn take_task(&mut self, task: u32, id: JobId) -> Job {
        let mut job = self.clone();
        job.id = id;
        job.submit_token = String::new();
        if let Some(a) = self.array.as_mut() {
            if a.task == task {
                a.task = a.waiting.pop_first().unwrap_or(task);
            } else {
                a.waiting.remove(task);
            }
            job.array = Some(ArrayTask { array: a.array, task, waiting: Default::default() });
        }
        job
    }

    /// How many jobs it stands for: an array's record stands for each task waiting in it.
    pub fn weight(&self) -> u64 {
        self.array.as_ref().map_or(1, ArrayTask::tasks)
    }

    /// This job's current run.
    pub fn job_run(&self) -> JobRun {
        JobRun { job: self.id, run: self.run }
    }

    /// Terminal, and every node has reported its end: nothing about the job changes any more.
    /// (A killed job is terminal at once but holds its nodes until they confirm.)
    pub fn is_settled(&self) -> bool {
        self.state.is_terminal() && self.nodes.iter().all(|n| n.end.is_some())
    }

    pub fn node_ids(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.iter().map(|n| &n.node)
    }

    /// What the job used on all its nodes together: CPU time summed, the highest peak memory of
    /// any one node, OOM kills summed; `None` if no node measured anything.
    pub fn usage(&self) -> Option<NodeUsage> {
        let measured: Vec<NodeUsage> = self.nodes.iter().filter_map(|n| n.end.as_ref()?.usage).collect();
        if measured.is_empty() {
            return None;
        }
        let sum = |f: fn(&NodeUsage) -> Option<u64>| measured.iter().filter_map(f).reduce(u64::saturating_add);
        Some(NodeUsage {
            cpu_time_ms: sum(|u| u.cpu_time_ms),
            peak_memory_bytes: measured.iter().filter_map(|u| u.peak_memory_bytes).max(),
            oom_kills: measured.iter().map(|u| u.oom_kills).sum(),
        })
    }

    /// Every replica exit reported so far, by rank.
    pub fn replica_exits(&self) -> Vec<ReplicaExit> {
        let mut all: Vec<ReplicaExit> =
            self.nodes.iter().filter_map(|n| n.end.as_ref()).flat_map(|e| e.replicas.iter().cloned()).collect();
        all.sort_by_key(|r| r.rank);
        all
    }

    /// The exit code `cmrun --wait` returns: 0 for Completed, the first failing replica's
    /// shell code for Failed (1 if none ran), 124 for TimedOut (as timeout(1)), 143 for Killed
    /// (128 + SIGTERM), 1 for NodeFail, the first failing replica's code for OutOfMemory (137 if
    /// none failed); `None` while the job has not ended.
    pub fn exit_code(&self) -> Option<i32> {
        match &self.state {
            JobState::Pending | JobState::Running { .. } => None,
            JobState::Completed { .. } => Some(0),
            JobState::Failed { .. } => {
                Some(self.replica_exits().iter().map(|r| r.status.shell_code()).find(|&c| c != 0).unwrap_or(1))
            }
            // What a shell reports for a process killed by SIGKILL, the OOM killer's signal.
            JobState::OutOfMemory { .. } => {
                Some(self.replica_exits().iter().map(|r| r.status.shell_code()).find(|&c| c != 0).unwrap_or(137))
            }
            JobState::TimedOut { .. } => Some(124),
            JobState::Killed { .. } => Some(143),
            JobState::NodeFail { .. } | JobState::DependencyNeverSatisfied { .. } => Some(1),
        }
    }
}

/// The record of a new array: every task waits in it.
fn spec_array_record(id: JobId, spec: &JobSpec) -> Option<ArrayTask> {
    let mut waiting = spec.array.as_ref()?.tasks.clone();
    let task = waiting.pop_first()?;
    Some(ArrayTask { array: id, task, waiting })
}

/// The name a job gets when the user gives none: the command's first word, without its directory.
pub fn default_job_name(command: &str) -> String {
    let first = command.split_whitespace().next().unwrap_or("job");
    let base = first.rsplit('/').next().filter(|b| !b.is_empty()).unwrap_or(first);
    base.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JobSpec {
        JobSpec::example()
    }

    #[test]
    fn output_paths_expand_patterns() {
        let mut job = Job::new(JobId(7), spec(), Timestamp(0), String::new());
        let node = NodeId::new("c1");
        let (out, err) = job.output_paths(&node, 3);
        assert_eq!(out, PathBuf::from("/home/alice/cmlogs/7/c1.3.out"));
        assert_eq!(err, PathBuf::from("/home/alice/cmlogs/7/c1.3.err"));
        job.spec.stdout = Some("/tmp/o-%j-%n-%r-%%-%x-%A-%a.txt".into());
        job.spec.stderr = Some("e%j".into());
        let (out, err) = job.output_paths(&node, 3);
        assert_eq!(out, PathBuf::from("/tmp/o-7-c1-3-%-%x-7-.txt"));
        assert_eq!(err, PathBuf::from("/home/alice/e7"));
        job.array = Some(ArrayTask { array: JobId(5), task: 2, waiting: Default::default() });
        assert_eq!(job.output_paths(&node, 3).0, PathBuf::from("/tmp/o-7-c1-3-%-%x-5-2.txt"));
    }

    #[test]
    fn a_new_array_is_one_record_holding_every_task() {
        let mut s = spec();
        s.array = Some(crate::array::ArraySpec::parse("3-5,9%2", 100).unwrap());
        let job = Job::new(JobId(12), s, Timestamp(0), String::new());
        assert_eq!(job.display_id(), "12_[3-5,9]");
        assert_eq!(job.weight(), 4);
    }

    #[test]
    fn validate_names_the_problem() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.nodes = 0;
        assert!(s.validate().unwrap_err().contains("node"));
        let mut s = spec();
        s.workdir = "relative".into();
        assert!(s.validate().unwrap_err().contains("absolute"));
        let mut s = spec();
        s.command = "  ".into();
        assert!(s.validate().unwrap_err().contains("empty"));
    }

    #[test]
    fn exit_code_follows_state() {
        let mut job = Job::new(JobId(1), spec(), Timestamp(0), String::new());
        assert_eq!(job.exit_code(), None);
        job.nodes = vec![JobNode {
            node: NodeId::new("a"),
            started_at: Some(Timestamp(1)),
            end: Some(NodeEnd {
                ended_at: Timestamp(2),
                cause: NodeEndCause::Exited,
                replicas: vec![
                    ReplicaExit { rank: 1, status: ExitStatus::Signaled { signal: 9 } },
                    ReplicaExit { rank: 0, status: ExitStatus::Exited { code: 3 } },
                ],
                usage: None,
            }),
        }];
        job.state = JobState::Failed { started_at: Timestamp(1), ended_at: Timestamp(2), reason: String::new() };
        assert_eq!(job.exit_code(), Some(3));
        job.state = JobState::Completed { started_at: Timestamp(1), ended_at: Timestamp(2) };
        assert_eq!(job.exit_code(), Some(0));
    }

    #[test]
    fn filters_select_by_user_state_id_and_time() {
        let mut job = Job::new(JobId(4), spec(), Timestamp(100), String::new());
        job.state = JobState::Completed { started_at: Timestamp(150), ended_at: Timestamp(200) };
        assert!(JobFilter::default().matches(&job));
        assert!(JobFilter { users: vec![1000, 7], ..Default::default() }.matches(&job));
        assert!(!JobFilter { users: vec![7], ..Default::default() }.matches(&job));
        assert!(JobFilter { states: vec!["Completed".into()], ..Default::default() }.matches(&job));
        assert!(!JobFilter { states: vec!["Failed".into()], ..Default::default() }.matches(&job));
        assert!(!JobFilter { jobs: vec![JobId(5)], ..Default::default() }.matches(&job));
        assert!(
            JobFilter { since: Some(Timestamp(200)), until: Some(Timestamp(101)), ..Default::default() }.matches(&job)
        );
        assert!(!JobFilter { since: Some(Timestamp(201)), ..Default::default() }.matches(&job));
        assert!(!JobFilter { until: Some(Timestamp(100)), ..Default::default() }.matches(&job));
        job.state = JobState::Running { started_at: Timestamp(150) };
        assert!(JobFilter { since: Some(Timestamp(9999)), ..Default::default() }.matches(&job), "still running");
        for name in JobState::NAMES {
            assert!(JobState::NAMES.iter().filter(|n| **n == name).count() == 1);
        }
    }

    #[test]
    fn usage_adds_cpu_time_and_takes_the_highest_peak() {
        let mut job = Job::new(JobId(1), spec(), Timestamp(0), String::new());
        assert_eq!(job.usage(), None);
        let end = |cpu, peak, oom| NodeEnd {
            ended_at: Timestamp(2),
            cause: NodeEndCause::Exited,
            replicas: vec![],
            usage: Some(NodeUsage { cpu_time_ms: cpu, peak_memory_bytes: peak, oom_kills: oom }),
        };
        job.nodes = vec![
            JobNode { node: NodeId::new("a"), started_at: None, end: Some(end(Some(100), Some(5), 0)) },
            JobNode { node: NodeId::new("b"), started_at: None, end: Some(end(Some(250), Some(9), 1)) },
            JobNode { node: NodeId::new("c"), started_at: None, end: None },
        ];
        assert_eq!(job.usage(), Some(NodeUsage { cpu_time_ms: Some(350), peak_memory_bytes: Some(9), oom_kills: 1 }));
    }

    #[test]
    fn default_name_is_the_first_word() {
        assert_eq!(default_job_name("/usr/bin/python3 train.py"), "python3");
        assert_eq!(default_job_name("hostname"), "hostname");
    }
}
