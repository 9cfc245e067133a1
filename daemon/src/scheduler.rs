//! The scheduler: a pure function from (pending jobs, free node resources) to placements.
//!
//! Policy: strict FIFO by job id, greedy, all-or-nothing. The oldest pending job gets the first
//! nodes (in the order given) with enough free CPUs and memory that may run its user's jobs; a job
//! that cannot get every node it asks for reserves nothing, and no younger job may pass it. A job
//! that the given (live) nodes could not hold even if they were idle waits without holding up the
//! queue: it would block every job behind it until a node came back.
//! There is no I/O and no clock here, so the policy is tested with tables of cases. (A policy
//! that needs time, such as backfill, takes `now` as a parameter.)

use cm_common::job::Job;
use cm_common::{JobId, NodeId, Resources};

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
}

impl NodeView {
    /// Whether `job` may ever run here, resources aside.
    fn admits(&self, job: &Job) -> bool {
        self.only_uid.is_none_or(|only| only == job.spec.user.uid)
            && u64::from(job.spec.procs_per_node) <= self.max_procs
    }
}

/// A decision: start `job` on `nodes` (in node-rank order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job: JobId,
    pub nodes: Vec<NodeId>,
}

/// What one scheduling pass decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pass {
    pub placements: Vec<Placement>,
    /// The first pending job that could not start: every younger one waits behind it.
    pub blocked: Option<JobId>,
}

fn wanted_nodes(job: &Job) -> usize {
    usize::try_from(job.spec.nodes).unwrap_or(usize::MAX)
}

/// Whether `nodes` could hold `job` if they were idle. One that only nodes down or drained now
/// could hold waits aside: it must not block the queue.
pub fn could_ever_run(job: &Job, nodes: &[NodeView]) -> bool {
    let need = job.spec.per_node;
    nodes.iter().filter(|n| n.admits(job) && n.capacity.contains(&need)).count() >= wanted_nodes(job)
}

/// Places as many of `pending` (in FIFO order) as fit, stopping at the first that does not. The
/// jobs are taken lazily, so a pass costs what it places, however long the queue behind.
pub fn schedule<'a>(pending: impl IntoIterator<Item = &'a Job>, nodes: &[NodeView]) -> Pass {
    let mut free: Vec<Resources> = nodes.iter().map(|n| n.free).collect();
    let mut pass = Pass::default();
    for job in pending {
        if !could_ever_run(job, nodes) {
            continue;
        }
        let need = job.spec.per_node;
        let wanted = wanted_nodes(job);
        let chosen: Vec<usize> =
            (0..nodes.len()).filter(|&i| free[i].contains(&need) && nodes[i].admits(job)).take(wanted).collect();
        if chosen.len() < wanted {
            pass.blocked = Some(job.id); // Strict FIFO: nothing younger may start ahead of this job.
            break;
        }
        for &i in &chosen {
            free[i] = free[i].saturating_sub(&need);
        }
        pass.placements.push(Placement { job: job.id, nodes: chosen.iter().map(|&i| nodes[i].id.clone()).collect() });
    }
    pass
}

/// What `job` lacks on `nodes` to start now, in a sentence that names the node closest to
/// holding it and what is missing there ("c3 has 2 of 4 CPUs free"); `None` if it could start.
pub fn shortfall(job: &Job, nodes: &[NodeView]) -> Option<String> {
    let need = job.spec.per_node;
    let wanted = wanted_nodes(job);
    let ready: Vec<&NodeView> = nodes.iter().filter(|n| n.admits(job) && n.free.contains(&need)).collect();
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
mod tests {
    use super::*;
    use crate::testing::JobBuilder;

    fn node(id: &str, cpus: u32, memory_mb: u64) -> NodeView {
        let size = Resources::new(cpus, memory_mb);
        NodeView { id: NodeId::new(id), capacity: size, free: size, only_uid: None, max_procs: 64 * u64::from(cpus) }
    }

    /// A node of `cpus` CPUs (512 MB) with `free` of them free.
    fn busy(id: &str, cpus: u32, free: u32) -> NodeView {
        NodeView { free: Resources::new(free, 512), ..node(id, cpus, 512) }
    }

    fn placed(p: &Pass) -> Vec<(u64, Vec<&str>)> {
        p.placements.iter().map(|p| (p.job.0, p.nodes.iter().map(NodeId::as_str).collect())).collect()
    }

    struct Case {
        name: &'static str,
        jobs: Vec<Job>,
        nodes: Vec<NodeView>,
        want: Vec<(u64, Vec<&'static str>)>,
    }

    #[test]
    fn table() {
        let cases = [
            Case {
                name: "a job that fits is placed on the first nodes that fit",
                jobs: vec![JobBuilder::new(1).nodes(2).cpus(1).build()],
                nodes: vec![node("a", 2, 512), node("b", 2, 512), node("c", 2, 512)],
                want: vec![(1, vec!["a", "b"])],
            },
            Case {
                name: "nodes without enough CPUs or memory are skipped",
                jobs: vec![JobBuilder::new(1).nodes(1).cpus(2).mem(300).build()],
                nodes: vec![node("a", 1, 512), node("b", 2, 200), node("c", 2, 512)],
                want: vec![(1, vec!["c"])],
            },
            Case {
                name: "all or nothing: a job short of one node reserves nothing",
                jobs: vec![JobBuilder::new(1).nodes(3).build()],
                nodes: vec![node("a", 2, 512), node("b", 2, 512)],
                want: vec![],
            },
            Case {
                name: "strict FIFO: a blocked job blocks younger ones that would fit",
                jobs: vec![JobBuilder::new(1).cpus(2).build(), JobBuilder::new(2).cpus(1).build()],
                nodes: vec![busy("a", 2, 1), busy("b", 2, 1)],
                want: vec![],
            },
            Case {
                name: "a job that the live nodes could not hold even idle does not block the queue",
                jobs: vec![
                    JobBuilder::new(1).nodes(3).build(),
                    JobBuilder::new(2).cpus(4).build(),
                    JobBuilder::new(3).build(),
                ],
                nodes: vec![node("a", 2, 512), node("b", 2, 512)],
                want: vec![(3, vec!["a"])],
            },
            Case {
                name: "a node takes no job with more processes than its limit allows",
                jobs: vec![JobBuilder::new(1).procs(200).build(), JobBuilder::new(2).procs(100).build()],
                nodes: vec![node("a", 2, 512)],
                want: vec![(2, vec!["a"])],
            },
            Case {
                name: "jobs fill nodes in order and share a node while resources last",
                jobs: vec![
                    JobBuilder::new(1).cpus(1).build(),
                    JobBuilder::new(2).cpus(1).build(),
                    JobBuilder::new(3).cpus(1).build(),
                ],
                nodes: vec![node("a", 2, 512), node("b", 1, 512)],
                want: vec![(1, vec!["a"]), (2, vec!["a"]), (3, vec!["b"])],
            },
            Case {
                name: "placement stops at the first job that no longer fits",
                jobs: vec![
                    JobBuilder::new(1).nodes(2).cpus(2).build(),
                    JobBuilder::new(2).cpus(1).build(),
                    JobBuilder::new(3).cpus(1).build(),
                ],
                nodes: vec![node("a", 2, 512), node("b", 3, 512)],
                want: vec![(1, vec!["a", "b"]), (2, vec!["b"])],
            },
            Case {
                name: "memory counts as well as CPUs",
                jobs: vec![JobBuilder::new(1).mem(300).build(), JobBuilder::new(2).mem(300).build()],
                nodes: vec![node("a", 8, 512)],
                want: vec![(1, vec!["a"])],
            },
            Case {
                name: "a node that runs only one user's jobs is skipped for other users",
                jobs: vec![JobBuilder::new(1).uid(1000).build(), JobBuilder::new(2).uid(2000).build()],
                nodes: vec![
                    NodeView { only_uid: Some(2000), ..node("a", 4, 512) },
                    NodeView { only_uid: Some(1000), ..node("b", 4, 512) },
                ],
                want: vec![(1, vec!["b"]), (2, vec!["a"])],
            },
            Case {
                name: "no nodes, nothing placed",
                jobs: vec![JobBuilder::new(1).build()],
                nodes: vec![],
                want: vec![],
            },
        ];
        for case in cases {
            assert_eq!(placed(&schedule(&case.jobs, &case.nodes)), case.want, "{}", case.name);
        }
    }

    #[test]
    fn freed_resources_let_the_next_job_start() {
        let jobs = [JobBuilder::new(1).cpus(2).build(), JobBuilder::new(2).cpus(2).build()];
        let busy = [node("a", 2, 512)];
        assert_eq!(placed(&schedule(&jobs, &busy)), vec![(1, vec!["a"])]);
        // Job 1 ended and gave its 2 CPUs back: job 2 is next.
        assert_eq!(placed(&schedule(&jobs[1..], &busy)), vec![(2, vec!["a"])]);
    }

    #[test]
    fn the_pass_names_the_job_that_blocks_the_queue() {
        let jobs = [JobBuilder::new(1).cpus(2).build(), JobBuilder::new(2).cpus(4).build(), JobBuilder::new(3).build()];
        let pass = schedule(&jobs, &[node("a", 4, 512)]);
        assert_eq!((placed(&pass), pass.blocked), (vec![(1, vec!["a"])], Some(JobId(2))));
        assert_eq!(schedule(&jobs[..1], &[node("a", 4, 512)]).blocked, None, "nothing waits");
    }

    #[test]
    fn a_shortfall_names_the_closest_node_and_what_it_lacks() {
        let one = JobBuilder::new(1).cpus(4).mem(300).build();
        let nodes =
            [busy("a", 8, 1), NodeView { free: Resources::new(3, 250), ..node("b", 8, 512) }, node("small", 2, 512)];
        assert_eq!(shortfall(&one, &nodes).as_deref(), Some("b has 3 of 4 CPUs and 250 of 300 MB free"));
        assert_eq!(shortfall(&one, &[node("c", 4, 512)]), None, "it fits");
        let two = JobBuilder::new(2).nodes(2).cpus(2).build();
        let nodes = [node("a", 2, 512), busy("b", 2, 1), busy("c", 2, 0)];
        assert_eq!(
            shortfall(&two, &nodes).as_deref(),
            Some("it needs 2 nodes with room for it and 1 (a) now; the closest other: b has 1 of 2 CPUs free")
        );
        assert_eq!(
            shortfall(&JobBuilder::new(3).cpus(4).build(), &[busy("a", 2, 2)]).as_deref(),
            Some("no other node is large enough")
        );
    }
}
