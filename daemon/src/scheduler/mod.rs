//! The scheduler: a pure function from pending jobs (with their priorities and partitions),
//! nodes and partitions to placements, and to a reservation for the first job of each partition
//! that cannot start.
//!
//! Policy:
//! - Jobs are taken in priority order, then by id ([`priority`]). Each starts, all or nothing,
//!   on the first nodes of its partition that have room for it for as long as its time limit.
//! - The first job of a partition that cannot start gets a reservation: the earliest time enough
//!   of its nodes will have room for it, worked out from the running jobs' time limits
//!   ([`timeline`]); what it needs there is held for it from then on.
//! - A lower job may start now only where it fits for the whole of its own time limit around
//!   those reservations, so it cannot delay them (EASY backfill).
//! - Where no start can be worked out (jobs without a time limit hold what it needs), or with
//!   backfill off, the nodes that job could use take nothing of lower priority: strict order.
//! - A job that its partition's live nodes could not hold even if idle waits aside, and holds up
//!   nothing: it would block every job behind it until a node came back.
//!
//! There is no I/O and no clock here (`now` is a parameter), so the policy is tested with tables
//! of cases (`tests.rs`).

mod priority;
mod timeline;

pub use priority::{is_held, priority};

use cm_common::job::Job;
use cm_common::{JobId, NodeId, Resources, Timestamp};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;
use timeline::Timeline;

/// What the scheduler needs to know of one schedulable node.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: NodeId,
    pub capacity: Resources,
    pub free: Resources,
    /// See `Node::only_uid`.
    pub only_uid: Option<u32>,
    /// The most processes one job may start here (`limits.max_procs_per_cpu` × its CPUs).
    pub max_procs: u64,
    /// What the running jobs here give back when their time limits run out, and when.
    pub releases: Vec<(Timestamp, Resources)>,
}

impl NodeView {
    /// Whether `job` may ever run here, resources aside.
    fn admits(&self, job: &Job) -> bool {
        self.only_uid.is_none_or(|only| only == job.spec.user.uid)
            && u64::from(job.spec.procs_per_node) <= self.max_procs
    }
}

/// A partition as the scheduler sees it.
#[derive(Debug, Clone, Default)]
pub struct PartitionView {
    /// Its nodes, as indices into the pass's nodes, in the order they are filled.
    pub nodes: Vec<usize>,
    /// The most jobs one user may run in it at once.
    pub max_running_per_user: Option<u32>,
}

/// A pending job, with what the head worked out for it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub job: &'a Job,
    pub priority: u64,
    /// Its partition, as an index into the pass's partitions.
    pub partition: usize,
    /// How long it may run (its time limit); `None`: for ever.
    pub duration: Option<Duration>,
    /// How many times it may start in this pass: 1 for a job; for an array's record, the tasks
    /// waiting in it that its throttle lets start. Each start is a placement of its own.
    pub starts: u32,
}

/// The rest of what a pass depends on.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub backfill: bool,
    pub now: Timestamp,
}

/// A decision: start `job` on `nodes` (in node-rank order). An array's record may be placed
/// several times in one pass, once for each task that starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job: JobId,
    pub nodes: Vec<NodeId>,
}

/// Resources held for a job that cannot start yet: from `start` on, on `nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub start: Timestamp,
    pub nodes: Vec<NodeId>,
}

/// The first job of a partition that could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub job: JobId,
    pub priority: u64,
    /// `None`: no start could be worked out (or backfill is off): its nodes take nothing of
    /// lower priority.
    pub reservation: Option<Reservation>,
}

/// What one scheduling pass decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pass {
    pub placements: Vec<Placement>,
    /// By partition: the first job that could not start there, if any.
    pub blocked: Vec<Option<Blocked>>,
}

fn wanted_nodes(job: &Job) -> usize {
    usize::try_from(job.spec.nodes).unwrap_or(usize::MAX)
}

fn after(start: Timestamp, duration: Option<Duration>) -> Option<Timestamp> {
    duration.map(|d| Timestamp(start.0.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))))
}

/// Whether the nodes `of` (indices into `nodes`) could hold `job` if they were idle. One that
/// only nodes down or drained now could hold waits aside: it must not block the queue.
pub fn could_ever_run(job: &Job, nodes: &[NodeView], of: &[usize]) -> bool {
    let need = job.spec.per_node;
    of.iter().filter(|&&i| nodes[i].admits(job) && nodes[i].capacity.contains(&need)).count() >= wanted_nodes(job)
}

/// Jobs alike in everything a placement looks at: when one cannot start, neither can the next,
/// since a pass only ever takes resources away.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    partition: usize,
    need: (u32, u64, u32),
    nodes: u32,
    procs: u32,
    uid: u32,
    duration: Option<Duration>,
}

impl Shape {
    fn of(c: &Candidate) -> Shape {
        let spec = &c.job.spec;
        Shape {
            partition: c.partition,
            need: (spec.per_node.cpus, spec.per_node.memory_mb, spec.per_node.gpus),
            nodes: spec.nodes,
            procs: spec.procs_per_node,
            uid: spec.user.uid,
            duration: c.duration,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Its partition's nodes could not hold it even idle.
    Never,
    /// It cannot start in this pass.
    NotNow,
}

/// The plan of one pass: every node's timeline, and the nodes closed to lower jobs.
struct Planner<'a> {
    nodes: &'a [NodeView],
    lines: Vec<Timeline>,
    closed: Vec<bool>,
    /// CPUs free now on open nodes: none left, nothing more can start.
    free_cpus: u64,
    now: Timestamp,
}

impl Planner<'_> {
    /// Open nodes of `of` where `job` could ever run.
    fn usable(&self, job: &Job, of: &[usize]) -> Vec<usize> {
        let need = job.spec.per_node;
        of.iter()
            .copied()
            .filter(|&i| !self.closed[i] && self.nodes[i].admits(job) && self.nodes[i].capacity.contains(&need))
            .collect()
    }

    /// The first nodes of `of` where `job` fits from now for `duration`, if there are enough.
    fn place_now(&self, job: &Job, of: &[usize], duration: Option<Duration>) -> Option<Vec<usize>> {
        let (need, end) = (job.spec.per_node, after(self.now, duration));
        let fits = |i: usize| {
            !self.closed[i]
                && self.lines[i].free_now().contains(&need)
                && self.nodes[i].admits(job)
                && self.lines[i].fits(self.now, end, &need)
        };
        let chosen: Vec<usize> = of.iter().copied().filter(|&i| fits(i)).take(wanted_nodes(job)).collect();
        (chosen.len() == wanted_nodes(job)).then_some(chosen)
    }

    /// The earliest time enough of `usable` have room for `job` for `duration`, and those nodes.
    fn earliest(&self, job: &Job, usable: &[usize], duration: Option<Duration>) -> Option<(Timestamp, Vec<usize>)> {
        let (need, wanted) = (job.spec.per_node, wanted_nodes(job));
        if usable.len() < wanted {
            return None;
        }
        let mut times: Vec<Timestamp> = usable.iter().flat_map(|&i| self.lines[i].changes()).collect();
        times.sort_unstable();
        times.dedup();
        times.into_iter().find_map(|start| {
            let end = after(start, duration);
            let fit: Vec<usize> =
                usable.iter().copied().filter(|&i| self.lines[i].fits(start, end, &need)).take(wanted).collect();
            (fit.len() == wanted).then_some((start, fit))
        })
    }

    fn take(&mut self, nodes: &[usize], start: Timestamp, duration: Option<Duration>, need: &Resources) {
        for &i in nodes {
            let before = self.lines[i].free_now().cpus;
            self.lines[i].take(start, after(start, duration), need);
            self.free_cpus -= u64::from(before - self.lines[i].free_now().cpus);
        }
    }

    fn close(&mut self, nodes: &[usize]) {
        for &i in nodes {
            if !std::mem::replace(&mut self.closed[i], true) {
                self.free_cpus -= u64::from(self.lines[i].free_now().cpus);
            }
        }
    }
}

/// One scheduling pass over `candidates` (any order) at `policy.now`. `running` counts the jobs
/// running now by (partition, uid), for `max_running_per_user`. The jobs are taken lazily in
/// priority order, so a pass that finds the nodes full stops early, however long the queue.
pub fn schedule(
    candidates: &[Candidate],
    nodes: &[NodeView],
    partitions: &[PartitionView],
    running: &HashMap<(usize, u32), u32>,
    policy: Policy,
) -> Pass {
    let lines: Vec<Timeline> = nodes.iter().map(|n| Timeline::new(policy.now, n.free, n.releases.clone())).collect();
    let free_cpus = lines.iter().map(|l| u64::from(l.free_now().cpus)).sum();
    let mut plan = Planner { nodes, lines, closed: vec![false; nodes.len()], free_cpus, now: policy.now };
    let mut pass = Pass { placements: Vec::new(), blocked: vec![None; partitions.len()] };
    let mut running = running.clone();
    let mut verdicts: HashMap<Shape, Verdict> = HashMap::new();
    let mut has_jobs = vec![false; partitions.len()];
    candidates.iter().for_each(|c| has_jobs[c.partition] = true);
    let mut unblocked = has_jobs.iter().filter(|&&h| h).count();
    let mut queue: BinaryHeap<(u64, Reverse<JobId>, usize)> = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.starts > 0)
        .map(|(i, c)| (c.priority, Reverse(c.job.id), i))
        .collect();
    let mut started = vec![0u32; candidates.len()];
    while let Some((priority, id, index)) = queue.pop() {
        if plan.free_cpus == 0 && unblocked == 0 {
            break; // nothing more can start, and every partition's first blocked job is known
        }
        let c = &candidates[index];
        let (job, partition) = (c.job, &partitions[c.partition]);
        let shape = Shape::of(c);
        let verdict = match verdicts.get(&shape) {
            Some(v) => Some(*v),
            None if !could_ever_run(job, nodes, &partition.nodes) => Some(Verdict::Never),
            None => None,
        };
        if verdict == Some(Verdict::Never) {
            verdicts.insert(shape, Verdict::Never);
            continue;
        }
        let user = (c.partition, job.spec.user.uid);
        if partition.max_running_per_user.is_some_and(|max| running.get(&user).copied().unwrap_or(0) >= max) {
            continue; // the user's share of the partition is running: it waits, holding up no one
        }
        if verdict.is_none() && plan.free_cpus > 0 {
            if let Some(chosen) = plan.place_now(job, &partition.nodes, c.duration) {
                plan.take(&chosen, policy.now, c.duration, &job.spec.per_node);
                *running.entry(user).or_default() += 1;
                pass.placements
                    .push(Placement { job: job.id, nodes: chosen.iter().map(|&i| nodes[i].id.clone()).collect() });
                started[index] += 1;
                if started[index] < c.starts {
                    queue.push((priority, id, index)); // the array's next task, first in line still
                }
                continue;
            }
        }
        verdicts.insert(shape, Verdict::NotNow);
        if pass.blocked[c.partition].is_some() {
            continue;
        }
        // The first job of its partition that cannot start: hold its place in the plan.
        let usable = plan.usable(job, &partition.nodes);
        let earliest = if policy.backfill { plan.earliest(job, &usable, c.duration) } else { None };
        let reservation = match earliest {
            Some((start, chosen)) => {
                plan.take(&chosen, start, c.duration, &job.spec.per_node);
                Some(Reservation { start, nodes: chosen.iter().map(|&i| nodes[i].id.clone()).collect() })
            }
            None => {
                plan.close(&usable);
                None
            }
        };
        pass.blocked[c.partition] = Some(Blocked { job: job.id, priority: c.priority, reservation });
        unblocked -= 1;
    }
    pass
}

/// What `job` lacks on `nodes` to start now, in a sentence that names the node closest to
/// holding it and what is missing there ("c3 has 2 of 4 CPUs free"); `None` if it could start.
pub fn shortfall(job: &Job, nodes: &[NodeView], of: &[usize]) -> Option<String> {
    let nodes: Vec<&NodeView> = of.iter().map(|&i| &nodes[i]).collect();
    let need = job.spec.per_node;
    let wanted = wanted_nodes(job);
    let ready: Vec<&NodeView> = nodes.iter().copied().filter(|n| n.admits(job) && n.free.contains(&need)).collect();
    if ready.len() >= wanted {
        return None;
    }
    // How much of what the job needs a node lacks, as a share of the need: the least is closest.
    let lacking = |n: &NodeView| {
        let short = |free: u64, want: u64| if want == 0 { 0.0 } else { want.saturating_sub(free) as f64 / want as f64 };
        short(u64::from(n.free.cpus), u64::from(need.cpus))
            + short(n.free.memory_mb, need.memory_mb)
            + short(u64::from(n.free.gpus), u64::from(need.gpus))
    };
    let closest = nodes
        .iter()
        .copied()
        .filter(|n| n.admits(job) && n.capacity.contains(&need) && !n.free.contains(&need))
        .min_by(|a, b| lacking(a).total_cmp(&lacking(b)));
    let has = |n: &NodeView| {
        let mut parts = Vec::new();
        if n.free.cpus < need.cpus {
            parts.push(format!("{} of {} CPUs", n.free.cpus, need.cpus));
        }
        if n.free.memory_mb < need.memory_mb {
            parts.push(format!("{} of {} MB", n.free.memory_mb, need.memory_mb));
        }
        if n.free.gpus < need.gpus {
            parts.push(format!("{} of {} GPUs", n.free.gpus, need.gpus));
        }
        format!("{} has {} free", n.id, parts.join(" and "))
    };
    let closest = closest.map_or_else(|| "no other node is large enough".to_string(), has);
    Some(if wanted == 1 {
        closest
    } else {
        let names: Vec<&str> = ready.iter().map(|n| n.id.as_str()).collect();
        let now =
            if names.is_empty() { "none has".to_string() } else { format!("{} ({})", names.len(), names.join(", ")) };
        format!("it needs {wanted} nodes with room for it and {now} now; the closest other: {closest}")
    })
}

#[cfg(test)]
mod tests;
