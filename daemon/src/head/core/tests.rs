//! The head's state machine, driven through every path with a recording comm and a store
//! whose sync can be made to fail.

use super::*;
use crate::head::comm::RecordingComm;
use crate::store::embedded::EmbeddedStore;
use crate::testing::{JobBuilder, NodeBuilder};
use cm_common::job::{ExitStatus, JobFilter, ReplicaExit};
use cm_common::node::NodeStatus;
use cm_common::protocol::{
    AdministerNode, Fault, InjectFault, JobChange, LeaveCluster, NodeAction, NodeAdministered, ReportFence, UpdateJob,
};
use cm_common::Resources;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const ALICE: u32 = 1000;
const BOB: u32 = 2000;

/// A head with 1 s heartbeats, 5 s timeout, no operators, nothing private or anonymous.
fn settings() -> HeadSettings {
    HeadSettings {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(5),
        operators: vec![],
        private_data: false,
        anonymous_listing: false,
        limits: JobLimits::default(),
        scheduling: SchedulingSettings::default(),
        partitions: vec![Partition::everything()],
        workdirs: Default::default(),
    }
}

/// A compute request as the node it names sends it (sealed with the cluster key).
fn from_node(core: &mut HeadCore, request: ComputeRequest, now: Timestamp) -> Reply<ComputeResponse> {
    let node = match &request {
        ComputeRequest::RegisterNode(r) => r.node.clone(),
        ComputeRequest::Heartbeat(h) => h.node.clone(),
        ComputeRequest::LeaveCluster(l) => l.node.clone(),
        ComputeRequest::ReportJobs(r) => match r.reports.first() {
            Some(JobReport::Start(s)) => s.node.clone(),
            Some(JobReport::End(e)) => e.node.clone(),
            Some(JobReport::Fence(f)) => f.node.clone(),
            None => NodeId::new("c1"),
        },
    };
    core.handle_compute(&node, request, now)
}

struct Fixture {
    core: HeadCore,
    sent: RecordingComm,
    /// Makes the store's syncs fail while set.
    failing_sync: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

/// The embedded store, with syncs that fail on demand.
struct FlakyStore {
    inner: EmbeddedStore,
    failing_sync: Arc<AtomicBool>,
}

impl Store for FlakyStore {
    fn last_job_id(&self) -> Result<JobId, StoreError> {
        self.inner.last_job_id()
    }
    fn save(&mut self, jobs: &[&Job], nodes: &[&Node]) -> Result<(), StoreError> {
        self.inner.save(jobs, nodes)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        if self.failing_sync.load(Ordering::Relaxed) {
            return Err(StoreError::Backend("disk sync failed (test)".into()));
        }
        self.inner.sync()
    }
    fn save_now(&mut self, jobs: &[&Job], nodes: &[&Node]) -> Result<(), StoreError> {
        if self.failing_sync.load(Ordering::Relaxed) {
            return Err(StoreError::Backend("disk sync failed (test)".into()));
        }
        self.inner.save_now(jobs, nodes)
    }
    fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.job(id)
    }
    fn active_jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.inner.active_jobs()
    }
    fn finished_jobs(&self, filter: &JobFilter, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.inner.finished_jobs(filter, limit)
    }
    fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        self.inner.nodes()
    }
    fn remove_node(&mut self, id: &NodeId) -> Result<(), StoreError> {
        self.inner.remove_node(id)
    }
}

impl Fixture {
    /// A head with compute nodes `ids` (2 CPUs, 512 MB each) registered.
    fn new(ids: &[&str]) -> Fixture {
        Fixture::with(settings(), ids)
    }

    /// As `new`, with `settings`.
    fn with(settings: HeadSettings, ids: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let inner = EmbeddedStore::open(&dir.path().join("cm.redb")).expect("store");
        let failing_sync = Arc::new(AtomicBool::new(false));
        let store = FlakyStore { inner, failing_sync: failing_sync.clone() };
        let sent = RecordingComm::default();
        let me = Node { role: Role::Head, ..NodeBuilder::new("head").build() };
        let mut core =
            HeadCore::open(Box::new(store), Box::new(sent.clone()), me, settings, Timestamp(0)).expect("open");
        for id in ids {
            let node = NodeBuilder::new(id).build();
            let register = RegisterNode {
                node: node.id.clone(),
                address: node.address,
                capacity: node.capacity,
                only_uid: None,
                running: vec![],
                containment: String::new(),
            };
            from_node(&mut core, ComputeRequest::RegisterNode(register), Timestamp(0)).expect("register");
        }
        Fixture { core, sent, failing_sync, _dir: dir }
    }

    fn submit(&mut self, builder: JobBuilder, token: &str) -> Reply<ClientResponse> {
        self.submit_as(ALICE, builder, token)
    }

    /// Submits as `uid`, a job that runs as `uid`.
    fn submit_as(&mut self, uid: u32, builder: JobBuilder, token: &str) -> Reply<ClientResponse> {
        let req = AssignJobId { spec: builder.uid(uid).spec(), token: token.into() };
        self.core.handle_client(uid, ClientRequest::AssignJobId(req), Timestamp(10))
    }

    fn submit_ok(&mut self, builder: JobBuilder, token: &str) -> JobId {
        match self.submit(builder, token) {
            Ok(ClientResponse::JobAccepted(a)) => a.id,
            other => panic!("submit failed: {other:?}"),
        }
    }

    /// What the head has sent to nodes, after the loop's end-of-turn sync.
    fn take_sent(&mut self) -> Vec<(String, String)> {
        self.core.sync().expect("sync");
        let mut sent = self.sent.sent.lock().expect("lock");
        sent.drain(..)
            .map(|(node, req)| {
                let what = match req {
                    NodeRequest::StartJob(s) => format!("start {}", s.job.id),
                    NodeRequest::FreeResources(f) => format!("free {}", f.job),
                    other => format!("{other:?}"),
                };
                (node.to_string(), what)
            })
            .collect()
    }

    fn end(&mut self, job: JobId, node: &str, codes: &[(u64, i32)], cause: NodeEndCause) {
        let end = NodeEnd {
            ended_at: Timestamp(50),
            cause,
            replicas: codes
                .iter()
                .map(|&(rank, code)| ReplicaExit { rank, status: ExitStatus::Exited { code } })
                .collect(),
            usage: None,
        };
        let run = self.core.job(job).map_or(0, |j| j.run);
        let report = ReportJobEnd { node: NodeId::new(node), job, run, end, started_at: None };
        let reports = ReportJobs { reports: vec![JobReport::End(report)] };
        from_node(&mut self.core, ComputeRequest::ReportJobs(reports), Timestamp(50)).expect("report");
    }

    fn state(&self, id: JobId) -> JobState {
        let reply = self.core.stored_job(id);
        reply.state
    }

    fn free_cpus(&self, node: &str) -> u32 {
        self.core.node(&NodeId::new(node)).expect("node").free().cpus
    }
}

impl HeadCore {
    fn stored_node(&self, id: &str) -> Node {
        self.store.nodes().expect("nodes").into_iter().find(|n| n.id.as_str() == id).expect("stored node")
    }

    fn stored_job(&self, id: JobId) -> Job {
        self.jobs.get(&id).cloned().or_else(|| self.store.job(id).ok().flatten()).expect("job exists")
    }
}

fn pair(node: &str, what: &str) -> (String, String) {
    (node.to_string(), what.to_string())
}

#[test]
fn a_submitted_job_is_placed_and_started_on_every_node() {
    let mut f = Fixture::new(&["a", "b", "c"]);
    let id = f.submit_ok(JobBuilder::new(0).nodes(2), "t1");
    assert_eq!(id, JobId(1));
    assert!(f.take_sent().is_empty(), "nothing is sent before the scheduling pass");
    f.core.schedule_if_needed(Timestamp(11));
    assert_eq!(f.take_sent(), vec![pair("a", "start 1"), pair("b", "start 1")]);
    assert_eq!(f.state(id), JobState::Running { started_at: Timestamp(11) });
    assert_eq!((f.free_cpus("a"), f.free_cpus("c")), (1, 2));
}

#[test]
fn a_limited_listing_shows_running_jobs_then_the_oldest_pending_and_counts_the_rest() {
    let mut f = Fixture::new(&["a"]); // 2 CPUs: two 1-CPU jobs run, the rest wait
    let ids: Vec<JobId> = (0..6).map(|i| f.submit_ok(JobBuilder::new(0).cpus(1), &format!("t{i}"))).collect();
    f.core.schedule_if_needed(Timestamp(11));
    let list = |f: &mut Fixture, limit| match f.core.handle_client(
        ALICE,
        ClientRequest::FetchJobs(FetchJobs { include_finished: false, limit, filter: Default::default() }),
        Timestamp(20),
    ) {
        Ok(ClientResponse::Jobs(reply)) => (reply.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), reply.left_out),
        other => panic!("{other:?}"),
    };
    assert_eq!(list(&mut f, Some(3)), (ids[..3].to_vec(), 3));
    assert_eq!(list(&mut f, Some(1)), (vec![ids[0]], 5));
    assert_eq!(list(&mut f, None), (ids.clone(), 0));
    assert_eq!(list(&mut f, Some(0)), (vec![], 6));
}

#[test]
fn listings_leave_out_the_environment_and_get_job_keeps_it() {
    let mut f = Fixture::new(&["a"]);
    let mut builder = JobBuilder::new(0);
    builder = builder.env("SECRET_LOOKING", "value");
    let id = f.submit_ok(builder, "t");
    let listed = match f.core.handle_client(
        ALICE,
        ClientRequest::FetchJobs(FetchJobs { include_finished: true, limit: None, filter: Default::default() }),
        Timestamp(20),
    ) {
        Ok(ClientResponse::Jobs(reply)) => reply.jobs,
        other => panic!("{other:?}"),
    };
    assert_eq!(listed.len(), 1);
    assert!(listed[0].spec.env.is_empty());
    match f.core.handle_client(ALICE, ClientRequest::GetJob(GetJob { id }), Timestamp(20)) {
        Ok(ClientResponse::Job(reply)) => {
            assert_eq!(reply.job.spec.env.get("SECRET_LOOKING").map(String::as_str), Some("value"))
        }
        other => panic!("{other:?}"),
    }
}

/// The job alice submitted, as `uid` gets it, or the refusal.
fn get_as(f: &mut Fixture, uid: u32, id: JobId) -> Reply<Job> {
    match f.core.handle_client(uid, ClientRequest::GetJob(GetJob { id }), Timestamp(20)) {
        Ok(ClientResponse::Job(reply)) => Ok(reply.job),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    }
}

fn listed_for(f: &mut Fixture, identity: &Identity) -> Reply<Vec<JobId>> {
    let request = HeadRequest::Client(ClientRequest::FetchJobs(FetchJobs {
        include_finished: true,
        limit: None,
        filter: Default::default(),
    }));
    match f.core.handle(identity, request, Timestamp(20)) {
        HeadReply::Client(Ok(ClientResponse::Jobs(reply))) => Ok(reply.jobs.iter().map(|j| j.id).collect()),
        HeadReply::Client(Err(e)) => Err(e),
        HeadReply::Client(Ok(other)) => panic!("{other:?}"),
        HeadReply::Compute(other) => panic!("{other:?}"),
        HeadReply::Later(..) => panic!("a listing is answered at once"),
    }
}

#[test]
fn only_the_owner_root_and_operators_see_a_jobs_environment_or_kill_it() {
    let mut f = Fixture::new(&["a"]);
    let id = f.submit_ok(JobBuilder::new(0).env("API_TOKEN", "s3cret"), "t");
    assert!(get_as(&mut f, ALICE, id).expect("owner").spec.env.contains_key("API_TOKEN"));
    assert!(get_as(&mut f, 0, id).expect("root").spec.env.contains_key("API_TOKEN"));
    let bobs_view = get_as(&mut f, BOB, id).expect("bob sees the job");
    assert!(bobs_view.spec.env.is_empty(), "but not its environment");
    let err = f.core.handle_client(BOB, ClientRequest::KillJob(KillJob { id }), Timestamp(20)).unwrap_err();
    assert_eq!(err.code, ErrorCode::PermissionDenied);

    f.core.settings.operators = vec![BOB.to_string()];
    assert!(get_as(&mut f, BOB, id).expect("operator").spec.env.contains_key("API_TOKEN"));
    f.core.handle_client(BOB, ClientRequest::KillJob(KillJob { id }), Timestamp(20)).expect("an operator kills");
    assert!(matches!(f.state(id), JobState::Killed { by_uid: BOB, .. }));
}

#[test]
fn private_data_hides_other_users_jobs_from_everyone_but_operators() {
    let mut f = Fixture::new(&["a"]);
    let alices = f.submit_ok(JobBuilder::new(0), "a");
    let req = AssignJobId { spec: JobBuilder::new(0).uid(BOB).spec(), token: "b".into() };
    f.core.handle_client(BOB, ClientRequest::AssignJobId(req), Timestamp(10)).expect("bob submits");
    f.core.settings.private_data = true;
    assert_eq!(listed_for(&mut f, &Identity::User(ALICE)), Ok(vec![alices]));
    assert_eq!(listed_for(&mut f, &Identity::User(0)).map(|ids| ids.len()), Ok(2));
    assert_eq!(get_as(&mut f, BOB, alices).unwrap_err().code, ErrorCode::NotFound);
}

#[test]
fn anonymous_requests_get_listings_only_where_allowed_and_daemons_no_user_requests() {
    let mut f = Fixture::new(&["a"]);
    f.submit_ok(JobBuilder::new(0), "a");
    assert_eq!(listed_for(&mut f, &Identity::Anonymous).unwrap_err().code, ErrorCode::Unauthenticated);
    f.core.settings.anonymous_listing = true;
    assert_eq!(listed_for(&mut f, &Identity::Anonymous).map(|ids| ids.len()), Ok(1));
    let kill = HeadRequest::Client(ClientRequest::KillJob(KillJob { id: JobId(1) }));
    assert!(matches!(
        f.core.handle(&Identity::Anonymous, kill.clone(), Timestamp(20)),
        HeadReply::Client(Err(ErrorReply { code: ErrorCode::Unauthenticated, .. }))
    ));
    assert!(matches!(
        f.core.handle(&Identity::Daemon("a".into()), kill, Timestamp(20)),
        HeadReply::Client(Err(ErrorReply { code: ErrorCode::PermissionDenied, .. }))
    ));
    assert_eq!(listed_for(&mut f, &Identity::User(ALICE)).map(|ids| ids.len()), Ok(1));
}

#[test]
fn node_requests_need_a_daemon_speaking_for_its_own_node_and_a_live_node_keeps_its_host() {
    let mut f = Fixture::new(&["a"]);
    let beat =
        || HeadRequest::Compute(ComputeRequest::Heartbeat(Heartbeat { node: NodeId::new("a"), running: vec![] }));
    for user in [Identity::User(0), Identity::Anonymous] {
        assert!(matches!(
            f.core.handle(&user, beat(), Timestamp(1)),
            HeadReply::Compute(Err(ErrorReply { code: ErrorCode::Unauthenticated, .. }))
        ));
    }
    assert!(matches!(
        f.core.handle(&Identity::Daemon("b".into()), beat(), Timestamp(1)),
        HeadReply::Compute(Err(ErrorReply { code: ErrorCode::PermissionDenied, .. }))
    ));
    assert!(matches!(f.core.handle(&Identity::Daemon("a".into()), beat(), Timestamp(1)), HeadReply::Compute(Ok(_))));
    let address = f.core.node(&NodeId::new("a")).expect("a").address.clone();
    let register = |address: &str| RegisterNode {
        node: NodeId::new("a"),
        address: address.into(),
        capacity: Resources::new(2, 512),
        only_uid: None,
        running: vec![],
        containment: String::new(),
    };
    let moved = f.core.handle_compute(
        &NodeId::new("a"),
        ComputeRequest::RegisterNode(register("tcp://elsewhere:5002")),
        Timestamp(2),
    );
    assert_eq!(moved.unwrap_err().code, ErrorCode::PermissionDenied);
    assert_eq!(f.core.node(&NodeId::new("a")).expect("a").address, address, "a live node keeps its address");
    // The same host on another port: a restarted daemon, which may rejoin at once.
    let same_host = address.rsplit_once(':').map(|(host, _)| format!("{host}:6000")).expect("host:port");
    f.core
        .handle_compute(&NodeId::new("a"), ComputeRequest::RegisterNode(register(&same_host)), Timestamp(3))
        .expect("rejoin");
    // Once it has gone Down, a daemon elsewhere may take the id.
    f.core.tick(Timestamp(10_000));
    assert!(!f.core.node(&NodeId::new("a")).expect("a").is_up());
    f.core
        .handle_compute(
            &NodeId::new("a"),
            ComputeRequest::RegisterNode(register("tcp://elsewhere:5002")),
            Timestamp(10_001),
        )
        .expect("take over a dead node");
}

#[test]
fn jobs_over_a_size_limit_are_refused_naming_the_limit() {
    let mut f = Fixture::new(&["a"]);
    f.core.settings.limits = JobLimits {
        max_command_bytes: 10,
        max_env_bytes: 20,
        max_name_bytes: 8,
        max_path_bytes: 30,
        ..JobLimits::default()
    };
    let refused = |f: &mut Fixture, edit: &dyn Fn(&mut JobSpec)| {
        let mut spec = JobBuilder::new(0).spec();
        edit(&mut spec);
        let req = AssignJobId { spec, token: "t".into() };
        let err = f.core.handle_client(ALICE, ClientRequest::AssignJobId(req), Timestamp(10)).unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid, "{}", err.message);
        err.message
    };
    assert!(refused(&mut f, &|s| s.command = "x".repeat(11)).contains("limits.max_command_bytes"));
    assert!(refused(&mut f, &|s| s.name = "n".repeat(9)).contains("limits.max_name_bytes"));
    assert!(refused(&mut f, &|s| {
        s.env.insert("K".into(), "v".repeat(20));
    })
    .contains("limits.max_env_bytes"));
    assert!(refused(&mut f, &|s| s.stdout = Some(format!("/{}", "o".repeat(30)))).contains("limits.max_path_bytes"));
    assert!(refused(&mut f, &|s| s.name = "a\u{202e}b".into()).contains("text-direction"));
    assert!(refused(&mut f, &|s| s.procs_per_node = 129).contains("limits.max_procs_per_cpu"));
    assert_eq!(f.submit_ok(JobBuilder::new(0).procs(128), "ok"), JobId(1), "64 per CPU of a 2-CPU node");
}

#[test]
fn the_queue_takes_no_more_than_its_limits_in_all_and_per_user() {
    let mut f = Fixture::new(&["a"]);
    f.core.settings.limits = JobLimits { max_jobs: 3, max_jobs_per_user: 2, ..JobLimits::default() };
    f.submit_ok(JobBuilder::new(0), "1");
    f.submit_ok(JobBuilder::new(0), "2");
    let err = f.submit(JobBuilder::new(0), "3").unwrap_err();
    assert!(err.message.contains("limits.max_jobs_per_user"), "{}", err.message);
    let bobs = |token: &str| AssignJobId { spec: JobBuilder::new(0).uid(BOB).spec(), token: token.into() };
    f.core.handle_client(BOB, ClientRequest::AssignJobId(bobs("b1")), Timestamp(10)).expect("bob has room");
    let err = f.core.handle_client(BOB, ClientRequest::AssignJobId(bobs("b2")), Timestamp(10)).unwrap_err();
    assert!(err.message.contains("limits.max_jobs)"), "{}", err.message);
    // An ended job makes room again.
    f.core.handle_client(ALICE, ClientRequest::KillJob(KillJob { id: JobId(1) }), Timestamp(11)).expect("kill");
    f.submit_ok(JobBuilder::new(0), "4");
    f.core.schedule_if_needed(Timestamp(12));
    f.end(JobId(2), "a", &[(0, 0)], NodeEndCause::Exited);
    assert_eq!(f.core.queued, queued::Queued::of(f.core.jobs.values()), "the counts follow every change");
    assert_eq!((f.core.queued.all, f.core.queued.of_user(ALICE)), (2, 1));
}

#[test]
fn a_job_only_a_down_node_could_hold_is_refused_and_one_already_queued_blocks_nobody() {
    let mut f = Fixture::new(&["small", "big"]);
    let beat = |f: &mut Fixture, node: &str, at| {
        let beat = Heartbeat { node: NodeId::new(node), running: vec![] };
        from_node(&mut f.core, ComputeRequest::Heartbeat(beat), Timestamp(at)).expect("beat");
    };
    // A 2-CPU "big" was registered; make it bigger, then let it go silent.
    let register = RegisterNode {
        node: NodeId::new("big"),
        address: "tcp://big:5002".into(),
        capacity: Resources::new(8, 4096),
        only_uid: None,
        running: vec![],
        containment: String::new(),
    };
    from_node(&mut f.core, ComputeRequest::RegisterNode(register), Timestamp(1)).expect("register");
    let waiting = f.submit_ok(JobBuilder::new(0).cpus(8), "needs-big");
    beat(&mut f, "small", 6_000);
    f.core.tick(Timestamp(6_001));
    assert!(!f.core.node(&NodeId::new("big")).expect("big").is_up());
    let err = f.submit(JobBuilder::new(0).cpus(8), "after").unwrap_err();
    assert!(err.message.contains("1 compute node(s) up (1 down)"), "{}", err.message);
    let small = f.submit_ok(JobBuilder::new(0).cpus(1), "small");
    f.core.schedule_if_needed(Timestamp(6_002));
    assert_eq!(f.state(waiting), JobState::Pending);
    assert!(matches!(f.state(small), JobState::Running { .. }), "it passed the job no live node could hold");
}

#[test]
fn a_retried_submit_gets_the_same_id_and_ids_are_sequential() {
    let mut f = Fixture::new(&["a"]);
    let first = f.submit_ok(JobBuilder::new(0), "same");
    assert_eq!(f.submit_ok(JobBuilder::new(0), "same"), first);
    assert_eq!(f.submit_ok(JobBuilder::new(0), "other"), JobId(first.0 + 1));
}

#[test]
fn a_submit_retried_after_its_job_finished_is_not_run_again() {
    let mut f = Fixture::new(&["a"]);
    let id = f.submit_ok(JobBuilder::new(0), "lost-reply");
    f.core.schedule_if_needed(Timestamp(11));
    f.end(id, "a", &[(0, 0)], NodeEndCause::Exited);
    assert!(matches!(f.state(id), JobState::Completed { .. }));
    assert_eq!(f.submit_ok(JobBuilder::new(0), "lost-reply"), id);
}

#[test]
fn impossible_or_forged_submissions_are_refused_and_store_nothing() {
    let mut f = Fixture::new(&["a", "b"]);
    let err = f.submit(JobBuilder::new(0).nodes(3), "t").unwrap_err();
    assert_eq!(err.code, ErrorCode::Invalid);
    assert!(err.message.contains("3 node(s)") && err.message.contains("2 compute node(s)"), "{}", err.message);
    let err = f.submit(JobBuilder::new(0).cpus(4), "t").unwrap_err();
    assert!(err.message.contains("only 0 that large"), "{}", err.message);
    let forged = AssignJobId { spec: JobBuilder::new(0).uid(0).spec(), token: "x".into() };
    let err = f.core.handle_client(ALICE, ClientRequest::AssignJobId(forged), Timestamp(1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::PermissionDenied);
    assert_eq!(f.submit_ok(JobBuilder::new(0), "ok"), JobId(1), "refusals used no ids");
}

#[test]
fn a_job_shows_the_account_name_of_its_uid_not_the_name_the_tool_sent() {
    let mut f = Fixture::new(&["a"]);
    let mut spec = JobBuilder::new(0).uid(0).spec();
    spec.user.name = "mallory".into();
    let root = 0;
    let id = match f.core.handle_client(
        root,
        ClientRequest::AssignJobId(AssignJobId { spec, token: "t".into() }),
        Timestamp(1),
    ) {
        Ok(ClientResponse::JobAccepted(accepted)) => accepted.id,
        other => panic!("submit failed: {other:?}"),
    };
    assert_eq!(f.core.job(id).expect("job").spec.user.name, "root");
}

#[test]
fn a_job_completes_when_every_node_reports_and_its_resources_return() {
    let mut f = Fixture::new(&["a", "b"]);
    let id = f.submit_ok(JobBuilder::new(0).nodes(2).procs(2), "t");
    f.core.schedule_if_needed(Timestamp(11));
    f.end(id, "a", &[(0, 0), (1, 0)], NodeEndCause::Exited);
    assert!(matches!(f.state(id), JobState::Running { .. }), "one node still runs it");
    assert_eq!((f.free_cpus("a"), f.free_cpus("b")), (2, 1));
    f.end(id, "b", &[(2, 0), (3, 0)], NodeEndCause::Exited);
    assert_eq!(f.state(id), JobState::Completed { started_at: Timestamp(11), ended_at: Timestamp(50) });
    assert_eq!(f.free_cpus("b"), 2);
    // A duplicate report changes nothing.
    f.end(id, "b", &[(2, 9)], NodeEndCause::Exited);
    assert!(matches!(f.state(id), JobState::Completed { .. }));
}

#[test]
fn a_batch_of_reports_is_applied_in_order_and_a_start_riding_in_an_end_is_kept() {
    let mut f = Fixture::new(&["a"]);
    let (one, two) = (f.submit_ok(JobBuilder::new(0), "t1"), f.submit_ok(JobBuilder::new(0), "t2"));
    f.core.schedule_if_needed(Timestamp(11));
    let exited = NodeEnd { ended_at: Timestamp(30), cause: NodeEndCause::Exited, replicas: vec![], usage: None };
    let node = NodeId::new("a");
    let reports = vec![
        JobReport::Start(ReportJobStart { node: node.clone(), job: two, run: 0, started_at: Timestamp(12) }),
        JobReport::End(ReportJobEnd {
            node: node.clone(),
            job: one,
            run: 0,
            end: exited.clone(),
            started_at: Some(Timestamp(13)),
        }),
        JobReport::End(ReportJobEnd { node, job: two, run: 0, end: exited, started_at: Some(Timestamp(99)) }),
    ];
    from_node(&mut f.core, ComputeRequest::ReportJobs(ReportJobs { reports }), Timestamp(30)).expect("reports");
    let started = |f: &Fixture, id| f.core.stored_job(id).nodes[0].started_at;
    assert_eq!((started(&f, one), started(&f, two)), (Some(Timestamp(13)), Some(Timestamp(12))));
    assert!(matches!(f.state(one), JobState::Completed { .. }) && matches!(f.state(two), JobState::Completed { .. }));
    assert_eq!(f.free_cpus("a"), 2);
}

#[test]
fn nothing_reaches_a_node_or_a_client_before_the_store_has_synced() {
    let mut f = Fixture::new(&["a"]);
    let fail = f.failing_sync.clone();
    let id = f.submit_ok(JobBuilder::new(0), "t");
    fail.store(true, std::sync::atomic::Ordering::Relaxed);
    f.core.schedule_if_needed(Timestamp(11));
    assert!(f.core.sync().is_err());
    assert!(f.sent.sent.lock().expect("lock").is_empty(), "a start must wait for its placement to be durable");
    fail.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(f.take_sent(), vec![pair("a", format!("start {id}").as_str())], "it goes with the next sync");
}

#[test]
fn a_submission_or_kill_the_store_cannot_take_is_refused_and_never_happens() {
    let mut f = Fixture::new(&["a"]);
    let fail = f.failing_sync.clone();
    let running = f.submit_ok(JobBuilder::new(0), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    assert_eq!(f.take_sent(), vec![pair("a", format!("start {running}").as_str())]);
    fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let err = f.submit(JobBuilder::new(0), "t2").expect_err("the store is down");
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(err.message.contains("not carried out"), "{}", err.message);
    let kill = ClientRequest::KillJob(KillJob { id: running });
    let err = f.core.handle_client(ALICE, kill.clone(), Timestamp(12)).expect_err("the store is down");
    assert!(err.message.contains("not carried out"), "{}", err.message);
    fail.store(false, std::sync::atomic::Ordering::Relaxed);
    f.core.schedule_if_needed(Timestamp(13));
    assert_eq!(f.take_sent(), vec![], "neither the refused job's start nor the refused kill goes out");
    assert!(matches!(f.state(running), JobState::Running { .. }));
    // The refused submission left nothing: the next one takes the id it would have had.
    assert_eq!(f.submit_ok(JobBuilder::new(0), "t3"), JobId(running.0 + 1));
    f.core.handle_client(ALICE, kill, Timestamp(14)).expect("kill");
    assert_eq!(f.take_sent(), vec![pair("a", format!("free {running}").as_str())]);
}

#[test]
fn a_non_zero_exit_fails_the_job_naming_the_rank() {
    let mut f = Fixture::new(&["a"]);
    let id = f.submit_ok(JobBuilder::new(0).procs(2), "t");
    f.core.schedule_if_needed(Timestamp(11));
    f.end(id, "a", &[(0, 0), (1, 3)], NodeEndCause::Exited);
    match f.state(id) {
        JobState::Failed { reason, .. } => assert_eq!(reason, "rank 1 on a: exit 3"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn killing_a_running_job_frees_nodes_only_when_they_confirm() {
    let mut f = Fixture::new(&["a", "b"]);
    let id = f.submit_ok(JobBuilder::new(0).nodes(2), "t");
    f.core.schedule_if_needed(Timestamp(11));
    f.take_sent();
    let err = f.core.handle_client(BOB, ClientRequest::KillJob(KillJob { id }), Timestamp(20)).unwrap_err();
    assert_eq!(err.code, ErrorCode::PermissionDenied, "bob may not kill alice's job");
    f.core.handle_client(ALICE, ClientRequest::KillJob(KillJob { id }), Timestamp(20)).expect("kill");
    assert_eq!(f.take_sent(), vec![pair("a", "free 1"), pair("b", "free 1")]);
    assert!(matches!(f.state(id), JobState::Killed { by_uid: 1000, .. }));
    assert_eq!(f.free_cpus("a"), 1, "held until the node confirms the processes are gone");
    f.end(id, "a", &[(0, 143)], NodeEndCause::Killed);
    f.end(id, "b", &[(1, 143)], NodeEndCause::Killed);
    assert_eq!((f.free_cpus("a"), f.free_cpus("b")), (2, 2));
    assert!(matches!(f.state(id), JobState::Killed { .. }), "stays Killed");
    let again = f.core.handle_client(ALICE, ClientRequest::KillJob(KillJob { id }), Timestamp(60)).unwrap_err();
    assert!(again.message.contains("already ended"));
}

#[test]
fn killing_a_pending_job_removes_it_from_the_queue() {
    let mut f = Fixture::new(&["a"]);
    let blocker = f.submit_ok(JobBuilder::new(0).cpus(2), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    let waiting = f.submit_ok(JobBuilder::new(0), "t2");
    f.core.handle_client(ALICE, ClientRequest::KillJob(KillJob { id: waiting }), Timestamp(12)).expect("kill");
    f.end(blocker, "a", &[(0, 0)], NodeEndCause::Exited);
    f.take_sent();
    f.core.schedule_if_needed(Timestamp(60));
    assert!(f.take_sent().is_empty(), "the killed job never starts");
    assert_eq!(f.state(waiting), JobState::Killed { started_at: None, ended_at: Timestamp(12), by_uid: 1000 });
}

#[test]
fn a_start_that_cannot_be_delivered_fails_the_job_and_stops_the_other_nodes() {
    let mut f = Fixture::new(&["a", "b"]);
    let id = f.submit_ok(JobBuilder::new(0).nodes(2), "t");
    f.core.schedule_if_needed(Timestamp(11));
    let job = f.core.job(id).expect("job").clone();
    f.take_sent();
    let failure = DeliveryFailure {
        node: NodeId::new("b"),
        request: NodeRequest::StartJob(StartJob { job }),
        error: "no reply".into(),
    };
    f.core.delivery_failed(failure, Timestamp(12));
    assert_eq!(f.take_sent(), vec![pair("a", "free 1")]);
    assert_eq!(f.free_cpus("b"), 2);
    f.end(id, "a", &[(0, 143)], NodeEndCause::Killed);
    match f.state(id) {
        JobState::Failed { reason, .. } => assert_eq!(reason, "could not start on b: no reply"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_silent_node_goes_down_and_its_jobs_fail_and_free() {
    let mut f = Fixture::new(&["a", "b"]);
    let id = f.submit_ok(JobBuilder::new(0).nodes(2), "t");
    f.core.schedule_if_needed(Timestamp(11));
    f.take_sent();
    let beat = Heartbeat { node: NodeId::new("b"), running: vec![JobRun { job: id, run: 0 }] };
    from_node(&mut f.core, ComputeRequest::Heartbeat(beat), Timestamp(6_000)).expect("heartbeat");
    f.core.tick(Timestamp(6_000));
    assert!(!f.core.node(&NodeId::new("a")).expect("a").is_up(), "a missed its heartbeats");
    assert!(f.core.node(&NodeId::new("b")).expect("b").is_up());
    assert_eq!(f.take_sent(), vec![pair("b", "free 1")], "the surviving node stops its share");
    assert_eq!(f.free_cpus("a"), 2);
    f.end(id, "b", &[], NodeEndCause::Killed);
    assert!(matches!(f.state(id), JobState::NodeFail { ref reason, .. } if reason.contains("went down")));
    // Back from the dead: it heartbeats again, and learns to kill what it still runs.
    let stale = JobRun { job: id, run: 0 };
    let beat = Heartbeat { node: NodeId::new("a"), running: vec![stale] };
    match from_node(&mut f.core, ComputeRequest::Heartbeat(beat), Timestamp(7_000)) {
        Ok(ComputeResponse::HeartbeatAck(ack)) => assert_eq!(ack.kill, vec![stale]),
        other => panic!("{other:?}"),
    }
    assert!(f.core.node(&NodeId::new("a")).expect("a").is_up());
}

#[test]
fn no_node_goes_down_while_the_store_fails_and_each_gets_a_fresh_timeout_after() {
    // Every turn of the head's loop waits for a store that fails, heartbeats too: silence then
    // is the head's, not the node's.
    let mut f = Fixture::new(&["a"]);
    f.submit_ok(JobBuilder::new(0), "t");
    f.failing_sync.store(true, Ordering::Relaxed);
    f.core.schedule_if_needed(Timestamp(11)); // a placement, to sync
    assert!(f.core.sync().is_err());
    f.core.tick(Timestamp(60_000));
    assert!(f.core.node(&NodeId::new("a")).expect("a").is_up(), "not down during the outage");
    f.failing_sync.store(false, Ordering::Relaxed);
    f.core.sync().expect("the store is back");
    f.core.tick(Timestamp(61_000));
    assert!(f.core.node(&NodeId::new("a")).expect("a").is_up(), "a fresh timeout from the store's return");
    f.core.tick(Timestamp(66_001));
    assert!(!f.core.node(&NodeId::new("a")).expect("a").is_up(), "then silence counts again");
}

#[test]
fn a_requeue_job_that_loses_a_node_runs_again_elsewhere_once_the_rest_has_stopped() {
    let mut f = Fixture::new(&["a", "b", "c"]);
    let mut builder = JobBuilder::new(0).nodes(2);
    builder = builder.requeue();
    let id = f.submit_ok(builder, "t");
    f.core.schedule_if_needed(Timestamp(11));
    f.take_sent();
    // Only b and c heartbeat: a goes down.
    for node in ["b", "c"] {
        let beat = Heartbeat { node: NodeId::new(node), running: vec![] };
        from_node(&mut f.core, ComputeRequest::Heartbeat(beat), Timestamp(6_000)).expect("heartbeat");
    }
    f.core.tick(Timestamp(6_000));
    assert_eq!(f.take_sent(), vec![pair("b", "free 1")]);
    assert!(matches!(f.state(id), JobState::Running { .. }), "not requeued while b may still run it");
    f.core.schedule_if_needed(Timestamp(6_001));
    assert!(f.take_sent().is_empty(), "it must not run twice at once");
    f.end(id, "b", &[(1, 143)], NodeEndCause::Killed);
    let job = f.core.job(id).expect("job").clone();
    assert_eq!((job.state.clone(), job.run, job.nodes.len()), (JobState::Pending, 1, 0), "requeued, same id");
    f.core.schedule_if_needed(Timestamp(6_002));
    assert_eq!(f.take_sent(), vec![pair("b", "start 1"), pair("c", "start 1")]);
    // A late report from the first run changes nothing.
    let late = ReportJobEnd {
        node: NodeId::new("b"),
        job: id,
        run: 0,
        end: NodeEnd { ended_at: Timestamp(6_003), cause: NodeEndCause::Exited, replicas: vec![], usage: None },
        started_at: None,
    };
    let reports = ReportJobs { reports: vec![JobReport::End(late)] };
    from_node(&mut f.core, ComputeRequest::ReportJobs(reports), Timestamp(6_003)).expect("late report");
    assert!(matches!(f.state(id), JobState::Running { .. }));
    assert_eq!(f.free_cpus("b"), 1, "the second run still holds b");
    f.end(id, "b", &[(0, 0)], NodeEndCause::Exited);
    f.end(id, "c", &[(1, 0)], NodeEndCause::Exited);
    assert!(matches!(f.state(id), JobState::Completed { .. }));
}

#[test]
fn a_restarted_compute_that_lost_its_jobs_fails_them() {
    let mut f = Fixture::new(&["a"]);
    let id = f.submit_ok(JobBuilder::new(0), "t");
    f.core.schedule_if_needed(Timestamp(11));
    let register = RegisterNode {
        node: NodeId::new("a"),
        address: "tcp://a:5002".into(),
        capacity: Resources::new(2, 512),
        only_uid: None,
        running: vec![],
        containment: String::new(),
    };
    from_node(&mut f.core, ComputeRequest::RegisterNode(register), Timestamp(20)).expect("register");
    assert!(matches!(f.state(id), JobState::NodeFail { ref reason, .. } if reason.contains("restarted")));
    assert_eq!(f.free_cpus("a"), 2);
}

#[test]
fn a_heartbeat_from_an_unknown_node_asks_it_to_register() {
    let mut f = Fixture::new(&[]);
    let beat = Heartbeat { node: NodeId::new("ghost"), running: vec![] };
    let err = from_node(&mut f.core, ComputeRequest::Heartbeat(beat), Timestamp(1)).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownNode);
    let err = f.submit(JobBuilder::new(0), "t").unwrap_err();
    assert!(err.message.contains("no compute node has registered"), "{}", err.message);
}

#[test]
fn a_reopened_head_resumes_pending_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |comm: RecordingComm| {
        let store = EmbeddedStore::open(&dir.path().join("cm.redb")).expect("store");
        let me = Node { role: Role::Head, ..NodeBuilder::new("head").build() };
        HeadCore::open(Box::new(store), Box::new(comm), me, settings(), Timestamp(1)).expect("open")
    };
    {
        let mut core = open(RecordingComm::default());
        let node = NodeBuilder::new("a").cpus(1).build();
        let register = RegisterNode {
            node: node.id,
            address: node.address,
            capacity: node.capacity,
            only_uid: None,
            running: vec![],
            containment: String::new(),
        };
        from_node(&mut core, ComputeRequest::RegisterNode(register), Timestamp(0)).expect("register");
        for token in ["1", "2"] {
            let req = AssignJobId { spec: JobBuilder::new(0).spec(), token: token.into() };
            core.handle_client(ALICE, ClientRequest::AssignJobId(req), Timestamp(1)).expect("submit");
        }
        core.schedule(Timestamp(2));
        core.sync().expect("sync");
    }
    let comm = RecordingComm::default();
    let mut core = open(comm.clone());
    // Job 1's node never confirmed its start: the new head tells it again.
    {
        let mut sent = comm.sent.lock().expect("lock");
        assert!(matches!(&sent[..], [(_, NodeRequest::StartJob(s))] if s.job.id == JobId(1)));
        sent.clear();
    }
    // Reopened long after the last persisted heartbeat: the node still gets its full timeout.
    core.tick(Timestamp(3));
    assert!(core.node(&NodeId::new("a")).expect("a").is_up());
    assert!(matches!(core.job(JobId(1)).expect("1").state, JobState::Running { .. }));
    assert_eq!(core.job(JobId(2)).expect("2").state, JobState::Pending);
    let end = NodeEnd { ended_at: Timestamp(3), cause: NodeEndCause::Exited, replicas: vec![], usage: None };
    core.record_node_end(JobRun { job: JobId(1), run: 0 }, &NodeId::new("a"), end, None, Timestamp(3)).expect("end");
    core.schedule_if_needed(Timestamp(4));
    core.sync().expect("sync");
    {
        let sent = comm.sent.lock().expect("lock");
        assert!(matches!(&sent[..], [(_, NodeRequest::StartJob(s))] if s.job.id == JobId(2)));
    }
    // A submit retried across the restart gets its original id back.
    let retry = AssignJobId { spec: JobBuilder::new(0).spec(), token: "1".into() };
    match core.handle_client(ALICE, ClientRequest::AssignJobId(retry), Timestamp(5)) {
        Ok(ClientResponse::JobAccepted(accepted)) => assert_eq!(accepted.id, JobId(1)),
        other => panic!("{other:?}"),
    }
}

fn administer(f: &mut Fixture, uid: u32, node: &str, action: NodeAction) -> Reply<ClientResponse> {
    let request = ClientRequest::AdministerNode(AdministerNode { node: NodeId::new(node), action });
    f.core.handle_client(uid, request, Timestamp(30))
}

#[test]
fn a_drained_node_takes_no_new_job_finishes_its_own_and_is_drained_until_resumed() {
    let mut f = Fixture::new(&["a", "b"]);
    let running = f.submit_ok(JobBuilder::new(0).cpus(1), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    assert_eq!(f.take_sent(), vec![pair("a", "start 1")]);
    let drain = || NodeAction::Drain { reason: "new disk".into() };
    let refused = administer(&mut f, ALICE, "a", drain()).unwrap_err();
    assert_eq!(refused.code, ErrorCode::PermissionDenied, "alice is no operator");
    assert_eq!(
        administer(&mut f, 0, "a", NodeAction::Drain { reason: "  ".into() }).unwrap_err().code,
        ErrorCode::Invalid
    );
    assert_eq!(administer(&mut f, 0, "zz", drain()).unwrap_err().code, ErrorCode::NotFound);
    administer(&mut f, 0, "a", drain()).expect("root drains a");
    let a = f.core.node(&NodeId::new("a")).expect("a").clone();
    assert_eq!(a.status(), NodeStatus::Draining);
    assert_eq!(a.drain.as_ref().map(|d| (d.reason.as_str(), d.by_uid)), Some(("new disk", 0)));
    // A new job goes to b, though a has a CPU free.
    let next = f.submit_ok(JobBuilder::new(0).cpus(1), "t2");
    f.core.schedule_if_needed(Timestamp(12));
    assert_eq!(f.take_sent(), vec![pair("b", &format!("start {}", next.0))]);
    f.end(running, "a", &[(0, 0)], NodeEndCause::Exited);
    assert_eq!(f.core.node(&NodeId::new("a")).expect("a").status(), NodeStatus::Drained);
    assert_eq!(f.core.stored_node("a").drain, a.drain, "the drain is stored, with who and why");
    assert!(administer(&mut f, 0, "b", NodeAction::Resume).unwrap_err().message.contains("not drained"));
    administer(&mut f, 0, "a", NodeAction::Resume).expect("resume");
    assert_eq!(f.core.node(&NodeId::new("a")).expect("a").status(), NodeStatus::Idle);
}

#[test]
fn a_node_is_removed_only_when_it_holds_no_job_and_is_gone_from_the_store() {
    let mut f = Fixture::new(&["a", "b"]);
    let id = f.submit_ok(JobBuilder::new(0).cpus(1), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    let busy = administer(&mut f, 0, "a", NodeAction::Remove).unwrap_err();
    assert!(busy.message.contains(&format!("still holds job(s) {id}")), "{}", busy.message);
    assert_eq!(administer(&mut f, BOB, "b", NodeAction::Remove).unwrap_err().code, ErrorCode::PermissionDenied);
    match administer(&mut f, 0, "b", NodeAction::Remove) {
        Ok(ClientResponse::NodeAdministered(NodeAdministered { node: None })) => {}
        other => panic!("{other:?}"),
    }
    assert!(f.core.node(&NodeId::new("b")).is_none());
    let stored: Vec<String> = f.core.store.nodes().expect("nodes").iter().map(|n| n.id.to_string()).collect();
    assert_eq!(stored, ["a"]);
}

fn reason_of(f: &mut Fixture, id: JobId) -> (String, String) {
    match f.core.handle_client(ALICE, ClientRequest::GetJob(GetJob { id }), Timestamp(40)) {
        Ok(ClientResponse::Job(reply)) => {
            let reason = reply.job.pending_reason.expect("a pending job has a reason");
            (reason.word, reason.sentence)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_pending_job_says_why_it_waits() {
    let mut f = Fixture::new(&["a", "b"]); // 2 CPUs each
    let running = f.submit_ok(JobBuilder::new(0).cpus(2), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    let wide = f.submit_ok(JobBuilder::new(0).nodes(2).cpus(2), "t2");
    assert_eq!(reason_of(&mut f, wide).0, "Scheduling", "before any pass has looked at it");
    let small = f.submit_ok(JobBuilder::new(0).cpus(1), "t3");
    f.core.schedule_if_needed(Timestamp(12));
    let (word, sentence) = reason_of(&mut f, wide);
    assert_eq!(word, "Resources");
    assert!(
        sentence.contains("it needs 2 nodes with room for it and 1 (b) now")
            && sentence.contains("a has 0 of 2 CPUs free")
            && sentence.contains("no start time can be worked out"),
        "{sentence}"
    );
    assert_eq!(
        reason_of(&mut f, small),
        (
            "Priority".into(),
            format!("job {wide} (priority 10000) is first in line in partition main; this job (priority 10000) may start before it only where it cannot delay it")
        )
    );
    // Listings carry the reasons too, and running jobs have none.
    let listed = match f.core.handle_client(
        ALICE,
        ClientRequest::FetchJobs(FetchJobs { include_finished: false, limit: None, filter: Default::default() }),
        Timestamp(41),
    ) {
        Ok(ClientResponse::Jobs(reply)) => reply.jobs,
        other => panic!("{other:?}"),
    };
    let words: Vec<Option<String>> = listed.iter().map(|j| j.pending_reason.as_ref().map(|r| r.word.clone())).collect();
    assert_eq!(words, [None, Some("Resources".into()), Some("Priority".into())], "job {running} runs");
    // Drain b: no two nodes take jobs any more, so the wide job waits aside, naming why.
    administer(&mut f, 0, "b", NodeAction::Drain { reason: "fan".into() }).expect("drain");
    f.core.schedule_if_needed(Timestamp(13));
    assert_eq!(
        reason_of(&mut f, wide),
        (
            "NodesDown".into(),
            "the nodes of partition main large enough for it do not take jobs now; drained: b (fan)".into()
        )
    );
    assert_eq!(f.core.stored_job(wide).pending_reason, None, "reasons are never stored");
}

fn partitioned() -> HeadSettings {
    let partitions = cm_common::config::Config::parse(
        "partitions:\n\
         - {name: debug, nodes: [a], max_time: \"10\", default_time: \"5\", max_nodes: 1, priority: 100}\n\
         - {name: batch, nodes: [\"*\"], default: true}\n\
         - {name: private, nodes: [b], allow_users: [\"2000\"]}\n\
         - {name: capped, nodes: [\"*\"], max_running_per_user: 1}\n",
    )
    .expect("partitions")
    .partitions;
    HeadSettings { partitions, ..settings() }
}

fn spec_of(f: &mut Fixture, id: JobId) -> JobSpec {
    f.core.stored_job(id).spec
}

fn listed(f: &mut Fixture, now: Timestamp) -> Vec<Job> {
    let request = FetchJobs { include_finished: false, limit: None, filter: Default::default() };
    match f.core.handle_client(ALICE, ClientRequest::FetchJobs(request), now) {
        Ok(ClientResponse::Jobs(reply)) => reply.jobs,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_submission_goes_to_its_partition_within_its_limits_or_is_refused_saying_which() {
    let mut f = Fixture::with(partitioned(), &["a", "b"]);
    let plain = f.submit_ok(JobBuilder::new(0), "t1");
    assert_eq!((spec_of(&mut f, plain).partition, spec_of(&mut f, plain).time_limit_secs), ("batch".into(), None));
    let debug = f.submit_ok(JobBuilder::new(0).partition("debug"), "t2");
    assert_eq!(spec_of(&mut f, debug).time_limit_secs, Some(300), "the partition's default_time");
    let refused = |f: &mut Fixture, builder: JobBuilder| f.submit(builder, "x").unwrap_err();
    let err = refused(&mut f, JobBuilder::new(0).partition("debug").time_limit(601));
    assert!(err.message.contains("debug takes jobs with a time limit of at most 00:10:00"), "{}", err.message);
    let err = refused(&mut f, JobBuilder::new(0).partition("debug").nodes(2));
    assert!(err.message.contains("at most 1 node(s)"), "{}", err.message);
    let err = refused(&mut f, JobBuilder::new(0).partition("gpu"));
    assert!(
        err.message.contains("no partition \"gpu\"; the partitions are debug, batch, private, capped"),
        "{}",
        err.message
    );
    let err = refused(&mut f, JobBuilder::new(0).partition("private"));
    assert_eq!(err.code, ErrorCode::PermissionDenied);
    assert!(err.message.contains("partition private is open only to users 2000; "), "{}", err.message);
    f.submit_as(BOB, JobBuilder::new(0).partition("private"), "b1").expect("bob may");
    f.submit_as(0, JobBuilder::new(0).partition("private"), "r1").expect("root may");
    let err = refused(&mut f, JobBuilder::new(0).nice(-1));
    assert!(err.code == ErrorCode::PermissionDenied && err.message.contains("negative --nice"), "{}", err.message);
    assert_eq!(refused(&mut f, JobBuilder::new(0).priority(5)).code, ErrorCode::PermissionDenied);
    f.submit_as(0, JobBuilder::new(0).priority(5).nice(-5), "r2").expect("root may fix priorities");
    // The tools see each partition with its nodes.
    match f.core.handle_client(ALICE, ClientRequest::FetchNodes(FetchNodes {}), Timestamp(20)) {
        Ok(ClientResponse::Nodes(reply)) => {
            let shown: Vec<(String, bool, Vec<String>)> = reply
                .partitions
                .iter()
                .map(|p| (p.partition.name.clone(), p.is_default, p.nodes.iter().map(|n| n.to_string()).collect()))
                .collect();
            assert_eq!(
                shown,
                [
                    ("debug".into(), false, vec!["a".into()]),
                    ("batch".into(), true, vec!["a".into(), "b".into()]),
                    ("private".into(), false, vec!["b".into()]),
                    ("capped".into(), false, vec!["a".into(), "b".into()]),
                ]
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_partitions_jobs_run_on_its_nodes_only_before_others_and_within_the_per_user_cap() {
    let mut f = Fixture::with(partitioned(), &["a", "b"]);
    let batch = f.submit_ok(JobBuilder::new(0).cpus(2), "t1");
    let debug = [
        f.submit_ok(JobBuilder::new(0).cpus(2).partition("debug"), "t2"),
        f.submit_ok(JobBuilder::new(0).cpus(2).partition("debug"), "t3"),
    ];
    f.core.schedule_if_needed(Timestamp(11));
    // debug's priority (100 more) puts its first job first, on a; batch takes b; debug's second
    // job may not use b.
    assert_eq!(f.take_sent(), vec![pair("a", "start 2"), pair("b", "start 1")]);
    assert_eq!(f.state(debug[1]), JobState::Pending);
    let jobs = listed(&mut f, Timestamp(60_011));
    let pending = jobs.iter().find(|j| j.id == debug[1]).expect("listed");
    assert_eq!(pending.priority, Some(10_101), "partition 100 + a minute of age + 10,000");
    assert_eq!(pending.pending_reason.as_ref().map(|r| r.word.as_str()), Some("Resources"));
    assert_eq!(jobs.iter().find(|j| j.id == batch).and_then(|j| j.priority), None, "only pending jobs");
    // capped: one running job per user.
    f.end(batch, "b", &[(0, 0)], NodeEndCause::Exited);
    let capped = [
        f.submit_ok(JobBuilder::new(0).partition("capped"), "c1"),
        f.submit_ok(JobBuilder::new(0).partition("capped"), "c2"),
    ];
    let bobs = match f.submit_as(BOB, JobBuilder::new(0).partition("capped"), "c3") {
        Ok(ClientResponse::JobAccepted(a)) => a.id,
        other => panic!("{other:?}"),
    };
    f.core.schedule_if_needed(Timestamp(70));
    assert_eq!(f.take_sent(), vec![pair("b", "start 4"), pair("b", "start 6")]);
    assert!(matches!(f.state(bobs), JobState::Running { .. }), "another user's job goes ahead");
    let (word, sentence) = reason_of(&mut f, capped[1]);
    assert_eq!(word, "QueueLimit");
    assert!(sentence.contains("1 job(s) running in partition capped"), "{sentence}");
}

#[test]
fn a_job_that_cannot_delay_the_first_in_line_backfills_and_the_first_shows_its_reservation() {
    let mut f = Fixture::new(&["a", "b"]); // 2 CPUs each
    let long = f.submit_ok(JobBuilder::new(0).cpus(2).time_limit(100), "t1"); // on a until 100 s
    f.core.schedule_if_needed(Timestamp(11));
    let wide = f.submit_ok(JobBuilder::new(0).nodes(2).cpus(2).time_limit(60), "t2");
    let too_long = f.submit_ok(JobBuilder::new(0).cpus(2).time_limit(200), "t3");
    let short = f.submit_ok(JobBuilder::new(0).cpus(2).time_limit(50), "t4");
    f.take_sent();
    f.core.schedule_if_needed(Timestamp(12));
    assert_eq!(f.take_sent(), vec![pair("b", "start 4")], "job {short} ends before job {wide} can start");
    let job = f.core.handle_client(ALICE, ClientRequest::GetJob(GetJob { id: wide }), Timestamp(13));
    let Ok(ClientResponse::Job(JobReply { job })) = job else { panic!("{job:?}") };
    let reason = job.pending_reason.expect("reason");
    assert_eq!(reason.word, "Resources");
    assert_eq!(reason.expected_start, Some(Timestamp(100_011)), "when job {long}'s limit runs out");
    assert_eq!(reason.reserved_nodes, vec![NodeId::new("a"), NodeId::new("b")]);
    assert!(reason.sentence.contains("expected to start by"), "{}", reason.sentence);
    assert_eq!(reason_of(&mut f, too_long).0, "Priority");
    // Without backfill, the short job waits its turn.
    let strict =
        HeadSettings { scheduling: SchedulingSettings { backfill: false, ..Default::default() }, ..settings() };
    let mut f = Fixture::with(strict, &["a", "b"]);
    f.submit_ok(JobBuilder::new(0).cpus(2).time_limit(100), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    f.submit_ok(JobBuilder::new(0).nodes(2).cpus(2).time_limit(60), "t2");
    f.submit_ok(JobBuilder::new(0).cpus(2).time_limit(50), "t3");
    f.take_sent();
    f.core.schedule_if_needed(Timestamp(12));
    assert_eq!(f.take_sent(), vec![]);
}

fn update(f: &mut Fixture, uid: u32, id: JobId, changes: Vec<JobChange>) -> Reply<Job> {
    match f.core.handle_client(uid, ClientRequest::UpdateJob(UpdateJob { id, changes }), Timestamp(20)) {
        Ok(ClientResponse::Job(reply)) => Ok(reply.job),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e),
    }
}

#[test]
fn operators_fix_or_hold_a_priority_and_owners_may_only_lower_theirs() {
    let mut f = Fixture::new(&["a"]);
    let running = f.submit_ok(JobBuilder::new(0).cpus(2), "t0");
    f.core.schedule_if_needed(Timestamp(11));
    let first = f.submit_ok(JobBuilder::new(0).cpus(2), "t1");
    let second = f.submit_ok(JobBuilder::new(0).cpus(2), "t2");
    let denied = |r: Reply<Job>| r.expect_err("refused").code;
    assert_eq!(denied(update(&mut f, ALICE, first, vec![JobChange::Priority(5)])), ErrorCode::PermissionDenied);
    assert_eq!(denied(update(&mut f, ALICE, first, vec![JobChange::Nice(-1)])), ErrorCode::PermissionDenied);
    assert_eq!(denied(update(&mut f, BOB, first, vec![JobChange::Nice(5)])), ErrorCode::PermissionDenied);
    assert_eq!(denied(update(&mut f, 0, running, vec![JobChange::Nice(5)])), ErrorCode::Invalid);
    assert_eq!(denied(update(&mut f, 0, first, vec![])), ErrorCode::Invalid);
    assert_eq!(denied(update(&mut f, 0, JobId(99), vec![JobChange::Nice(1)])), ErrorCode::NotFound);
    let niced = update(&mut f, ALICE, first, vec![JobChange::Nice(100)]).expect("the owner may lower it");
    assert_eq!(niced.priority, Some(9_900));
    let held = update(&mut f, 0, second, vec![JobChange::Priority(0)]).expect("root holds it");
    assert_eq!(held.pending_reason.map(|r| r.word), Some("JobHeldAdmin".into()));
    assert_eq!(f.core.stored_job(second).spec.priority, Some(0), "kept in the store");
    let recorded = &f.core.stored_job(second).updates;
    assert_eq!(recorded.iter().map(|u| (u.by_uid, u.change.as_str())).collect::<Vec<_>>(), [(0, "priority=0")]);
    f.end(running, "a", &[(0, 0)], NodeEndCause::Exited);
    f.core.schedule_if_needed(Timestamp(60));
    assert_eq!(f.take_sent().last(), Some(&pair("a", "start 2")), "the held job is passed over");
    f.end(first, "a", &[(0, 0)], NodeEndCause::Exited);
    update(&mut f, 0, second, vec![JobChange::AutoPriority]).expect("released");
    f.core.schedule_if_needed(Timestamp(70));
    assert_eq!(f.take_sent().last(), Some(&pair("a", "start 3")));
}

#[test]
fn on_a_full_cluster_only_the_periodic_pass_orders_the_queue_again() {
    let mut f = Fixture::new(&["a"]);
    let running = f.submit_ok(JobBuilder::new(0).cpus(2), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    assert!(matches!(f.state(running), JobState::Running { .. }));
    let waiting = f.submit_ok(JobBuilder::new(0).cpus(2), "t2");
    f.core.schedule_if_needed(Timestamp(12)); // no CPU free: skipped
    assert_eq!(reason_of(&mut f, waiting).0, "Scheduling");
    f.core.tick(Timestamp(13));
    f.core.schedule_if_needed(Timestamp(13));
    assert_eq!(reason_of(&mut f, waiting).0, "Resources");
    f.end(running, "a", &[(0, 0)], NodeEndCause::Exited);
    f.core.schedule_if_needed(Timestamp(60));
    assert!(matches!(f.state(waiting), JobState::Running { .. }), "a freed CPU brings a pass at once");
}

fn fence(f: &mut Fixture, node: &str, job: JobId, epoch: u32, puts: &[(&str, &str)]) -> Reply<ComputeResponse> {
    let puts = puts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let report = ReportFence { node: NodeId::new(node), job, run: 0, epoch, puts };
    let reports = ReportJobs { reports: vec![JobReport::Fence(report)] };
    from_node(&mut f.core, ComputeRequest::ReportJobs(reports), Timestamp(20))
}

/// The fence answers the head sent: (node, epoch, keys, refusal).
fn fence_answers(f: &mut Fixture) -> Vec<(String, u32, Vec<String>, Option<String>)> {
    f.core.sync().expect("sync");
    let mut sent = f.sent.sent.lock().expect("lock");
    sent.drain(..)
        .filter_map(|(node, req)| match req {
            NodeRequest::FenceDone(done) => {
                let keys = done.kvs.into_iter().map(|(k, _)| k).collect();
                Some((node.to_string(), done.epoch, keys, done.refused))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn an_mpi_fence_completes_when_every_node_of_the_job_has_reported_it() {
    let mut f = Fixture::new(&["a", "b", "c"]);
    let id = f.submit_ok(JobBuilder::new(0).nodes(2), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    f.take_sent();
    let nodes: Vec<String> = f.core.job(id).expect("job").nodes.iter().map(|n| n.node.to_string()).collect();
    let (first, second) = (nodes[0].as_str(), nodes[1].as_str());
    let outsider = ["a", "b", "c"].into_iter().find(|n| !nodes.iter().any(|m| m == n)).expect("a third node");

    fence(&mut f, second, id, 0, &[("card-1", "one")]).expect("reported");
    assert!(fence_answers(&mut f).is_empty(), "one node of two is not enough");
    fence(&mut f, outsider, id, 0, &[("card-x", "evil")]).expect("dropped, not refused");
    assert!(fence_answers(&mut f).is_empty(), "a node outside the job does not count");
    let forged = ReportFence { node: NodeId::new(first), job: id, run: 0, epoch: 0, puts: vec![] };
    let reports = ReportJobs { reports: vec![JobReport::Fence(forged)] };
    let refused = f.core.handle_compute(&NodeId::new(outsider), ComputeRequest::ReportJobs(reports), Timestamp(20));
    assert_eq!(refused.map_err(|e| e.code), Err(ErrorCode::PermissionDenied), "nor can it speak for one");

    fence(&mut f, first, id, 0, &[("card-0", "zero")]).expect("reported");
    let keys = vec!["card-0".to_string(), "card-1".to_string()];
    let mut answers = fence_answers(&mut f);
    answers.sort();
    assert_eq!(
        answers,
        vec![(first.to_string(), 0, keys.clone(), None), (second.to_string(), 0, keys.clone(), None)],
        "both nodes get every node's puts, in node order"
    );

    // A node that missed the answer (its daemon restarted) asks again and gets it again.
    fence(&mut f, second, id, 0, &[("card-1", "one")]).expect("repeated");
    assert_eq!(fence_answers(&mut f), vec![(second.to_string(), 0, keys, None)]);

    // The next fence starts empty; one over the limit is refused to every node.
    let big = "v".repeat(1000);
    let puts: Vec<(String, String)> =
        (0..fences::MAX_FENCE_BYTES / 1000).map(|i| (format!("k{i}"), big.clone())).collect();
    let puts: Vec<(&str, &str)> = puts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    fence(&mut f, first, id, 1, &puts).expect("reported");
    let answers = fence_answers(&mut f);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers
        .iter()
        .all(|(_, epoch, _, refused)| *epoch == 1 && refused.as_deref().is_some_and(|r| r.contains("MiB"))));
}

#[test]
fn an_aborted_mpi_rank_fails_the_job_and_stops_its_other_nodes() {
    let mut f = Fixture::new(&["a", "b"]);
    let id = f.submit_ok(JobBuilder::new(0).nodes(2), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    f.take_sent();
    let reason = "rank 3 called MPI_Abort (error code 2)".to_string();
    f.end(id, "b", &[(2, 143), (3, 143)], NodeEndCause::Aborted { reason });
    assert_eq!(f.take_sent(), vec![pair("a", &format!("free {id}"))]);
    // Node a's ranks abort in turn, later, once their peer has gone: the first abort is the cause.
    let end = NodeEnd {
        ended_at: Timestamp(60),
        cause: NodeEndCause::Aborted { reason: "rank 1 called MPI_Abort (error code 607768079)".into() },
        replicas: vec![],
        usage: None,
    };
    let reports = ReportJobs {
        reports: vec![JobReport::End(ReportJobEnd { node: NodeId::new("a"), job: id, run: 0, end, started_at: None })],
    };
    from_node(&mut f.core, ComputeRequest::ReportJobs(reports), Timestamp(60)).expect("report");
    match f.state(id) {
        JobState::Failed { reason, .. } => assert_eq!(reason, "rank 3 called MPI_Abort (error code 2), on b"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_node_that_leaves_is_forgotten_and_its_jobs_end_or_go_back_to_the_queue() {
    let mut f = Fixture::new(&["a", "b", "c"]);
    let plain = f.submit_ok(JobBuilder::new(0).nodes(2), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    let nodes: Vec<String> = f.core.job(plain).expect("job").nodes.iter().map(|n| n.node.to_string()).collect();
    let requeued = f.submit_ok(JobBuilder::new(0).requeue(), "t2");
    f.core.schedule_if_needed(Timestamp(12));
    f.take_sent();
    let leaving = f.core.job(requeued).expect("job").nodes[0].node.clone();

    let leave = |f: &mut Fixture, node: &NodeId| {
        let request = ComputeRequest::LeaveCluster(LeaveCluster { node: node.clone() });
        from_node(&mut f.core, request, Timestamp(30)).expect("left");
    };
    let first = NodeId::new(&nodes[0]);
    leave(&mut f, &first);
    assert!(f.core.node(&first).is_none(), "forgotten, not Down");
    assert!(matches!(f.state(plain), JobState::Running { .. }), "until its other node has stopped it");
    assert!(f.take_sent().contains(&pair(&nodes[1], &format!("free {plain}"))));
    f.end(plain, &nodes[1], &[(1, 143)], NodeEndCause::Killed);
    assert!(matches!(f.state(plain), JobState::NodeFail { ref reason, .. } if reason.contains("left the cluster")));
    if leaving != first {
        leave(&mut f, &leaving);
    }
    assert_eq!(f.state(requeued), JobState::Pending, "a --requeue job waits for another node");
    // A node that left and comes back registers afresh.
    let register = RegisterNode {
        node: first.clone(),
        address: NodeBuilder::new(first.as_str()).build().address,
        capacity: Resources::new(2, 512),
        only_uid: None,
        running: vec![],
        containment: String::new(),
    };
    from_node(&mut f.core, ComputeRequest::RegisterNode(register), Timestamp(40)).expect("back");
    assert!(f.core.node(&first).is_some_and(|n| n.is_up()));
}

#[test]
fn a_job_outside_the_shared_directories_is_taken_with_a_warning_or_refused() {
    let mut s = settings();
    s.workdirs.shared = vec!["/home".into()];
    let mut f = Fixture::with(s.clone(), &["a"]);
    let submit = |f: &mut Fixture, workdir: &str, token: &str| {
        let mut spec = JobBuilder::new(0).uid(ALICE).spec();
        spec.workdir = workdir.into();
        f.core.handle_client(
            ALICE,
            ClientRequest::AssignJobId(AssignJobId { spec, token: token.into() }),
            Timestamp(10),
        )
    };
    match submit(&mut f, "/home/alice/run", "t1") {
        Ok(ClientResponse::JobAccepted(accepted)) => assert_eq!(accepted.warning, None),
        other => panic!("{other:?}"),
    }
    match submit(&mut f, "/tmp", "t2") {
        Ok(ClientResponse::JobAccepted(accepted)) => assert_eq!(
            accepted.warning.as_deref(),
            Some("/tmp is not in a directory the nodes share (/home): the job runs in each node's own /tmp, and its output stays on the nodes")
        ),
        other => panic!("{other:?}"),
    }
    // Not fooled by a name that only begins like a shared directory.
    let Ok(ClientResponse::JobAccepted(accepted)) = submit(&mut f, "/homework", "t3") else { panic!("taken") };
    assert!(accepted.warning.is_some());

    s.workdirs.unshared = Unshared::Refuse;
    let mut f = Fixture::with(s, &["a"]);
    let refused = submit(&mut f, "/tmp", "t1").expect_err("refused");
    assert_eq!(refused.code, ErrorCode::Invalid);
    assert!(refused.message.ends_with("; submit from a shared directory"), "{}", refused.message);
    assert!(submit(&mut f, "/home/alice", "t2").is_ok());
}

#[test]
fn only_operators_inject_faults_and_a_rank_goes_to_the_node_that_runs_it() {
    let mut f = Fixture::new(&["a", "b"]);
    let id = f.submit_ok(JobBuilder::new(0).nodes(2).procs(2), "t1");
    f.core.schedule_if_needed(Timestamp(11));
    f.take_sent();
    let inject = |f: &mut Fixture, uid: u32, fault: Fault| {
        f.core.handle_client(uid, ClientRequest::InjectFault(InjectFault { fault }), Timestamp(20))
    };
    let refused = inject(&mut f, ALICE, Fault::Crash { node: NodeId::new("a") }).expect_err("alice is no operator");
    assert_eq!(refused.code, ErrorCode::PermissionDenied);
    assert!(f.take_sent().is_empty());
    let second = f.core.job(id).expect("job").nodes[1].node.clone();
    match inject(&mut f, 0, Fault::KillRank { job: id, rank: 3 }) {
        Ok(ClientResponse::FaultInjected(done)) => {
            assert_eq!(done.node, second, "ranks 2 and 3 are on the second node")
        }
        other => panic!("{other:?}"),
    }
    let sent = f.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, second.to_string());
    assert!(sent[0].1.contains("KillRank"), "{sent:?}");
    let out_of_range = inject(&mut f, 0, Fault::KillRank { job: id, rank: 4 }).expect_err("4 ranks");
    assert_eq!(out_of_range.message, format!("job {id} has ranks 0 to 3"));
}

mod workflows;
