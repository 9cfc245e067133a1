//! `config.yaml`: cm's settings and their defaults.
//!
//! Precedence, lowest first: these built-in defaults, the file (`--config`, `CM_CONFIG`, else
//! `/etc/cm/config.yaml` when present), then environment variables and flags, which the
//! binaries apply on top with [`Config`]'s public fields.

use crate::partition::Partition;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration is looked for when no path is given.
pub const SYSTEM_CONFIG: &str = "/etc/cm/config.yaml";

/// The longest any interval or timeout may be set to.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The largest `max_message_size`.
const MAX_MESSAGE_SIZE: u64 = 1 << 30;

/// The largest configuration file read, and how deeply its YAML may nest: a real one is a few
/// kilobytes and a few levels, and a parser given a huge or deeply nested file spins for long.
const MAX_CONFIG_BYTES: usize = 1 << 20;
const MAX_NESTING: usize = 32;

/// Refuses a file too large or too deeply nested to be a configuration, before YAML parses it.
/// Flow brackets outside quotes count as nesting (block nesting takes indentation, which the
/// size bounds).
fn check_shape(text: &str) -> std::result::Result<(), String> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(format!("the file is {} bytes; a configuration is at most {MAX_CONFIG_BYTES}", text.len()));
    }
    let (mut depth, mut quote) = (0usize, None);
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(format!("brackets nest deeper than {MAX_NESTING} levels"));
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Where compute daemons, and tools that find no head socket, reach the head by default.
pub const DEFAULT_HEAD_ADDRESS: &str = "127.0.0.1:5001";

/// The socket of a head run by root.
pub const SYSTEM_HEAD_SOCKET: &str = "/run/cm/head.sock";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// /var/lib/cm for root; ~/.local/state/cm for anyone else, who cannot write there.
pub fn default_state_dir() -> PathBuf {
    match home() {
        Some(home) if !is_root() => home.join(".local/state/cm"),
        _ => PathBuf::from("/var/lib/cm"),
    }
}

/// The head's Unix socket when none is configured: /run/cm/head.sock for root,
/// ~/.local/state/cm/head.sock for anyone else.
pub fn default_head_socket() -> PathBuf {
    match home() {
        Some(home) if !is_root() => home.join(".local/state/cm/head.sock"),
        _ => PathBuf::from(SYSTEM_HEAD_SOCKET),
    }
}

/// The cluster key when none is configured: /etc/cm/cm.key for root, ~/.config/cm/cm.key else.
pub fn default_cluster_key() -> PathBuf {
    match home() {
        Some(home) if !is_root() => home.join(".config/cm/cm.key"),
        _ => PathBuf::from("/etc/cm/cm.key"),
    }
}

/// Where tools look for a head on their own host, in order: the system's, then their user's.
pub fn local_head_sockets() -> Vec<PathBuf> {
    let mut sockets = vec![PathBuf::from(SYSTEM_HEAD_SOCKET)];
    if let Some(home) = home() {
        sockets.push(home.join(".local/state/cm/head.sock"));
    }
    sockets
}

/// Every setting of cm. The file may set any subset; the rest keep these defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where tools and compute daemons reach the head: `HOST:PORT` or `ipc://PATH`. None: for
    /// tools, the head's Unix socket on this host if there is one ([`local_head_sockets`]), else
    /// [`DEFAULT_HEAD_ADDRESS`]; for compute daemons, [`DEFAULT_HEAD_ADDRESS`].
    pub head_address: Option<String>,
    /// `HOST:PORT` the head listens on (the original design's daemon_port is 5001).
    pub head_listen: String,
    /// The Unix socket the head listens on as well, for the tools on its own host, which the
    /// kernel names to it (no MUNGE needed). None: [`default_head_socket`].
    pub head_socket: Option<PathBuf>,
    /// `HOST:PORT` compute daemons listen on. A different port from the head's lets a head and a
    /// compute share one host.
    pub compute_listen: String,
    /// The address the head should use for this compute node, when `compute_listen`'s host is a
    /// wildcard; default: the host name with the listen port.
    pub compute_advertise: Option<String>,
    /// Where the head persists nodes and jobs: a MongoDB URI (`mongodb://HOST:PORT/DBNAME`), or
    /// none for the embedded store in `state_dir`.
    pub store: Option<String>,
    /// How long the head waits for MongoDB on one operation before the request fails; keep it
    /// below `request_timeout` so the client hears the reason.
    #[serde(with = "humantime_serde")]
    pub store_timeout: Duration,
    /// Where daemons keep their state (the head's embedded store). Default: /var/lib/cm for root,
    /// ~/.local/state/cm for other users.
    pub state_dir: Option<PathBuf>,
    /// The cluster key file, which every daemon of the cluster holds and no user may read.
    /// None: /etc/cm/cm.key for root, ~/.config/cm/cm.key for other users.
    pub cluster_key: Option<PathBuf>,
    /// Users (names or uids) who, besides root, may see every job in full, kill any job, and
    /// drain, resume or remove nodes.
    pub operators: Vec<String>,
    /// Users see only their own jobs, in listings too (SLURM's `PrivateData=jobs`).
    pub private_data: bool,
    /// Requests over TCP without a MUNGE credential may list nodes and jobs (never submit, kill
    /// or read a job in full). Off: such requests are refused.
    pub anonymous_listing: bool,
    /// How often the head runs a scheduling pass even when nothing changed (scheduler_lag).
    #[serde(with = "humantime_serde")]
    pub scheduler_interval: Duration,
    /// How often a compute node checks its jobs' time limits and processes (status_lag).
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// How often compute nodes send heartbeats.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A compute node silent for this long is marked Down and its jobs fail.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Registration attempts before a compute daemon gives up; 0 keeps trying forever.
    pub register_retries: u32,
    /// Longest pause between registration attempts (they back off up to this).
    #[serde(with = "humantime_serde")]
    pub register_retry_wait: Duration,
    /// Deadline of one request attempt.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Attempts after the first before a peer counts as unreachable.
    pub request_retries: u32,
    /// Time between SIGTERM and SIGKILL when a job is killed or times out.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// Largest message a daemon accepts, in bytes.
    pub max_message_size: u64,
    /// Resources of this node; unset values are detected from the OS (and the cgroup limits).
    pub node: NodeResources,
    /// What `cmrun` asks for when the user does not say.
    pub defaults: JobDefaults,
    /// What the head takes: job sizes and queue lengths.
    pub limits: JobLimits,
    /// How compute nodes contain their jobs.
    pub cgroups: CgroupSettings,
    /// The order jobs start in: priorities and backfill.
    pub scheduling: SchedulingSettings,
    /// Named groups of nodes with limits of their own ([`Partition`]); a node may be in several.
    pub partitions: Vec<Partition>,
    /// Which working directories every node shares, and what happens to a job in another.
    pub workdirs: WorkdirSettings,
}

/// Directories every node sees at the same path with the same contents (shared homes, a cluster
/// file system). A job whose working directory is under none of them runs, on each node, in a
/// directory of that node's own, and its output stays there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WorkdirSettings {
    /// Absolute paths; empty: no check.
    pub shared: Vec<PathBuf>,
    /// What the head does with a job whose working directory is not under `shared`.
    pub unshared: Unshared,
}

/// See [`WorkdirSettings::unshared`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unshared {
    /// Take the job, and tell the submitter where its output will be.
    #[default]
    Warn,
    /// Refuse the job, saying which directories are shared.
    Refuse,
}

impl WorkdirSettings {
    /// Why `workdir` is a concern, if it is: it is not under any shared directory.
    pub fn concern(&self, workdir: &str) -> Option<String> {
        if self.shared.is_empty() || self.shared.iter().any(|dir| std::path::Path::new(workdir).starts_with(dir)) {
            return None;
        }
        let shared: Vec<String> = self.shared.iter().map(|d| d.display().to_string()).collect();
        Some(format!(
            "{workdir} is not in a directory the nodes share ({}): the job runs in each node's own {workdir}, and its output stays on the nodes",
            shared.join(", ")
        ))
    }
}
/// How the head orders and places pending jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulingSettings {
    /// Let a job start ahead of the first job in line that cannot, when it cannot delay that
    /// job's expected start (EASY backfill, from time limits). Off: strict priority order.
    pub backfill: bool,
    /// A pending job gains one priority point per minute it waits, up to this age.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// End a job whose dependency can never be met (state DependencyNeverSatisfied), as
    /// SLURM's `kill_invalid_depend`; off (the default, as SLURM's): it waits, with that reason,
    /// until its owner cancels it.
    pub kill_invalid_depend: bool,
}

impl Default for SchedulingSettings {
    fn default() -> Self {
        SchedulingSettings { backfill: true, max_age: Duration::from_secs(7 * 86_400), kill_invalid_depend: false }
    }
}

/// Containment of jobs in cgroups on compute nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupSettings {
    /// Run each job in a cgroup of its own where the host allows (cgroup v2 or v1): bound to
    /// its CPUs, capped in memory and processes, killed as a whole. Off: jobs are bound to their
    /// CPUs by affinity only, and nothing else is enforced.
    pub enabled: bool,
    /// The most processes and threads one job may have on one node at once.
    pub max_pids_per_job: u64,
}

impl Default for CgroupSettings {
    fn default() -> Self {
        CgroupSettings { enabled: true, max_pids_per_job: 4096 }
    }
}

/// The most a job may ask for, and the most jobs the queue holds (SLURM's `max_script_size`,
/// `max_env_size`, `MaxTasksPerNode`, `MaxJobCount`, `MaxSubmitJobs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobLimits {
    /// The command line, in bytes.
    pub max_command_bytes: usize,
    /// The job name, in bytes.
    pub max_name_bytes: usize,
    /// The working directory and each output pattern, in bytes.
    pub max_path_bytes: usize,
    /// The environment, names and values together, in bytes.
    pub max_env_bytes: usize,
    /// Processes per node, per CPU of the node that runs them.
    pub max_procs_per_cpu: u32,
    /// Pending and running jobs, all users together.
    pub max_jobs: usize,
    /// Pending and running jobs of one user (root included).
    pub max_jobs_per_user: usize,
    /// Tasks of one array (`cmrun --array`); each counts as a job toward `max_jobs`.
    pub max_array_tasks: usize,
    /// How long a finished job stays in the head's memory (SLURM's `MinJobAge`); it stays in the
    /// store for good.
    #[serde(with = "humantime_serde")]
    pub min_job_age: Duration,
    /// The most finished jobs the head keeps in memory: past it the oldest leave before
    /// `min_job_age` (SLURM's `MaxJobCount` bounds them so).
    pub max_finished_in_memory: usize,
}

impl JobLimits {
    fn validate(&self, max_message_size: u64) -> std::result::Result<(), String> {
        let sizes = [
            ("max_command_bytes", self.max_command_bytes),
            ("max_name_bytes", self.max_name_bytes),
            ("max_path_bytes", self.max_path_bytes),
            ("max_env_bytes", self.max_env_bytes),
            ("max_jobs", self.max_jobs),
            ("max_jobs_per_user", self.max_jobs_per_user),
            ("max_array_tasks", self.max_array_tasks),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, size)| *size == 0) {
            return Err(format!("limits.{name} must be more than zero"));
        }
        if self.max_procs_per_cpu == 0 || self.max_procs_per_cpu > 4096 {
            return Err("limits.max_procs_per_cpu must be between 1 and 4096".into());
        }
        // A job at every limit must still fit in one message, with room for the rest of it.
        let job = self.max_command_bytes + self.max_env_bytes + self.max_name_bytes + 3 * self.max_path_bytes;
        if u64::try_from(job).unwrap_or(u64::MAX).saturating_add(64 * 1024) > max_message_size {
            return Err(format!(
                "limits.max_command_bytes, max_env_bytes, max_name_bytes and 3 × max_path_bytes add up to {job} bytes, which with 64 KiB for the rest of a job is over max_message_size ({max_message_size}): a job at the limits could not be sent"
            ));
        }
        Ok(())
    }
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_command_bytes: 256 * 1024,
            max_name_bytes: 256,
            max_path_bytes: 4096,
            max_env_bytes: 1024 * 1024,
            max_procs_per_cpu: 64,
            max_jobs: 100_000,
            max_jobs_per_user: 20_000,
            max_array_tasks: 100_000,
            min_job_age: Duration::from_secs(300),
            max_finished_in_memory: 10_000,
        }
    }
}

/// Overrides of a node's detected resources, to simulate small nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeResources {
    pub cpus: Option<u32>,
    pub memory_mb: Option<u64>,
    /// GPUs this node offers (indices 0..N); null: as many as `nvidia-smi` lists, or none.
    pub gpus: Option<u32>,
}

/// Job defaults, from the original design.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobDefaults {
    pub nodes: u32,
    pub processes_per_node: u32,
    /// CPUs per node when `cmrun -c` is not given; a job gets at least one per process.
    pub cpus_per_node: u32,
    pub memory_per_node_mb: u64,
    /// Minutes or `[D-]HH:MM:SS`; "0" means no limit.
    pub time_limit: String,
}

impl Default for JobDefaults {
    fn default() -> Self {
        JobDefaults {
            nodes: 1,
            processes_per_node: 1,
            cpus_per_node: 1,
            memory_per_node_mb: 100,
            time_limit: "0".to_string(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            head_address: None,
            head_listen: "0.0.0.0:5001".to_string(),
            head_socket: None,
            compute_listen: "0.0.0.0:5002".to_string(),
            compute_advertise: None,
            store: None,
            store_timeout: Duration::from_secs(1),
            state_dir: None,
            cluster_key: None,
            operators: Vec::new(),
            private_data: false,
            anonymous_listing: false,
            scheduler_interval: Duration::from_secs(1),
            status_interval: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(3),
            heartbeat_timeout: Duration::from_secs(10),
            register_retries: 0,
            register_retry_wait: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            request_retries: 2,
            kill_grace: Duration::from_secs(10),
            max_message_size: 16 * 1024 * 1024,
            node: NodeResources::default(),
            defaults: JobDefaults::default(),
            limits: JobLimits::default(),
            cgroups: CgroupSettings::default(),
            scheduling: SchedulingSettings::default(),
            partitions: vec![Partition::everything()],
            workdirs: WorkdirSettings::default(),
        }
    }
}

impl Config {
    /// Loads `path`, or the system file when `path` is `None` and it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new(SYSTEM_CONFIG).exists() => PathBuf::from(SYSTEM_CONFIG),
            None => return Ok(Config::default()),
        };
        let read = |source| Error::ConfigRead { path: path.clone(), source };
        let size = std::fs::metadata(&path).map_err(read)?.len();
        if size > MAX_CONFIG_BYTES as u64 {
            let message = format!("the file is {size} bytes; a configuration is at most {MAX_CONFIG_BYTES}");
            return Err(Error::ConfigParse { path, message });
        }
        let text = std::fs::read_to_string(&path).map_err(read)?;
        Config::parse(&text).map_err(|message| Error::ConfigParse { path, message })
    }

    /// Parses YAML text; an empty file gives the defaults.
    pub fn parse(text: &str) -> std::result::Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        check_shape(text)?;
        let config: Config = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let durations = [
            ("store_timeout", self.store_timeout),
            ("scheduler_interval", self.scheduler_interval),
            ("status_interval", self.status_interval),
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("register_retry_wait", self.register_retry_wait),
            ("request_timeout", self.request_timeout),
            ("kill_grace", self.kill_grace),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| *d > MAX_DURATION) {
            return Err(format!("{name} must be at most {}", humantime::format_duration(MAX_DURATION)));
        }
        if self.request_retries > 100 {
            return Err("request_retries must be at most 100".into());
        }
        if self.max_message_size > MAX_MESSAGE_SIZE {
            return Err(format!("max_message_size must be at most {MAX_MESSAGE_SIZE} bytes (1 GiB)"));
        }
        if self.node.cpus == Some(0) || self.node.memory_mb == Some(0) {
            return Err("node.cpus and node.memory_mb must be more than zero (or null, to detect them)".into());
        }
        self.limits.validate(self.max_message_size)?;
        crate::partition::validate(&self.partitions)?;
        if let Some(dir) = self.workdirs.shared.iter().find(|d| !d.is_absolute()) {
            return Err(format!("workdirs.shared must hold absolute paths, not {}", dir.display()));
        }
        if self.scheduling.max_age > Duration::from_secs(365 * 86_400) {
            return Err("scheduling.max_age must be at most a year".into());
        }
        if self.cgroups.max_pids_per_job < 8 {
            return Err("cgroups.max_pids_per_job must be at least 8 (a job's shell and its commands)".into());
        }
        if self.request_timeout.is_zero() {
            return Err("request_timeout must be more than zero".into());
        }
        if self.heartbeat_interval.is_zero() || self.scheduler_interval.is_zero() || self.status_interval.is_zero() {
            return Err("heartbeat_interval, scheduler_interval and status_interval must be more than zero".into());
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err("heartbeat_timeout must be longer than heartbeat_interval".into());
        }
        if self.store_timeout.is_zero() {
            return Err("store_timeout must be more than zero".into());
        }
        if self.store.as_deref().is_some_and(|uri| !uri.starts_with("mongodb://") && !uri.starts_with("mongodb+srv://"))
        {
            return Err(
                "store must be a MongoDB URI (mongodb://HOST:PORT/DBNAME) or null for the embedded store".into()
            );
        }
        if self.max_message_size < 4096 {
            return Err("max_message_size must be at least 4096 bytes".into());
        }
        crate::timelimit::parse_time_limit(&self.defaults.time_limit).map_err(|e| e.to_string())?;
        if let Some(blank) = self.operators.iter().find(|op| op.trim().is_empty() || op.contains(char::is_whitespace)) {
            return Err(format!("operators must be user names or uids, not {blank:?}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_yaml_equals_the_defaults() {
        // config.yaml at the repository root documents every default; it must not drift.
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.yaml")).expect("config.yaml");
        assert_eq!(Config::parse(&text).expect("parse"), Config::default());
    }

    #[test]
    fn a_partial_file_keeps_other_defaults() {
        let c = Config::parse("heartbeat_interval: 500ms\ndefaults:\n  nodes: 2\n").expect("parse");
        assert_eq!(c.heartbeat_interval, Duration::from_millis(500));
        assert_eq!(c.defaults.nodes, 2);
        assert_eq!(c.defaults.cpus_per_node, 1);
        assert_eq!(c.request_timeout, Config::default().request_timeout);
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(Config::parse("hearbeat_interval: 1s").unwrap_err().contains("hearbeat_interval"));
        assert!(Config::parse("request_timeout: 0s").is_err());
        assert!(Config::parse("defaults:\n  time_limit: soon\n").is_err());
    }

    #[test]
    fn values_out_of_range_and_files_no_configuration_could_be_are_refused() {
        let err = Config::parse("max_message_size: 18446744073709551615").unwrap_err();
        assert!(err.contains("max_message_size must be at most"), "{err}");
        assert!(Config::parse("heartbeat_timeout: 1000d").unwrap_err().contains("heartbeat_timeout"));
        assert!(Config::parse("node:\n  cpus: 0\n").unwrap_err().contains("node.cpus"));
        assert!(Config::parse("limits:\n  max_jobs: 0\n").unwrap_err().contains("limits.max_jobs"));
        let err = Config::parse("limits:\n  max_env_bytes: 100000000\n").unwrap_err();
        assert!(err.contains("could not be sent"), "{err}");
        let deep = format!("operators: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        let started = std::time::Instant::now();
        assert!(Config::parse(&deep).unwrap_err().contains("nest deeper"));
        assert!(started.elapsed() < Duration::from_secs(1), "refused before parsing");
        assert!(Config::parse(&"# padding\n".repeat(200_000)).unwrap_err().contains("at most"));
        assert!(Config::parse("operators: [\"[[[[\", alice]\n").is_ok(), "brackets in quotes are text");
    }

    #[test]
    fn load_reports_the_path_of_a_missing_file() {
        let err = Config::load(Some(Path::new("/nonexistent/cm.yaml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cm.yaml"), "{err}");
    }
}
