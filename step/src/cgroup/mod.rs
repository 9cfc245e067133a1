//! Containment in cgroups: each job run on a node gets a cgroup of its own, which holds its
//! replicas and everything they start, confined to the CPUs the node chose for it, capped in
//! memory and processes, and killed as a whole.
//!
//! The compute daemon finds where job cgroups go once, at start-up ([`detect::Host::prepare`]),
//! and hands that to each supervisor in the step file with the run's [`Limits`]. The supervisor
//! creates the run's cgroup ([`JobCgroup::create`]), each replica joins it before it executes the
//! job (it writes `0` to the `cgroup.procs` files: [`JobCgroup::procs_files`]), and once the run
//! is over the supervisor kills what is left, reads the accounting and removes the cgroup.
//!
//! The cgroup file system is driven directly: a handful of files per job, in both versions, and
//! a replica joins with a raw `write` between clone and exec, which no cgroup crate's API does.

pub mod detect;

use cm_common::job::{JobRun, NodeUsage};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup v2 controllers cm needs, delegated to the node's job cgroups.
pub const CONTROLLERS_V2: [&str; 3] = ["cpuset", "memory", "pids"];

/// Where this node's job cgroups go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "version")]
pub enum Hierarchy {
    /// The unified hierarchy: one directory, with the controllers delegated to it.
    V2 { parent: PathBuf },
    /// One directory per controller; cpuacct (CPU time) and devices (GPUs) where mounted.
    V1 { cpuset: PathBuf, memory: PathBuf, pids: PathBuf, cpuacct: Option<PathBuf>, devices: Option<PathBuf> },
}

impl Hierarchy {
    /// `cgroup v2` or `cgroup v1`, as `cminfo` shows it.
    pub fn describe(&self) -> String {
        match self {
            Hierarchy::V2 { .. } => "cgroup v2".into(),
            Hierarchy::V1 { .. } => "cgroup v1".into(),
        }
    }

    /// Every job cgroup parent directory, for cleaning up after runs whose supervisor died.
    fn parents(&self) -> Vec<&Path> {
        match self {
            Hierarchy::V2 { parent } => vec![parent],
            Hierarchy::V1 { cpuset, memory, pids, cpuacct, devices } => {
                [Some(cpuset), Some(memory), Some(pids), cpuacct.as_ref(), devices.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(PathBuf::as_path)
                    .collect()
            }
        }
    }

    /// Removes the job and supervisor cgroups no process is left in (their supervisor died
    /// before removing them), but those named in `keep`: the runs the node knows, one of which
    /// may be starting, its cgroup made and not yet joined. A populated one is refused by the
    /// kernel and stays.
    pub fn remove_empty(&self, keep: &[String]) {
        for parent in self.parents() {
            let Ok(entries) = std::fs::read_dir(parent) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if (name.starts_with("job.") || name.starts_with(SUPERVISOR)) && !keep.contains(&name) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// Removes the node's job cgroup directory if no job cgroup is left in it; whether it is gone.
    pub fn remove_if_unused(&self) -> bool {
        self.remove_empty(&[]);
        self.parents().into_iter().all(|parent| std::fs::remove_dir(parent).is_ok() || !parent.exists())
    }
}

/// What one job run may use on this node; the default caps nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The host CPUs (as numbered in `/proc/cpuinfo`) its processes may run on.
    pub cpus: Vec<u32>,
    /// Memory for all its processes here, swap included; `None`: no cap.
    pub memory_bytes: Option<u64>,
    /// The most processes and threads it may have here at once.
    pub max_pids: Option<u64>,
    /// The node's GPUs (minor numbers of `/dev/nvidiaN`) it may not open, where the device
    /// controller allows (cgroup v1).
    #[serde(default)]
    pub denied_gpus: Vec<u32>,
}

/// A CPU list in the kernel's format: `0,2-3`.
pub fn cpu_list(cpus: &[u32]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start { start.to_string() } else { format!("{start}-{}", sorted[i]) });
        i += 1;
    }
    parts.join(",")
}

pub(crate) fn write_file(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("cannot write {value:?} to {}: {e}", path.display()))
}

/// A number from a cgroup file: the whole file, or the value on the line starting with `key`.
fn read_number(path: &Path, key: Option<&str>) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match key {
        None => text.trim().parse().ok(),
        Some(key) => text.lines().find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == key).then(|| value.trim().parse().ok()).flatten()
        }),
    }
}

/// The cgroup of `run` below its node's directory.
pub fn cgroup_name(run: JobRun) -> String {
    format!("job.{run}")
}

/// The name of a v1 supervisor's own cgroups while it has no run.
fn supervisor_name() -> String {
    format!("{SUPERVISOR}{}", std::process::id())
}

/// The prefix of [`supervisor_name`].
const SUPERVISOR: &str = "supervisor.";

fn made(parent: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = parent.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(format!("cannot create the cgroup {}: {e}", dir.display())),
    }
}

/// One job run's cgroup on this node.
///
/// On cgroup v1 a process joins each hierarchy with a write of its own, and each such move
/// stalls every fork on the machine for a moment (the kernel's cgroup threadgroup lock): most of
/// what containment costs a short job. So there the supervisor itself lives in the run's pids,
/// cpuset and cpuacct cgroups, kept from run to run and named for each run while it lasts, and
/// the replicas it starts are in them from birth; they join only the run's own memory cgroup
/// (and, on a node with GPUs, its device list), made afresh so that its peak and its OOM kills
/// are the run's alone. The supervisor is one more process under `pids.max` (which allows for
/// it), and its own CPU time while the run lasts, a fraction of a millisecond, is counted with
/// the run's. On cgroup v2 the run's one cgroup is made afresh and the replicas join it.
#[derive(Debug)]
pub struct JobCgroup {
    /// The directories made for this run alone, which its replicas join.
    dirs: Vec<PathBuf>,
    /// v1: the supervisor's own cgroups, named for the run while it lasts.
    shared: Vec<PathBuf>,
    /// The directory whose `cgroup.procs` lists every process of the run.
    procs: PathBuf,
    v2: bool,
    memory: PathBuf,
    /// Where the CPU time is read: v2 `cpu.stat`, v1 `cpuacct.usage`.
    cpu_time: Option<PathBuf>,
}

impl JobCgroup {
    /// Creates the cgroup `name` (`job.ID.RUN`) with `limits`; on an error, undoes what it did.
    pub fn create(hierarchy: &Hierarchy, name: &str, limits: &Limits) -> Result<JobCgroup, String> {
        let mut cgroup = JobCgroup::named(hierarchy, name);
        match cgroup.build(hierarchy, name, limits) {
            Ok(()) => Ok(cgroup),
            Err(e) => {
                cgroup.remove();
                Err(e)
            }
        }
    }

    /// The cgroup `name`'s files, before any directory is taken or made.
    fn named(hierarchy: &Hierarchy, name: &str) -> JobCgroup {
        let (procs, memory, cpu_time) = match hierarchy {
            Hierarchy::V2 { parent } => {
                (parent.join(name), parent.join(name), Some(parent.join(name).join("cpu.stat")))
            }
            Hierarchy::V1 { pids, memory, cpuacct, .. } => {
                (pids.join(name), memory.join(name), cpuacct.as_ref().map(|dir| dir.join(name).join("cpuacct.usage")))
            }
        };
        let v2 = matches!(hierarchy, Hierarchy::V2 { .. });
        JobCgroup { dirs: vec![], shared: vec![], procs, v2, memory, cpu_time }
    }

    /// Takes or makes the directories (each recorded as soon as it is, for `remove` to undo),
    /// sets the limits, and on v1 moves the supervisor into the cgroups it keeps.
    fn build(&mut self, hierarchy: &Hierarchy, name: &str, limits: &Limits) -> Result<(), String> {
        let mut joining = Vec::new();
        match hierarchy {
            Hierarchy::V2 { parent } => self.dirs.push(made(parent, name)?),
            Hierarchy::V1 { cpuset, memory, pids, cpuacct, devices } => {
                let own = supervisor_name();
                for parent in [Some(pids), Some(cpuset), cpuacct.as_ref()].into_iter().flatten() {
                    let dir = parent.join(name);
                    if std::fs::rename(parent.join(&own), &dir).is_err() {
                        made(parent, name)?;
                        joining.push(dir.join("cgroup.procs"));
                    }
                    self.shared.push(dir);
                }
                // The device controller only where there are GPUs to deny.
                let devices = devices.as_ref().filter(|_| !limits.denied_gpus.is_empty());
                for parent in [Some(memory), devices].into_iter().flatten() {
                    self.dirs.push(made(parent, name)?);
                }
            }
        }
        self.apply(hierarchy, name, limits)?;
        // The supervisor moves in once, on its first run (its CPUs set first: a v1 cpuset takes
        // no process before).
        joining.iter().try_for_each(|procs| write_file(procs, &std::process::id().to_string()))
    }

    fn apply(&mut self, hierarchy: &Hierarchy, name: &str, limits: &Limits) -> Result<(), String> {
        let cpus = cpu_list(&limits.cpus);
        match hierarchy {
            Hierarchy::V2 { parent } => {
                let dir = parent.join(name);
                if !cpus.is_empty() {
                    write_file(&dir.join("cpuset.cpus"), &cpus)?;
                }
                if let Some(bytes) = limits.memory_bytes {
                    write_file(&dir.join("memory.max"), &bytes.to_string())?;
                    // Swap would let the job run on past its memory instead of ending.
                    if dir.join("memory.swap.max").exists() {
                        write_file(&dir.join("memory.swap.max"), "0")?;
                    }
                }
                if let Some(max) = limits.max_pids {
                    write_file(&dir.join("pids.max"), &max.to_string())?;
                }
            }
            Hierarchy::V1 { cpuset, memory, pids, devices, .. } => {
                let dir = cpuset.join(name);
                let parent_mems = std::fs::read_to_string(cpuset.join("cpuset.mems"))
                    .map_err(|e| format!("cannot read {}: {e}", cpuset.join("cpuset.mems").display()))?;
                let parent_cpus = std::fs::read_to_string(cpuset.join("cpuset.cpus")).unwrap_or_default();
                write_file(&dir.join("cpuset.mems"), parent_mems.trim())?;
                write_file(&dir.join("cpuset.cpus"), if cpus.is_empty() { parent_cpus.trim() } else { &cpus })?;
                if let Some(bytes) = limits.memory_bytes {
                    let dir = memory.join(name);
                    write_file(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    // Memory and swap together (where swap is accounted): see v2 above.
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write_file(&memsw, &bytes.to_string())?;
                    }
                }
                // The supervisor is one of the processes there.
                let max = limits.max_pids.map_or_else(|| "max".to_string(), |max| max.saturating_add(1).to_string());
                write_file(&pids.join(name).join("pids.max"), &max)?;
                // Kept from an earlier run: what that one used is not this one's.
                if let Some(cpu_time) = &self.cpu_time {
                    write_file(cpu_time, "0")?;
                }
                if let Some(devices) = devices.as_ref().filter(|_| !limits.denied_gpus.is_empty()) {
                    for gpu in &limits.denied_gpus {
                        write_file(&devices.join(name).join("devices.deny"), &format!("c 195:{gpu} rwm"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Kills whatever is left in the cgroup `name` and removes it, if it exists: a run whose
    /// supervisor died before it could.
    pub fn kill_and_remove(hierarchy: &Hierarchy, name: &str) {
        let named = JobCgroup::named(hierarchy, name);
        if !named.procs.is_dir() {
            return;
        }
        let dirs = hierarchy.parents().iter().map(|parent| parent.join(name)).filter(|dir| dir.is_dir()).collect();
        let mut cgroup = JobCgroup { dirs, ..named };
        cgroup.kill_all();
        cgroup.remove();
    }

    /// A v1 supervisor leaves its own cgroups for good, when it exits: it moves up to the node's
    /// directory, and removes them.
    pub fn leave(hierarchy: &Hierarchy) {
        let Hierarchy::V1 { cpuset, pids, cpuacct, .. } = hierarchy else { return };
        let own = supervisor_name();
        for parent in [Some(pids), Some(cpuset), cpuacct.as_ref()].into_iter().flatten() {
            if parent.join(&own).is_dir() && write_file(&parent.join("cgroup.procs"), "0").is_ok() {
                let _ = std::fs::remove_dir(parent.join(&own));
            }
        }
    }

    /// The `cgroup.procs` files a replica writes `0` to, to join the run's cgroups (those it is
    /// not born in).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|dir| dir.join("cgroup.procs")).collect()
    }

    /// The run's processes in the cgroup now (its supervisor left out).
    pub fn pids(&self) -> Vec<Pid> {
        let me = Pid::this();
        std::fs::read_to_string(self.procs.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .map(Pid::from_raw)
            .filter(|pid| *pid != me)
            .collect()
    }

    /// Sends `signal` to every process in the cgroup, wherever in the process tree it went.
    pub fn signal_all(&self, signal: Signal) {
        for pid in self.pids() {
            let _ = kill(pid, signal);
        }
    }

    /// Kills every process in the cgroup and waits (a little) until none is left: daemonised
    /// grandchildren too, which left the replicas' process groups.
    pub fn kill_all(&self) {
        if self.v2 && write_file(&self.procs.join("cgroup.kill"), "1").is_ok() {
            self.wait_empty();
            return;
        }
        // v1 has no cgroup.kill: kill what is listed until nothing is. A process cannot fork
        // once SIGKILL is pending, so each pass leaves fewer, and pids.max bounds the first.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        tracing::warn!(cgroup = %self.procs.display(), "processes remain in the job's cgroup after SIGKILL");
    }

    fn wait_empty(&self) {
        let until = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// What the run used here: CPU time, peak memory and the kernel's out-of-memory kills.
    pub fn usage(&self) -> NodeUsage {
        let cpu_time_ms = match &self.cpu_time {
            Some(file) if self.v2 => read_number(file, Some("usage_usec")).map(|us| us / 1000),
            Some(file) => read_number(file, None).map(|ns| ns / 1_000_000),
            None => None,
        };
        let (peak, events) = if self.v2 {
            (self.memory.join("memory.peak"), self.memory.join("memory.events"))
        } else {
            (self.memory.join("memory.max_usage_in_bytes"), self.memory.join("memory.oom_control"))
        };
        NodeUsage {
            cpu_time_ms,
            peak_memory_bytes: read_number(&peak, None),
            oom_kills: read_number(&events, Some("oom_kill")).unwrap_or(0),
        }
    }

    /// Removes the run's cgroup (its processes must be gone: [`JobCgroup::kill_all`]); a v1
    /// supervisor's own take its name back for its next run. The kernel may take a moment to
    /// let go of processes just killed, so it retries briefly.
    pub fn remove(&mut self) {
        let own = supervisor_name();
        for dir in self.shared.drain(..) {
            if std::fs::rename(&dir, dir.with_file_name(&own)).is_err() {
                tracing::warn!(cgroup = %dir.display(), "cannot rename the supervisor's cgroup back");
            }
        }
        for dir in self.dirs.drain(..).rev() {
            let until = Instant::now() + Duration::from_secs(2);
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= until => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove the job's cgroup");
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_written_in_the_kernels_format() {
        assert_eq!(cpu_list(&[3, 0, 1, 2, 7, 5, 6]), "0-3,5-7");
        assert_eq!(cpu_list(&[4]), "4");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn a_v2_job_cgroup_gets_its_limits_and_reads_its_usage() {
        let parent = tempfile::tempdir().expect("tempdir");
        let hierarchy = Hierarchy::V2 { parent: parent.path().to_path_buf() };
        let limits = Limits { cpus: vec![2, 3], memory_bytes: Some(1 << 20), max_pids: Some(64), denied_gpus: vec![] };
        let mut cgroup = JobCgroup::create(&hierarchy, "job.7.0", &limits).expect("create");
        let dir = parent.path().join("job.7.0");
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).expect("read");
        assert_eq!(read("cpuset.cpus"), "2-3");
        assert_eq!(read("memory.max"), "1048576");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(cgroup.procs_files(), vec![dir.join("cgroup.procs")]);
        std::fs::write(dir.join("cpu.stat"), "usage_usec 2500000\nuser_usec 1\n").expect("write");
        std::fs::write(dir.join("memory.peak"), "4096\n").expect("write");
        std::fs::write(dir.join("memory.events"), "low 0\noom 1\noom_kill 2\n").expect("write");
        let usage = cgroup.usage();
        assert_eq!(usage, NodeUsage { cpu_time_ms: Some(2500), peak_memory_bytes: Some(4096), oom_kills: 2 });
        // A real cgroup directory can be removed with its files; this stand-in cannot.
        for file in ["cpuset.cpus", "memory.max", "pids.max", "cpu.stat", "memory.peak", "memory.events"] {
            std::fs::remove_file(dir.join(file)).expect("remove");
        }
        cgroup.remove();
        assert!(!dir.exists());
    }
}
