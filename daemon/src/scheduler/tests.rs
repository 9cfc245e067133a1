//! Table tests of the scheduling policy: order, placement, backfill, partitions, limits.

use super::*;
use crate::testing::JobBuilder;

const NOW: Timestamp = Timestamp(1_000_000);

fn at(secs: u64) -> Timestamp {
    Timestamp(NOW.0 + secs * 1000)
}

fn node(id: &str, cpus: u32, memory_mb: u64) -> NodeView {
    let size = Resources::new(cpus, memory_mb);
    NodeView {
        id: NodeId::new(id),
        capacity: size,
        free: size,
        only_uid: None,
        max_procs: 64 * u64::from(cpus),
        releases: vec![],
    }
}

/// A node of `cpus` CPUs (512 MB) with `free` of them free, whose running jobs never end.
fn busy(id: &str, cpus: u32, free: u32) -> NodeView {
    NodeView { free: Resources::new(free, 512), ..node(id, cpus, 512) }
}

/// A node of `cpus` CPUs with `free` free, and the rest freed `secs` from now.
fn freed_in(id: &str, cpus: u32, free: u32, secs: u64) -> NodeView {
    NodeView { releases: vec![(at(secs), Resources::new(cpus - free, 0))], ..busy(id, cpus, free) }
}

/// Jobs in id order, each of a priority lower than the one before (so FIFO), unlimited.
fn fifo(jobs: &[Job]) -> Vec<Candidate<'_>> {
    jobs.iter()
        .map(|job| Candidate { job, priority: 1_000_000 - job.id.0, partition: 0, duration: None, starts: 1 })
        .collect()
}

fn limited<'a>(mut candidates: Vec<Candidate<'a>>, secs: &[Option<u64>]) -> Vec<Candidate<'a>> {
    for (c, s) in candidates.iter_mut().zip(secs) {
        c.duration = s.map(Duration::from_secs);
    }
    candidates
}

fn everything(nodes: &[NodeView]) -> Vec<PartitionView> {
    vec![PartitionView { nodes: (0..nodes.len()).collect(), max_running_per_user: None }]
}

fn run(candidates: &[Candidate], nodes: &[NodeView]) -> Pass {
    schedule(candidates, nodes, &everything(nodes), &HashMap::new(), Policy { backfill: true, now: NOW })
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
fn placement_table() {
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
            name: "no start can be worked out (running jobs without limits): lower jobs may not pass",
            jobs: vec![JobBuilder::new(1).cpus(2).build(), JobBuilder::new(2).cpus(1).build()],
            nodes: vec![busy("a", 2, 1), busy("b", 2, 1)],
            want: vec![],
        },
        Case {
            name: "...but they may use nodes the blocked job could never use",
            jobs: vec![JobBuilder::new(1).cpus(2).build(), JobBuilder::new(2).cpus(1).build()],
            nodes: vec![busy("a", 2, 1), node("small", 1, 512)],
            want: vec![(2, vec!["small"])],
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
        Case { name: "no nodes, nothing placed", jobs: vec![JobBuilder::new(1).build()], nodes: vec![], want: vec![] },
    ];
    for case in cases {
        assert_eq!(placed(&run(&fifo(&case.jobs), &case.nodes)), case.want, "{}", case.name);
    }
}

#[test]
fn jobs_start_in_priority_order_not_submission_order() {
    let jobs =
        [JobBuilder::new(1).cpus(2).build(), JobBuilder::new(2).cpus(2).build(), JobBuilder::new(3).cpus(2).build()];
    let mut candidates = fifo(&jobs);
    candidates[2].priority = 2_000_000; // job 3 first
    candidates[1].priority = candidates[0].priority; // a tie goes to the older job
    let pass = run(&candidates, &[node("a", 2, 512), node("b", 2, 512)]);
    assert_eq!(placed(&pass), vec![(3, vec!["a"]), (1, vec!["b"])]);
    assert_eq!(pass.blocked[0].as_ref().map(|b| b.job), Some(JobId(2)));
}

/// The wide job 1 needs all 4 CPUs of `a`, 2 of which a running job frees in 100 s.
fn wide_and_small(small: &[(u32, Option<u64>)]) -> (Vec<Job>, Vec<Option<u64>>) {
    let mut jobs = vec![JobBuilder::new(1).cpus(4).build()];
    let mut secs = vec![Some(600)];
    for (i, (cpus, limit)) in small.iter().enumerate() {
        jobs.push(JobBuilder::new(i as u64 + 2).cpus(*cpus).build());
        secs.push(*limit);
    }
    (jobs, secs)
}

#[test]
fn backfill_starts_what_cannot_delay_the_first_job_and_nothing_else() {
    let cases = [
        ("ends before the reserved start", (2u32, Some(50u64)), true),
        ("ends exactly at the reserved start", (2, Some(100)), true),
        ("would still run at the reserved start", (2, Some(101)), false),
        ("has no time limit", (2, None), false),
        ("does not fit now anyway", (3, Some(10)), false),
    ];
    for (name, small, starts) in cases {
        let (jobs, secs) = wide_and_small(&[small]);
        let nodes = [freed_in("a", 4, 2, 100)];
        let pass = run(&limited(fifo(&jobs), &secs), &nodes);
        let want = if starts { vec![(2, vec!["a"])] } else { vec![] };
        assert_eq!(placed(&pass), want, "a small job that {name}");
        let blocked = pass.blocked[0].clone().expect("job 1 waits");
        assert_eq!(blocked.job, JobId(1));
        assert_eq!(blocked.reservation, Some(Reservation { start: at(100), nodes: vec![NodeId::new("a")] }), "{name}");
    }
}

#[test]
fn backfill_uses_nodes_and_resources_the_reservation_does_not_need() {
    // Job 1 (4 CPUs) gets `a` at 100 s; `b` frees later, so it is not reserved: a long job of 3
    // CPUs starts there. On `a` (6 CPUs), 2 stay free beside job 1: a 1-CPU job without a limit
    // fits, a 2-CPU one (job 4) would not once the first took one.
    let (jobs, secs) = wide_and_small(&[(3, Some(10_000)), (1, None), (2, None)]);
    let nodes = [freed_in("a", 6, 3, 100), freed_in("b", 4, 3, 300)];
    let pass = run(&limited(fifo(&jobs), &secs), &nodes);
    assert_eq!(placed(&pass), vec![(2, vec!["b"]), (3, vec!["a"])], "job 4 would eat into job 1's share of a");
    let reservation = pass.blocked[0].clone().and_then(|b| b.reservation).expect("reserved");
    assert_eq!(reservation, Reservation { start: at(100), nodes: vec![NodeId::new("a")] });
}

#[test]
fn a_wide_job_gets_the_earliest_time_enough_nodes_are_free_together() {
    let jobs = [JobBuilder::new(1).nodes(2).cpus(2).build()];
    let nodes = [freed_in("a", 2, 0, 50), freed_in("b", 2, 0, 200), freed_in("c", 2, 0, 120)];
    let pass = run(&limited(fifo(&jobs), &[Some(60)]), &nodes);
    let reservation = pass.blocked[0].clone().and_then(|b| b.reservation).expect("reserved");
    assert_eq!(reservation, Reservation { start: at(120), nodes: vec![NodeId::new("a"), NodeId::new("c")] });
}

#[test]
fn without_backfill_the_first_jobs_nodes_take_nothing_lower() {
    let (jobs, secs) = wide_and_small(&[(2, Some(50))]);
    let nodes = [freed_in("a", 4, 2, 100)];
    let candidates = limited(fifo(&jobs), &secs);
    let pass =
        schedule(&candidates, &nodes, &everything(&nodes), &HashMap::new(), Policy { backfill: false, now: NOW });
    assert_eq!(placed(&pass), vec![]);
    assert_eq!(pass.blocked[0].as_ref().map(|b| (b.job, b.reservation.clone())), Some((JobId(1), None)));
}

#[test]
fn partitions_keep_jobs_on_their_nodes_and_one_blocked_job_holds_up_only_its_own_nodes() {
    let jobs = [
        JobBuilder::new(1).cpus(4).build(), // gpu partition: waits, nothing ever frees
        JobBuilder::new(2).cpus(1).build(), // gpu: g is closed to it
        JobBuilder::new(3).cpus(1).build(), // cpu partition
        JobBuilder::new(4).cpus(2).build(), // cpu partition, only c has room... none left
    ];
    let nodes = [busy("g", 4, 2), node("c", 2, 512)];
    let partitions = vec![
        PartitionView { nodes: vec![0], max_running_per_user: None },
        PartitionView { nodes: vec![1], max_running_per_user: None },
    ];
    let mut candidates = fifo(&jobs);
    candidates[2].partition = 1;
    candidates[3].partition = 1;
    let pass = schedule(&candidates, &nodes, &partitions, &HashMap::new(), Policy { backfill: true, now: NOW });
    assert_eq!(placed(&pass), vec![(3, vec!["c"])]);
    let firsts: Vec<Option<JobId>> = pass.blocked.iter().map(|b| b.as_ref().map(|b| b.job)).collect();
    assert_eq!(firsts, vec![Some(JobId(1)), Some(JobId(4))]);
}

#[test]
fn a_reservation_made_for_one_partition_holds_against_another_sharing_its_nodes() {
    let jobs = [JobBuilder::new(1).cpus(4).build(), JobBuilder::new(2).cpus(2).build()];
    let nodes = [freed_in("a", 4, 2, 100)];
    let partitions = vec![
        PartitionView { nodes: vec![0], max_running_per_user: None },
        PartitionView { nodes: vec![0], max_running_per_user: None },
    ];
    let mut candidates = limited(fifo(&jobs), &[Some(60), Some(500)]);
    candidates[1].partition = 1;
    let pass = schedule(&candidates, &nodes, &partitions, &HashMap::new(), Policy { backfill: true, now: NOW });
    assert_eq!(placed(&pass), vec![], "job 2 would still run when job 1 is due");
}

#[test]
fn a_users_running_jobs_in_a_partition_are_capped_and_others_go_ahead() {
    let jobs = [JobBuilder::new(1).build(), JobBuilder::new(2).build(), JobBuilder::new(3).uid(2000).build()];
    let nodes = [node("a", 8, 512)];
    let partitions = vec![PartitionView { nodes: vec![0], max_running_per_user: Some(2) }];
    let running = HashMap::from([((0, 1000), 1)]);
    let pass = schedule(&fifo(&jobs), &nodes, &partitions, &running, Policy { backfill: true, now: NOW });
    assert_eq!(placed(&pass), vec![(1, vec!["a"]), (3, vec!["a"])]);
    assert_eq!(pass.blocked[0], None, "a capped job blocks no one");
}

#[test]
fn alike_jobs_behind_one_that_cannot_start_are_settled_at_once() {
    // 10,000 jobs of one shape on full nodes: the pass must not try each on every node (it
    // would take seconds); it stops once nothing is free and the first blocked job is known.
    let jobs: Vec<Job> = (1..=10_000).map(|id| JobBuilder::new(id).cpus(2).build()).collect();
    let nodes: Vec<NodeView> = (0..1000).map(|i| freed_in(&format!("n{i}"), 2, 1, 60 + i)).collect();
    let candidates = limited(fifo(&jobs), &vec![Some(600); jobs.len()]);
    let pass = run(&candidates, &nodes);
    assert_eq!(pass.placements, vec![]);
    assert_eq!(pass.blocked[0].as_ref().and_then(|b| b.reservation.as_ref()).map(|r| r.start), Some(at(60)));
}

#[test]
fn freed_resources_let_the_next_job_start() {
    let jobs = [JobBuilder::new(1).cpus(2).build(), JobBuilder::new(2).cpus(2).build()];
    let idle = [node("a", 2, 512)];
    assert_eq!(placed(&run(&fifo(&jobs), &idle)), vec![(1, vec!["a"])]);
    // Job 1 ended and gave its 2 CPUs back: job 2 is next.
    assert_eq!(placed(&run(&fifo(&jobs[1..]), &idle)), vec![(2, vec!["a"])]);
}

#[test]
fn a_shortfall_names_the_closest_node_and_what_it_lacks() {
    let all = |n: &[NodeView]| (0..n.len()).collect::<Vec<_>>();
    let one = JobBuilder::new(1).cpus(4).mem(300).build();
    let nodes =
        [busy("a", 8, 1), NodeView { free: Resources::new(3, 250), ..node("b", 8, 512) }, node("small", 2, 512)];
    assert_eq!(shortfall(&one, &nodes, &all(&nodes)).as_deref(), Some("b has 3 of 4 CPUs and 250 of 300 MB free"));
    assert_eq!(shortfall(&one, &nodes, &[0]).as_deref(), Some("a has 1 of 4 CPUs free"), "only its partition's nodes");
    assert_eq!(shortfall(&one, &[node("c", 4, 512)], &[0]), None, "it fits");
    let two = JobBuilder::new(2).nodes(2).cpus(2).build();
    let nodes = [node("a", 2, 512), busy("b", 2, 1), busy("c", 2, 0)];
    assert_eq!(
        shortfall(&two, &nodes, &all(&nodes)).as_deref(),
        Some("it needs 2 nodes with room for it and 1 (a) now; the closest other: b has 1 of 2 CPUs free")
    );
    assert_eq!(
        shortfall(&JobBuilder::new(3).cpus(4).build(), &[busy("a", 2, 2)], &[0]).as_deref(),
        Some("no other node is large enough")
    );
}

/// An array's record starts as many tasks as its `starts` allow and room there is, in its place
/// in line; then it is the first blocked job, and lower jobs backfill only around it.
#[test]
fn an_array_record_starts_several_tasks_in_its_turn() {
    let array = JobBuilder::new(1).cpus(1).array("0-9").build();
    let after = JobBuilder::new(2).cpus(1).build();
    let jobs = [array, after];
    // (starts allowed, free CPUs on one node) -> placements of the record, and of job 2
    let table: [(u32, u32, usize, bool); 5] =
        [(10, 4, 4, false), (2, 4, 2, true), (0, 4, 0, true), (10, 0, 0, false), (3, 3, 3, false)];
    for (starts, free, records, other) in table {
        let mut candidates = fifo(&jobs);
        candidates[0].starts = starts;
        let pass = run(&candidates, &[busy("a", 4, free)]);
        let of = |id: u64| pass.placements.iter().filter(|p| p.job == JobId(id)).count();
        assert_eq!(of(1), records, "starts {starts}, {free} free");
        assert_eq!(of(2) == 1, other, "starts {starts}, {free} free: job 2");
        let blocked = pass.blocked[0].as_ref().map(|b| b.job);
        if starts > 0 && records < starts as usize {
            assert_eq!(blocked, Some(JobId(1)), "the record's next task is first in line");
        }
    }
}
