//! Where the machine's CPU time goes, from `/proc`: the whole machine's busy time, one process's,
//! and a cluster's split into its daemons and its jobs. Times are in clock ticks (`CLK_TCK`,
//! usually 10 ms), so a figure is only as fine as the ticks a run adds up.

use anyhow::Context;
use cm_testkit::Cluster;

/// Clock ticks per second, the unit of `/proc`'s CPU times.
pub fn ticks_per_second() -> anyhow::Result<f64> {
    Ok(nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64)
}

/// The whole machine's busy and total CPU time so far, in clock ticks (`/proc/stat`): what every
/// process used, the tools, the daemons, the jobs and this benchmark alike.
pub fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|t| t.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let all: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((all - idle, all))
}

/// The fields of `/proc/PID/stat` after the command name, which may hold spaces, as numbers: `[0]`
/// is the state (a letter, so 0 here), `[1]` the parent's pid, `[11..=14]` utime, stime, cutime
/// and cstime.
fn stat_fields(pid: u32) -> anyhow::Result<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit(')').next().unwrap_or("");
    Ok(after_name.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn process_ticks(pid: u32) -> anyhow::Result<u64> {
    let f = stat_fields(pid)?;
    Ok(f.get(11).context("utime")? + f.get(12).context("stime")?)
}

/// A cluster's CPU time so far, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterTicks {
    /// The `cmd` daemons, every thread.
    pub daemons: u64,
    /// The jobs: each compute node's supervisor launcher and its supervisors (idle ones are
    /// kept for the next run), with the processes each has reaped: Linux adds a reaped child's
    /// time, and its own reaped children's, to its parent. Jobs still running are not in it yet.
    pub jobs: u64,
}

impl ClusterTicks {
    pub fn now(cluster: &Cluster) -> anyhow::Result<ClusterTicks> {
        let computes: Vec<u32> = cluster.computes.iter().filter_map(|d| d.pid()).collect();
        let mut ticks = ClusterTicks::default();
        for pid in cluster.head.pid().into_iter().chain(computes.iter().copied()) {
            ticks.daemons += process_ticks(pid)?;
        }
        // (pid, parent, its own and its reaped children's ticks) of every process.
        let mut processes = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            // A process may end between the listing and the read: it is none of ours then.
            let Ok(f) = stat_fields(pid) else { continue };
            let parent = f.get(1).map_or(0, |&parent| parent as u32);
            processes.push((pid, parent, f.iter().skip(11).take(4).sum::<u64>()));
        }
        let launchers: Vec<u32> =
            processes.iter().filter(|(_, parent, _)| computes.contains(parent)).map(|&(pid, _, _)| pid).collect();
        ticks.jobs = processes
            .iter()
            .filter(|(pid, parent, _)| launchers.contains(pid) || launchers.contains(parent))
            .map(|&(_, _, t)| t)
            .sum();
        Ok(ticks)
    }

    pub fn since(self, earlier: ClusterTicks) -> ClusterTicks {
        ClusterTicks {
            daemons: self.daemons.saturating_sub(earlier.daemons),
            jobs: self.jobs.saturating_sub(earlier.jobs),
        }
    }
}
