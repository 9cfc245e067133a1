//! MPI fences across nodes: the head gathers each node's PMI puts for a fence and, once every node
//! of the job has reported it, sends all of them to every node (see `cm_step::pmi`).
//!
//! Fences live in memory only. A node's daemon repeats its report until the answer reaches its
//! supervisor, so a restarted head (or a lost answer) is made good by the repeats: the last
//! completed fence of each run is kept to answer a node that missed it.

use super::HeadCore;
use cm_common::job::{JobRun, JobState};
use cm_common::protocol::{FenceDone, NodeRequest, ReportFence};
use std::collections::{BTreeMap, HashMap};

/// The most one fence of a run may carry from all its nodes (each node's PMI server holds at
/// most as much), so that the answer fits in one message.
pub const MAX_FENCE_BYTES: usize = cm_step::pmi::MAX_KVS_BYTES;

/// Keys and values, as the ranks put them.
type Puts = Vec<(String, String)>;

/// The fences of the MPI runs in progress.
#[derive(Default)]
pub struct Fences {
    runs: HashMap<JobRun, Fence>,
}

#[derive(Default)]
struct Fence {
    /// The fence being gathered.
    epoch: u32,
    /// What each node (by node rank) reported for it.
    parts: BTreeMap<usize, Puts>,
    bytes: usize,
    /// The last fence completed, for a node that asks again.
    done: Option<(u32, Puts)>,
}

fn size(puts: &[(String, String)]) -> usize {
    puts.iter().map(|(k, v)| cm_step::pmi::pair_bytes(k, v)).sum()
}

impl Fences {
    /// Forgets the runs that are not running any more.
    pub fn retain(&mut self, running: impl Fn(JobRun) -> bool) {
        self.runs.retain(|&run, _| running(run));
    }
}

impl HeadCore {
    /// A node's report that its ranks have reached a fence. Reports that do not match a running
    /// run on that node are dropped: they come from an earlier run or a node the job left.
    pub(super) fn report_fence(&mut self, report: ReportFence) {
        let run = report.job_run();
        let Some(job) = self.jobs.get(&run.job).filter(|j| j.run == run.run) else { return };
        if !matches!(job.state, JobState::Running { .. }) {
            return;
        }
        let Some(index) = job.nodes.iter().position(|n| n.node == report.node && n.end.is_none()) else { return };
        let nodes: Vec<_> = job.nodes.iter().map(|n| n.node.clone()).collect();
        let fence = self.fences.runs.entry(run).or_insert_with(|| Fence { epoch: report.epoch, ..Fence::default() });
        if let Some((epoch, kvs)) = &fence.done {
            if *epoch == report.epoch {
                let done = done(run, *epoch, kvs.clone(), None);
                return self.send(&report.node, done);
            }
        }
        if report.epoch < fence.epoch {
            return;
        }
        if report.epoch > fence.epoch {
            // Only after this head lost track (it restarted): the nodes' word wins.
            *fence = Fence { epoch: report.epoch, done: fence.done.take(), ..Fence::default() };
        }
        let added = size(&report.puts);
        let replaced = fence.parts.get(&index).map_or(0, |p| size(p));
        fence.bytes = fence.bytes - replaced + added;
        fence.parts.insert(index, report.puts);
        if fence.bytes > MAX_FENCE_BYTES {
            let reason = format!(
                "the job's MPI processes exchanged over {} MiB at one fence, cm's limit",
                MAX_FENCE_BYTES >> 20
            );
            let epoch = fence.epoch;
            self.fences.runs.remove(&run);
            for node in &nodes {
                self.send(node, done(run, epoch, vec![], Some(reason.clone())));
            }
            return;
        }
        if fence.parts.len() < nodes.len() {
            return;
        }
        let kvs: Puts = std::mem::take(&mut fence.parts).into_values().flatten().collect();
        let epoch = fence.epoch;
        fence.epoch += 1;
        fence.bytes = 0;
        fence.done = Some((epoch, kvs.clone()));
        for node in &nodes {
            self.send(node, done(run, epoch, kvs.clone(), None));
        }
    }
}

fn done(run: JobRun, epoch: u32, kvs: Puts, refused: Option<String>) -> NodeRequest {
    NodeRequest::FenceDone(FenceDone { job: run.job, run: run.run, epoch, kvs, refused })
}
