//! Persistence of the head's truth (nodes, jobs, the job id counter) behind one trait.
//!
//! The head keeps every pending and running job and every node in memory and writes each change
//! through a [`Store`]; before it acknowledges anything or tells a node anything, it makes the
//! writes so far durable with one [`Store::sync`] (group commit: one disk sync per loop turn, not
//! one per change). What a client asks to change (a submission, a kill) is written with
//! [`Store::save_now`] before the head takes it, so a refusal for a store error is the truth.
//! Implementations: [`embedded::EmbeddedStore`] (redb, on local disk, the default) and
//! [`mongo::MongoStore`] (MongoDB).
//! The same contract tests (`contract_tests`) run against each one.

pub mod embedded;
pub mod mongo;

use cm_common::job::{Job, JobFilter};
use cm_common::node::Node;
use cm_common::{JobId, NodeId};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database server does not answer; the operation may succeed once it is back.
    #[error("the job store is unreachable: {0}")]
    Unreachable(String),
    /// The database could not be opened, read or written.
    #[error("the job store failed: {0}")]
    Backend(String),
    /// A stored record could not be decoded (written by an incompatible release, or damaged).
    #[error("a stored record is unreadable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What the head persists. Writes are durable when they return `Ok`.
pub trait Store: Send {
    /// The highest id of any saved job, 0 if none. The head hands out the ids after it from
    /// memory, so ids are sequential and none that a saved job holds is handed out again, even
    /// across restarts, without a store write per id (one head per store).
    fn last_job_id(&self) -> StoreResult<JobId>;
    /// Writes jobs and nodes in one step. Reads see the write at once; it is durable once a later
    /// [`Store::sync`] returns `Ok` (a store may make it durable sooner).
    fn save(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()>;
    /// Makes every earlier `save` durable.
    fn sync(&mut self) -> StoreResult<()>;
    /// Makes every earlier `save` durable, then writes jobs and nodes durably, jobs first. On an
    /// error they are not kept for a later sync, so what a client is told failed does not happen
    /// later (only an error after the server wrote them, a lost reply, leaves them written).
    fn save_now(&mut self, jobs: &[&Job], nodes: &[&Node]) -> StoreResult<()>;
    /// One job, whatever its state.
    fn job(&self, id: JobId) -> StoreResult<Option<Job>>;
    /// Every job not yet settled (pending, running, or ended with a node still to report), by id.
    fn active_jobs(&self) -> StoreResult<Vec<Job>>;
    /// The `limit` most recent terminal jobs that `filter` matches, by id.
    fn finished_jobs(&self, filter: &JobFilter, limit: usize) -> StoreResult<Vec<Job>>;
    /// Every node ever registered (and not removed), by id.
    fn nodes(&self) -> StoreResult<Vec<Node>>;
    /// Forgets node `id` for good, durably before it returns (`cmctl remove`).
    fn remove_node(&mut self, id: &NodeId) -> StoreResult<()>;
}

/// The contract every store must keep; each implementation's tests call [`contract_tests::run_all`].
#[cfg(test)]
pub mod contract_tests {
    use super::*;
    use cm_common::job::{JobNode, JobSpec, JobState, NodeEnd, NodeEndCause, NodeUsage, UserIdentity};
    use cm_common::node::{Allocation, NodeHealth, Role};
    use cm_common::{NodeId, Resources, Timestamp};
    use std::collections::BTreeSet;

    pub fn job(id: JobId) -> Job {
        let spec = JobSpec {
            name: format!("job{id}"),
            user: UserIdentity { uid: 1000, name: "alice".into() },
            command: "echo hi".into(),
            workdir: "/home/alice".into(),
            env: [("PATH".to_string(), "/bin".to_string())].into(),
            nodes: 2,
            procs_per_node: 2,
            per_node: Resources::new(1, 100),
            time_limit_secs: Some(60),
            stdout: None,
            stderr: Some("err-%j".into()),
            requeue: true,
            max_user_processes: Some(4096),
            partition: "batch".into(),
            nice: 5,
            priority: Some(7),
            mpi: cm_common::job::Mpi::None,
            array: Some(cm_common::array::ArraySpec::parse("1-9:2%3", 100).expect("array")),
            dependency: cm_common::dependency::parse("afterany:1").expect("dependency"),
            hold: true,
        };
        Job::new(id, spec, Timestamp(1000 + id.0), format!("token-{id}"))
    }

    pub fn node(id: &str) -> Node {
        Node {
            id: NodeId::new(id),
            role: Role::Compute,
            address: format!("tcp://{id}:5002"),
            capacity: Resources::new(4, 1024),
            allocations: vec![Allocation { job: JobId(1), resources: Resources::new(1, 100) }],
            health: NodeHealth::Up,
            only_uid: None,
            containment: String::new(),
            drain: None,
            registered_at: Timestamp(5),
            last_heartbeat: Timestamp(6),
        }
    }

    /// Runs every contract case against stores made by `open` (called again to "restart").
    pub fn run_all<S: Store>(mut open: impl FnMut() -> S) {
        ids_are_sequential_and_survive_reopen(&mut open);
        jobs_round_trip_and_move_between_active_and_finished(&mut open);
        nodes_round_trip_and_update_in_place(&mut open);
        reads_see_saves_before_the_sync(&mut open);
        save_now_is_durable_with_what_came_before(&mut open);
        a_large_turn_is_written_whole(&mut open);
        finished_jobs_are_filtered_before_the_limit(&mut open);
        a_removed_node_is_gone_for_good(&mut open);
    }

    fn a_removed_node_is_gone_for_good<S: Store>(open: &mut impl FnMut() -> S) {
        let mut store = open();
        store.save(&[], &[&node("gone"), &node("kept")]).expect("save");
        store.remove_node(&NodeId::new("gone")).expect("remove");
        store.remove_node(&NodeId::new("never-was")).expect("removing an unknown node is no error");
        drop(store);
        let ids: Vec<String> = open().nodes().expect("nodes").iter().map(|n| n.id.to_string()).collect();
        assert!(!ids.contains(&"gone".to_string()) && ids.contains(&"kept".to_string()), "{ids:?}");
    }

    fn finished_jobs_are_filtered_before_the_limit<S: Store>(open: &mut impl FnMut() -> S) {
        let mut store = open();
        let ended = |id: u64, uid: u32, ended_at: u64, failed: bool| {
            let mut job = job(JobId(id));
            job.spec.user.uid = uid;
            job.state = if failed {
                JobState::Failed { started_at: Timestamp(1), ended_at: Timestamp(ended_at), reason: "x".into() }
            } else {
                JobState::Completed { started_at: Timestamp(1), ended_at: Timestamp(ended_at) }
            };
            job
        };
        let mut jobs = [
            ended(501, 7001, 10_000, false),
            ended(502, 7002, 20_000, true),
            ended(503, 7001, 30_000, true),
            ended(504, 7001, 40_000, false),
        ];
        // What a node measured is kept with the job.
        let usage = NodeUsage { cpu_time_ms: Some(1234), peak_memory_bytes: Some(5 << 30), oom_kills: 2 };
        jobs[2].nodes = vec![JobNode {
            node: cm_common::NodeId::new("n1"),
            started_at: Some(Timestamp(2)),
            end: Some(NodeEnd {
                ended_at: Timestamp(3),
                cause: NodeEndCause::Exited,
                replicas: vec![],
                usage: Some(usage),
            }),
        }];
        jobs[0].nodes = vec![JobNode { node: cm_common::NodeId::new("n2"), started_at: None, end: None }];
        store.save(&jobs[..2].iter().collect::<Vec<_>>(), &[]).expect("save");
        store.sync().expect("sync");
        // Two written, two only kept: both kinds are filtered alike.
        store.save(&jobs[2..].iter().collect::<Vec<_>>(), &[]).expect("save");
        let ids = |filter: JobFilter, limit: usize| -> Vec<u64> {
            store.finished_jobs(&filter, limit).expect("finished").iter().map(|j| j.id.0).collect()
        };
        let users = vec![7001, 7002];
        assert_eq!(ids(JobFilter { users: vec![7001], ..Default::default() }, 10), [501, 503, 504]);
        assert_eq!(ids(JobFilter { users: vec![7001], ..Default::default() }, 2), [503, 504], "the most recent");
        let failed = JobFilter { users: users.clone(), states: vec!["Failed".into()], ..Default::default() };
        assert_eq!(ids(failed, 1), [503], "filtered before the limit");
        let on = |nodes: &[&str]| JobFilter {
            nodes: nodes.iter().map(|n| cm_common::NodeId::new(*n)).collect(),
            ..Default::default()
        };
        assert_eq!(ids(on(&["n1"]), 10), [503], "by node, kept");
        assert_eq!(ids(on(&["n2", "n1"]), 10), [501, 503], "by node, written and kept");
        let window = JobFilter {
            users: users.clone(),
            since: Some(Timestamp(20_000)),
            until: Some(Timestamp(1504)),
            ..Default::default()
        };
        assert_eq!(ids(window, 10), [502, 503], "ended from 20 s on, submitted before 1504");
        assert_eq!(ids(JobFilter { jobs: vec![JobId(502), JobId(504)], ..Default::default() }, 10), [502, 504]);
        // Each of these jobs is an array of its own.
        assert_eq!(ids(JobFilter { arrays: vec![JobId(503), JobId(501)], ..Default::default() }, 10), [501, 503]);
        store.sync().expect("sync");
        drop(store);
        assert_eq!(open().job(JobId(503)).expect("read").as_ref(), Some(&jobs[2]), "usage survives a restart");
    }

    fn ids_are_sequential_and_survive_reopen<S: Store>(open: &mut impl FnMut() -> S) {
        {
            let mut store = open();
            assert_eq!(store.last_job_id().expect("last id"), JobId(0), "a new store has no jobs");
            store.save(&[&job(JobId(2)), &job(JobId(1))], &[]).expect("save");
            assert_eq!(store.last_job_id().expect("last id"), JobId(2), "a save is read back before any sync");
            store.sync().expect("sync");
        }
        let store = open();
        assert_eq!(store.last_job_id().expect("last id"), JobId(2), "the last id survives a restart");
    }

    fn jobs_round_trip_and_move_between_active_and_finished<S: Store>(open: &mut impl FnMut() -> S) {
        let mut store = open();
        let mut a = job(JobId(101));
        let b = job(JobId(102));
        store.save(&[&a, &b], &[]).expect("save");
        assert_eq!(store.job(JobId(101)).expect("read"), Some(a.clone()));
        assert_eq!(store.job(JobId(999)).expect("read"), None);
        let active: Vec<JobId> = store.active_jobs().expect("active").iter().map(|j| j.id).collect();
        assert!(active.windows(2).all(|w| w[0] < w[1]), "active jobs come in id order");
        assert!(active.contains(&JobId(101)) && active.contains(&JobId(102)));

        a.state = JobState::Completed { started_at: Timestamp(1), ended_at: Timestamp(2) };
        store.save(&[&a], &[]).expect("save");
        store.sync().expect("sync");
        drop(store);
        let store = open();
        assert!(!store.active_jobs().expect("active").iter().any(|j| j.id == a.id), "a finished job is not active");
        let finished = store.finished_jobs(&JobFilter::default(), 10).expect("finished");
        assert_eq!(finished.last(), Some(&a));
        assert_eq!(store.job(a.id).expect("read"), Some(a));
        assert!(store.finished_jobs(&JobFilter::default(), 0).expect("finished").is_empty());
    }

    fn nodes_round_trip_and_update_in_place<S: Store>(open: &mut impl FnMut() -> S) {
        let mut store = open();
        let mut n1 = node("n1");
        let n2 = node("n2");
        store.save(&[], &[&n2, &n1]).expect("save");
        n1.health = NodeHealth::Down { since: Timestamp(9), reason: "gone".into() };
        n1.allocations.clear();
        store.save(&[], &[&n1]).expect("save");
        store.sync().expect("sync");
        drop(store);
        let nodes = open().nodes().expect("nodes");
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2"]);
        assert_eq!(nodes[0], n1);
    }

    fn reads_see_saves_before_the_sync<S: Store>(open: &mut impl FnMut() -> S) {
        let mut store = open();
        let mut done = job(JobId(201));
        store.save(&[&done, &job(JobId(202))], &[]).expect("save");
        store.sync().expect("sync");
        done.state = JobState::Failed { started_at: Timestamp(1), ended_at: Timestamp(3), reason: "exit 1".into() };
        let mut n3 = node("n3");
        n3.allocations.clear();
        store.save(&[&done, &job(JobId(203))], &[&n3]).expect("save");
        let active: Vec<JobId> = store.active_jobs().expect("active").iter().map(|j| j.id).collect();
        assert!(!active.contains(&JobId(201)), "settled before the sync: {active:?}");
        assert!(active.contains(&JobId(202)) && active.contains(&JobId(203)), "{active:?}");
        assert_eq!(store.finished_jobs(&JobFilter::default(), 1).expect("finished"), vec![done.clone()]);
        assert_eq!(store.job(JobId(201)).expect("read"), Some(done.clone()));
        assert!(store.nodes().expect("nodes").contains(&n3));
        assert_eq!(store.last_job_id().expect("last id"), JobId(203));
        store.sync().expect("sync");
        drop(store);
        let store = open();
        assert_eq!(store.finished_jobs(&JobFilter::default(), 1).expect("finished"), vec![done]);
        assert!(store.nodes().expect("nodes").contains(&n3));
    }

    fn save_now_is_durable_with_what_came_before<S: Store>(open: &mut impl FnMut() -> S) {
        let mut store = open();
        store.save(&[&job(JobId(301))], &[&node("n4")]).expect("save");
        store.save_now(&[&job(JobId(302))], &[&node("n5")]).expect("save now");
        drop(store);
        let store = open();
        assert_eq!(store.job(JobId(301)).expect("read"), Some(job(JobId(301))));
        assert_eq!(store.job(JobId(302)).expect("read"), Some(job(JobId(302))));
        let ids: Vec<String> = store.nodes().expect("nodes").iter().map(|n| n.id.to_string()).collect();
        assert!(ids.contains(&"n4".to_string()) && ids.contains(&"n5".to_string()), "{ids:?}");
    }

    /// More jobs than one write batch holds, and more bytes: a turn that places or ends many.
    fn a_large_turn_is_written_whole<S: Store>(open: &mut impl FnMut() -> S) {
        let mut store = open();
        let many: Vec<Job> = (1000..3500).map(|id| job(JobId(id))).collect();
        let big: Vec<Job> = (4000..4020)
            .map(|id| {
                let mut job = job(JobId(id));
                job.spec.env.insert("BIG".into(), "x".repeat(1 << 20));
                job
            })
            .collect();
        store.save(&many.iter().chain(&big).collect::<Vec<_>>(), &[]).expect("save");
        store.sync().expect("sync");
        drop(store);
        let store = open();
        let active: BTreeSet<JobId> = store.active_jobs().expect("active").iter().map(|j| j.id).collect();
        assert!(many.iter().chain(&big).all(|j| active.contains(&j.id)), "{} active", active.len());
        assert_eq!(store.job(JobId(4019)).expect("read"), big.last().cloned());
        assert_eq!(store.last_job_id().expect("last id"), JobId(4019));
    }
}
