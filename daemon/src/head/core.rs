//! The head's state machine: every request and event goes through [`HeadCore`].
//!
//! It holds the nodes and the jobs still in play (pending, running, or ended but still held by a
//! node) in memory and writes every change through the [`Store`]. Nothing that follows from a
//! change leaves the head before the change is durable: the loop calls [`HeadCore::sync`] after
//! each turn (a request, then a scheduling pass), which syncs the store once for all of the
//! turn's writes and only then hands the turn's messages to [`NodeComm`] and lets the reply go. It does no waiting and reads no clock: `now` is a
//! parameter, so every path is unit-tested with a recording comm.
//!
//! Resources: a job's reservation on a node (an `Allocation`) is released only when that node
//! reports the job's end there, or the node is lost, so a killed job's CPUs are not handed out
//! while its processes are still dying.

use super::comm::{DeliveryFailure, NodeComm};
use super::tokens::RecentTokens;
use super::user_names::UserNames;
use crate::scheduler::{self, NodeView};
use crate::store::{Store, StoreError};
use cm_auth::Identity;
use cm_common::config::JobLimits;
use cm_common::job::{Job, JobNode, JobRun, JobSpec, JobState, NodeEnd, NodeEndCause};
use cm_common::node::{Allocation, Node, NodeHealth, Role};
use cm_common::protocol::*;
use cm_common::{JobId, NodeId, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// Settings the head's decisions depend on.
#[derive(Debug, Clone)]
pub struct HeadSettings {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// Users (names or uids) who, besides root, may see and kill any job.
    pub operators: Vec<String>,
    /// Users see only their own jobs (SLURM's `PrivateData=jobs`).
    pub private_data: bool,
    /// Requests over TCP without a credential may list nodes and jobs.
    pub anonymous_listing: bool,
    /// Job sizes and queue lengths.
    pub limits: JobLimits,
}

/// The head's state and decisions.
pub struct HeadCore {
    store: Box<dyn Store>,
    comm: Box<dyn NodeComm>,
    settings: HeadSettings,
    /// The head's own entry in node listings.
    me: Node,
    nodes: BTreeMap<NodeId, Node>,
    /// Jobs not yet settled (see `Job::is_settled`).
    jobs: BTreeMap<JobId, Job>,
    /// Recent submission tokens, so a retried submit returns the same id.
    tokens: RecentTokens,
    /// The names jobs show for their uids.
    user_names: UserNames,
    /// The id of the last job submitted; the next gets the one after.
    last_job_id: JobId,
    /// Something changed that may let a pending job start.
    wants_schedule: bool,
    /// Writes saved since the last successful store sync.
    unsynced: bool,
    /// Messages to nodes, held until the writes they follow from are durable.
    outbox: Vec<(NodeId, NodeRequest)>,
}

/// Finished jobs whose submission tokens a (re)started head reloads.
const RECENT_FINISHED: usize = 1000;

fn unavailable(e: StoreError) -> ErrorReply {
    ErrorReply::new(ErrorCode::Unavailable, format!("{e}; the request was not carried out, try again"))
}

fn invalid(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::Invalid, message)
}

/// The terminal state of a running job whose nodes have all reported.
pub fn final_state(job: &Job, now: Timestamp) -> JobState {
    let started_at = job.state.started_at().unwrap_or(now);
    let ended_at = job.nodes.iter().filter_map(|n| n.end.as_ref().map(|e| e.ended_at)).max().unwrap_or(now);
    let ends: Vec<(&NodeId, &NodeEnd)> =
        job.nodes.iter().filter_map(|n| n.end.as_ref().map(|e| (&n.node, e))).collect();
    for (node, end) in &ends {
        match &end.cause {
            NodeEndCause::LaunchFailed { reason } => {
                return JobState::Failed {
                    started_at,
                    ended_at,
                    reason: format!("could not start on {node}: {reason}"),
                }
            }
            NodeEndCause::Lost { reason } => {
                return JobState::NodeFail { started_at, ended_at, reason: format!("lost on {node}: {reason}") }
            }
            _ => {}
        }
    }
    if ends.iter().any(|(_, e)| e.cause == NodeEndCause::TimedOut) {
        return JobState::TimedOut { started_at, ended_at };
    }
    let failed =
        ends.iter().flat_map(|(node, e)| e.replicas.iter().map(move |r| (node, r))).find(|(_, r)| !r.status.success());
    match failed {
        None if ends.iter().all(|(_, e)| e.cause == NodeEndCause::Exited) => {
            JobState::Completed { started_at, ended_at }
        }
        None => JobState::Failed { started_at, ended_at, reason: "killed on a node by the head".into() },
        Some((node, r)) => {
            JobState::Failed { started_at, ended_at, reason: format!("rank {} on {node}: {}", r.rank, r.status) }
        }
    }
}

impl HeadCore {
    /// Loads nodes and unsettled jobs from the store. Reservations are rebuilt from the jobs, the
    /// source of truth, so a node record written before (or without) its jobs' records cannot
    /// leak a reservation or hide one.
    pub fn open(
        store: Box<dyn Store>,
        comm: Box<dyn NodeComm>,
        me: Node,
        settings: HeadSettings,
        now: Timestamp,
    ) -> Result<Self, StoreError> {
        let jobs: BTreeMap<JobId, Job> = store.active_jobs()?.into_iter().map(|j| (j.id, j)).collect();
        let mut nodes: BTreeMap<NodeId, Node> = store.nodes()?.into_iter().map(|n| (n.id.clone(), n)).collect();
        for node in nodes.values_mut() {
            node.allocations.clear();
            // Heartbeats are not persisted: every node gets a full timeout to reach this head.
            node.last_heartbeat = now;
        }
        for job in jobs.values() {
            for slot in job.nodes.iter().filter(|n| n.end.is_none()) {
                if let Some(node) = nodes.get_mut(&slot.node) {
                    node.allocations.push(Allocation { job: job.id, resources: job.spec.per_node });
                }
            }
        }
        let mut tokens = RecentTokens::default();
        for job in store.finished_jobs(RECENT_FINISHED)?.iter().chain(jobs.values()) {
            tokens.insert(job.submit_token.clone(), job.id);
        }
        let last_job_id = store.last_job_id()?;
        let mut core = HeadCore {
            store,
            comm,
            settings,
            me,
            nodes,
            jobs,
            tokens,
            user_names: UserNames::default(),
            last_job_id,
            wants_schedule: true,
            unsynced: false,
            outbox: Vec::new(),
        };
        core.resend_unconfirmed_starts();
        core.sync()?;
        Ok(core)
    }

    /// A head that died between persisting a placement and delivering it left nodes that never
    /// heard of their job: tell every placed node that has not confirmed a start (nodes ignore a
    /// run they already have or had).
    fn resend_unconfirmed_starts(&mut self) {
        for job in self.jobs.values().filter(|j| matches!(j.state, JobState::Running { .. })) {
            for slot in job.nodes.iter().filter(|n| n.started_at.is_none() && n.end.is_none()) {
                tracing::info!(job = %job.id, node = %slot.node, "re-sending an unconfirmed start");
                self.outbox.push((slot.node.clone(), NodeRequest::StartJob(StartJob { job: job.clone() })));
            }
        }
    }

    pub fn job(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    pub fn node(&self, id: &NodeId) -> Option<&Node> {
        self.nodes.get(id)
    }

    /// Writes `jobs` and `nodes` to the store, then makes them the truth in memory. They are
    /// durable after the next [`HeadCore::sync`], which comes before anyone hears of them.
    fn commit(&mut self, jobs: Vec<Job>, nodes: Vec<Node>) -> Result<(), StoreError> {
        self.commit_lazily(jobs, nodes)?;
        self.unsynced = true;
        Ok(())
    }

    /// As `commit`, durable before it returns, and on an error not made at all: for what a client
    /// asked, so that a client told "not carried out" (the store is down) is told the truth.
    fn commit_now(&mut self, jobs: Vec<Job>, nodes: Vec<Node>) -> Result<(), StoreError> {
        self.store.save_now(&jobs.iter().collect::<Vec<_>>(), &nodes.iter().collect::<Vec<_>>())?;
        self.unsynced = false;
        self.install(jobs, nodes);
        Ok(())
    }

    /// As `commit`, for changes a crash may lose because a restarted head re-derives them: they
    /// do not call for a sync of their own and become durable with the next one.
    fn commit_lazily(&mut self, jobs: Vec<Job>, nodes: Vec<Node>) -> Result<(), StoreError> {
        self.store.save(&jobs.iter().collect::<Vec<_>>(), &nodes.iter().collect::<Vec<_>>())?;
        self.install(jobs, nodes);
        Ok(())
    }

    /// Makes the writes so far durable (one store sync for all of them), then sends the messages
    /// to nodes that follow from them. If the sync fails nothing is sent: the loop answers the
    /// turn's request with an error, and the next turn syncs again.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            self.store.sync()?;
            self.unsynced = false;
        }
        for (id, request) in std::mem::take(&mut self.outbox) {
            if let Some(node) = self.nodes.get(&id) {
                self.comm.send(node, request);
            }
        }
        Ok(())
    }

    /// Queues a message to node `id`; it leaves at the next successful [`HeadCore::sync`].
    fn send(&mut self, id: &NodeId, request: NodeRequest) {
        self.outbox.push((id.clone(), request));
    }

    fn install(&mut self, jobs: Vec<Job>, nodes: Vec<Node>) {
        for node in nodes {
            self.nodes.insert(node.id.clone(), node);
        }
        for job in jobs {
            self.tokens.insert(job.submit_token.clone(), job.id);
            if job.is_settled() {
                self.jobs.remove(&job.id);
            } else {
                self.jobs.insert(job.id, job);
            }
        }
    }

    // ------------------------------------------------------------------ who may do what

    /// Answers a request from `identity`, as proven by the inbox: user tools ask as users,
    /// daemons of the cluster as daemons; nothing else is taken.
    pub fn handle(&mut self, identity: &Identity, request: HeadRequest, now: Timestamp) -> HeadReply {
        match (identity, request) {
            (Identity::User(uid), HeadRequest::Client(req)) => HeadReply::Client(self.handle_client(*uid, req, now)),
            (Identity::Anonymous, HeadRequest::Client(req)) => HeadReply::Client(self.handle_anonymous(req)),
            (Identity::Daemon(sender), HeadRequest::Compute(req)) => {
                HeadReply::Compute(self.handle_compute(&NodeId::new(sender.as_str()), req, now))
            }
            (Identity::Daemon(_), HeadRequest::Client(_)) => HeadReply::Client(Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                "user requests must come from a user's tool, not from a daemon",
            ))),
            (_, HeadRequest::Compute(_)) => HeadReply::Compute(Err(ErrorReply::new(
                ErrorCode::Unauthenticated,
                "only the cluster's daemons may register nodes or report jobs: seal requests with the cluster key",
            ))),
        }
    }

    /// A request over TCP with no credential: listings if the operator allows them, else nothing.
    fn handle_anonymous(&mut self, request: ClientRequest) -> Reply<ClientResponse> {
        let listing = matches!(request, ClientRequest::FetchNodes(_) | ClientRequest::FetchJobs(_));
        if listing && self.settings.anonymous_listing && !self.settings.private_data {
            return self.handle_client(ANONYMOUS, request, Timestamp(0));
        }
        Err(ErrorReply::new(
            ErrorCode::Unauthenticated,
            "the head takes requests over TCP only with a MUNGE credential: run munged on this host \
             (with the cluster's munge.key), or use the tools on the head's host, over its Unix socket",
        ))
    }

    /// Root, or a user named in `operators` (by name or uid).
    fn is_operator(&mut self, uid: u32) -> bool {
        if uid == 0 {
            return true;
        }
        if uid == ANONYMOUS || self.settings.operators.is_empty() {
            return false;
        }
        let name = self.user_names.name(uid, "");
        self.settings.operators.iter().any(|op| *op == name || *op == uid.to_string())
    }

    // ------------------------------------------------------------------ clients

    /// A user's request; `uid` is proven (the kernel or MUNGE said so).
    pub fn handle_client(&mut self, uid: u32, request: ClientRequest, now: Timestamp) -> Reply<ClientResponse> {
        match request {
            ClientRequest::FetchNodes(_) => {
                let mut nodes = vec![self.me.clone()];
                nodes.extend(self.nodes.values().cloned());
                Ok(ClientResponse::Nodes(NodesReply { nodes }))
            }
            ClientRequest::FetchJobs(req) => {
                let only = (self.settings.private_data && !self.is_operator(uid)).then_some(uid);
                self.fetch_jobs(req, only)
            }
            ClientRequest::GetJob(GetJob { id }) => {
                let mut job = match self.jobs.get(&id) {
                    Some(job) => job.clone(),
                    None => self.store.job(id).map_err(unavailable)?.ok_or_else(|| not_found(id))?,
                };
                if job.spec.user.uid != uid && !self.is_operator(uid) {
                    if self.settings.private_data {
                        return Err(not_found(id));
                    }
                    // Another user's environment holds their secrets.
                    job.spec.env.clear();
                }
                Ok(ClientResponse::Job(JobReply { job }))
            }
            ClientRequest::AssignJobId(req) => self.submit(uid, req, now),
            ClientRequest::KillJob(KillJob { id }) => self.kill(uid, id, now),
        }
    }

    /// Pending and running jobs (and finished ones if asked), of user `only` if given.
    fn fetch_jobs(&self, req: FetchJobs, only: Option<u32>) -> Reply<ClientResponse> {
        let limit = req.limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let visible = |job: &Job| only.is_none_or(|uid| job.spec.user.uid == uid);
        let mut jobs: Vec<Job> = Vec::new();
        if req.include_finished {
            jobs = self.store.finished_jobs(limit).map_err(unavailable)?;
            jobs.retain(visible);
            jobs.iter_mut().for_each(|j| j.spec.env.clear());
        }
        // Running jobs first, then the oldest pending ones: what a user looks for in a long queue.
        let active = || self.jobs.values().filter(|j| !j.state.is_terminal() && visible(j));
        let running = active().filter(|j| j.state != JobState::Pending);
        let pending = active().filter(|j| j.state == JobState::Pending);
        let listed: Vec<Job> = running.chain(pending).take(limit).map(Job::summary).collect();
        let left_out = (active().count() - listed.len()) as u64;
        jobs.extend(listed);
        jobs.sort_by_key(|j| j.id);
        Ok(ClientResponse::Jobs(JobsReply { jobs, left_out }))
    }

    fn submit(&mut self, uid: u32, req: AssignJobId, now: Timestamp) -> Reply<ClientResponse> {
        if let Some(id) = self.tokens.get(&req.token) {
            return Ok(ClientResponse::JobAccepted(JobAccepted { id })); // a retry of a submit we already took
        }
        let mut spec = req.spec;
        spec.validate().map_err(invalid)?;
        spec.check_limits(&self.settings.limits).map_err(invalid)?;
        // Root may submit for anyone (as SLURM's `sbatch --uid`); everyone else as themselves.
        if uid != 0 && uid != spec.user.uid {
            return Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                format!("uid {uid} cannot submit a job that runs as uid {}", spec.user.uid),
            ));
        }
        spec.user.name = self.user_names.name(spec.user.uid, &spec.user.name);
        self.check_queue_has_room(spec.user.uid)?;
        self.check_cluster_can_fit(&spec)?;
        let id = JobId(self.last_job_id.0 + 1);
        let job = Job::new(id, spec, now, req.token);
        self.commit_now(vec![job], vec![]).map_err(unavailable)?;
        self.last_job_id = id;
        self.wants_schedule = true;
        tracing::info!(job = %id, "job submitted");
        Ok(ClientResponse::JobAccepted(JobAccepted { id }))
    }

    /// Refuses a job beyond the queue's limits: all users' pending and running jobs together, and
    /// the submitting user's.
    fn check_queue_has_room(&self, uid: u32) -> Result<(), ErrorReply> {
        let limits = &self.settings.limits;
        let queued = self.jobs.values().filter(|j| !j.state.is_terminal());
        let (all, mine) = queued.fold((0, 0), |(all, mine), j| (all + 1, mine + usize::from(j.spec.user.uid == uid)));
        let full = |what: String| Err(ErrorReply::new(ErrorCode::Unavailable, what));
        if all >= limits.max_jobs {
            return full(format!(
                "the queue is full: {all} jobs are pending or running, the limit (limits.max_jobs); submit again when some have ended"
            ));
        }
        if mine >= limits.max_jobs_per_user {
            return full(format!(
                "you have {mine} jobs pending or running, the limit per user (limits.max_jobs_per_user); submit again when some have ended"
            ));
        }
        Ok(())
    }

    /// Refuses at once a job that the nodes that are up could never run, however long it waited.
    fn check_cluster_can_fit(&self, spec: &JobSpec) -> Result<(), ErrorReply> {
        let computes: Vec<&Node> = self.nodes.values().filter(|n| n.role == Role::Compute).collect();
        if computes.is_empty() {
            return Err(invalid(
                "no compute node has registered with the head yet; start compute daemons (cmd --role compute) and submit again",
            ));
        }
        let up: Vec<&Node> = computes.iter().copied().filter(|n| n.is_up()).collect();
        let big_enough: Vec<&Node> = up.iter().copied().filter(|n| n.capacity.contains(&spec.per_node)).collect();
        let allowed: Vec<&Node> = big_enough.iter().copied().filter(|n| n.can_run_as(spec.user.uid)).collect();
        let usable = allowed.iter().filter(|n| u64::from(spec.procs_per_node) <= self.max_procs(n)).count();
        let wanted = usize::try_from(spec.nodes).unwrap_or(usize::MAX);
        if usable >= wanted {
            return Ok(());
        }
        let down = computes.len() - up.len();
        let mut message = format!(
            "the job asks for {} node(s) with {} CPU(s) and {} MB each, but the cluster has {} compute node(s) up{} and only {} that large",
            spec.nodes,
            spec.per_node.cpus,
            spec.per_node.memory_mb,
            up.len(),
            if down > 0 { format!(" ({down} down)") } else { String::new() },
            big_enough.len()
        );
        if allowed.len() < big_enough.len() {
            message.push_str(&format!(
                ", of which {} may run jobs of uid {} (the others' daemons do not run as root)",
                allowed.len(),
                spec.user.uid
            ));
        }
        if usable < allowed.len() {
            message.push_str(&format!(
                ", and {} process(es) per node is more than {} per CPU (limits.max_procs_per_cpu) of {} of them",
                spec.procs_per_node,
                self.settings.limits.max_procs_per_cpu,
                allowed.len() - usable
            ));
        }
        message.push_str("; ask for fewer nodes, processes or resources per node");
        Err(invalid(message))
    }

    /// The most processes one job may start on `node`.
    fn max_procs(&self, node: &Node) -> u64 {
        u64::from(self.settings.limits.max_procs_per_cpu) * u64::from(node.capacity.cpus)
    }

    fn kill(&mut self, uid: u32, id: JobId, now: Timestamp) -> Reply<ClientResponse> {
        let mut job = match self.jobs.get(&id) {
            Some(job) => job.clone(),
            None => match self.store.job(id).map_err(unavailable)? {
                Some(job) => return Err(invalid(format!("job {id} has already ended ({})", job.state.name()))),
                None => return Err(not_found(id)),
            },
        };
        if job.state.is_terminal() {
            return Err(invalid(format!("job {id} has already ended ({})", job.state.name())));
        }
        if uid != job.spec.user.uid && !self.is_operator(uid) {
            return Err(ErrorReply::new(
                ErrorCode::PermissionDenied,
                format!(
                    "job {id} belongs to {} (uid {}); only its owner, root or an operator may kill it",
                    job.spec.user.name, job.spec.user.uid
                ),
            ));
        }
        let previous_state = job.state.name().to_string();
        job.state = JobState::Killed { started_at: job.state.started_at(), ended_at: now, by_uid: uid };
        let still_running: Vec<NodeId> = job.nodes.iter().filter(|n| n.end.is_none()).map(|n| n.node.clone()).collect();
        let run = job.job_run();
        self.commit_now(vec![job], vec![]).map_err(unavailable)?;
        self.send_free(run, &still_running);
        tracing::info!(job = %id, by = uid, "job killed");
        Ok(ClientResponse::JobKilled(JobKilled { id, previous_state }))
    }

    fn send_free(&mut self, run: JobRun, nodes: &[NodeId]) {
        for id in nodes {
            self.send(id, NodeRequest::FreeResources(FreeResources { job: run.job, run: run.run }));
        }
    }

    /// The current run of job `id` (run 0 for a job no longer in memory).
    fn current_run(&self, id: JobId) -> JobRun {
        JobRun { job: id, run: self.jobs.get(&id).map_or(0, |j| j.run) }
    }

    // ------------------------------------------------------------------ compute nodes

    /// A compute daemon's request; `sender` is the node it sealed its message as, which is the
    /// only node it may speak for.
    pub fn handle_compute(
        &mut self,
        sender: &NodeId,
        request: ComputeRequest,
        now: Timestamp,
    ) -> Reply<ComputeResponse> {
        let speaks_for = |node: &NodeId| {
            if node == sender {
                Ok(())
            } else {
                Err(ErrorReply::new(ErrorCode::PermissionDenied, format!("{sender} cannot speak for node {node}")))
            }
        };
        match request {
            ComputeRequest::RegisterNode(req) => speaks_for(&req.node).and_then(|()| self.register(req, now)),
            ComputeRequest::Heartbeat(req) => speaks_for(&req.node).and_then(|()| self.heartbeat(req, now)),
            ComputeRequest::ReportJobs(ReportJobs { reports }) => {
                for report in &reports {
                    match report {
                        JobReport::Start(r) => speaks_for(&r.node)?,
                        JobReport::End(r) => speaks_for(&r.node)?,
                    }
                }
                // All or nothing for the node: on an error it sends the batch again, and what was
                // applied already is recognised and left alone.
                for report in reports {
                    match report {
                        JobReport::Start(req) => self.report_start(req),
                        JobReport::End(req) => {
                            self.record_node_end(req.job_run(), &req.node, req.end, req.started_at, now)
                        }
                    }
                    .map_err(unavailable)?;
                }
                Ok(ComputeResponse::Ack(Ack {}))
            }
        }
    }

    fn register(&mut self, req: RegisterNode, now: Timestamp) -> Reply<ComputeResponse> {
        // A live node keeps its host: a daemon elsewhere cannot take over its id (and its jobs)
        // until it has been silent for heartbeat_timeout. A restart on the same host may rejoin.
        if let Some(live) = self.nodes.get(&req.node).filter(|n| n.is_up()) {
            if host_of(&live.address) != host_of(&req.address) {
                return Err(ErrorReply::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "node {} is registered and alive at {}; another node cannot take its id from {} (pick another --node-id, or stop the first and wait {:?})",
                        req.node, live.address, req.address, self.settings.heartbeat_timeout
                    ),
                ));
            }
        }
        let mut node = self.nodes.get(&req.node).cloned().unwrap_or_else(|| Node {
            id: req.node.clone(),
            role: Role::Compute,
            address: String::new(),
            capacity: req.capacity,
            allocations: vec![],
            health: NodeHealth::Up,
            only_uid: None,
            registered_at: now,
            last_heartbeat: now,
        });
        node.address = req.address;
        node.capacity = req.capacity;
        node.only_uid = req.only_uid;
        node.health = NodeHealth::Up;
        node.registered_at = now;
        node.last_heartbeat = now;
        // Jobs placed here that the (re)started daemon does not run were lost with the old daemon.
        let lost: Vec<JobRun> =
            node.allocations.iter().map(|a| self.current_run(a.job)).filter(|r| !req.running.contains(r)).collect();
        self.commit(vec![], vec![node]).map_err(unavailable)?;
        for job in lost {
            let end = NodeEnd {
                ended_at: now,
                cause: NodeEndCause::Lost {
                    reason: format!("the compute daemon on {} restarted without it", req.node),
                },
                replicas: vec![],
            };
            self.record_node_end(job, &req.node, end, None, now).map_err(unavailable)?;
        }
        self.wants_schedule = true;
        tracing::info!(node = %req.node, cpus = req.capacity.cpus, memory_mb = req.capacity.memory_mb, "node registered");
        let heartbeat_interval_ms = u64::try_from(self.settings.heartbeat_interval.as_millis()).unwrap_or(u64::MAX);
        Ok(ComputeResponse::Registered(Registered {
            heartbeat_interval_ms,
            kill: self.stale_jobs(&req.node, &req.running),
        }))
    }

    fn heartbeat(&mut self, req: Heartbeat, now: Timestamp) -> Reply<ComputeResponse> {
        let Some(node) = self.nodes.get_mut(&req.node) else {
            return Err(ErrorReply::new(
                ErrorCode::UnknownNode,
                format!("node {} is not registered; register first", req.node),
            ));
        };
        // Heartbeats only touch memory: persisting each would cost a disk sync per node per interval.
        node.last_heartbeat = now;
        if !node.is_up() {
            let mut back = node.clone();
            back.health = NodeHealth::Up;
            self.commit(vec![], vec![back]).map_err(unavailable)?;
            self.wants_schedule = true;
            tracing::info!(node = %req.node, "node is back");
        }
        Ok(ComputeResponse::HeartbeatAck(HeartbeatAck { kill: self.stale_jobs(&req.node, &req.running) }))
    }

    /// Of the job runs a node says it has, those the head does not expect there: to be killed.
    fn stale_jobs(&self, node: &NodeId, running: &[JobRun]) -> Vec<JobRun> {
        let expected = |r: &JobRun| {
            self.jobs.get(&r.job).is_some_and(|job| {
                !job.state.is_terminal()
                    && job.run == r.run
                    && job.nodes.iter().any(|n| &n.node == node && n.end.is_none())
            })
        };
        running.iter().filter(|r| !expected(r)).copied().collect()
    }

    fn report_start(&mut self, req: ReportJobStart) -> Result<(), StoreError> {
        let Some(mut job) = self.jobs.get(&req.job).cloned().filter(|j| j.run == req.run) else {
            return Ok(()); // ended or requeued meanwhile; the heartbeat fences it
        };
        if let Some(slot) = job.nodes.iter_mut().find(|n| n.node == req.node && n.started_at.is_none()) {
            slot.started_at = Some(req.started_at);
            // Lost in a crash, a start is re-sent by the next head and acknowledged again.
            self.commit_lazily(vec![job], vec![])?;
        }
        Ok(())
    }

    /// Records that `node` is done with its share of a job run: releases its reservation there
    /// and, once every node is done, gives the job its final state, or requeues it (a lost node
    /// and `--requeue`). `started_at` is the node's start, when it was not reported on its own.
    /// Idempotent: a repeated report, or one from an earlier run, changes nothing.
    pub fn record_node_end(
        &mut self,
        run: JobRun,
        node_id: &NodeId,
        end: NodeEnd,
        started_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let job = match self.jobs.get(&run.job) {
            Some(job) => Some(job.clone()),
            None => self.store.job(run.job)?,
        };
        let Some(mut job) = job.filter(|j| j.run == run.run) else {
            // A run that is over, or a job the head does not know: its reservation went with it.
            return Ok(());
        };
        let mut nodes = Vec::new();
        if let Some(node) = self.nodes.get(node_id) {
            let mut node = node.clone();
            if node.release(run.job) {
                nodes.push(node);
            }
        }
        let Some(slot) = job.nodes.iter_mut().find(|n| &n.node == node_id && n.end.is_none()) else {
            return self.commit(vec![], nodes);
        };
        let failed_to_run = matches!(end.cause, NodeEndCause::LaunchFailed { .. } | NodeEndCause::Lost { .. });
        slot.end = Some(end);
        slot.started_at = slot.started_at.or(started_at);
        let mut kill_others = Vec::new();
        if matches!(job.state, JobState::Running { .. }) {
            if job.nodes.iter().all(|n| n.end.is_some()) {
                let lost = job
                    .nodes
                    .iter()
                    .any(|n| matches!(n.end.as_ref().map(|e| &e.cause), Some(NodeEndCause::Lost { .. })));
                if lost && job.spec.requeue {
                    // Every other node has confirmed its replicas are gone: the job may run again.
                    job.state = JobState::Pending;
                    job.nodes.clear();
                    job.run += 1;
                    tracing::info!(job = %run.job, requeues = job.run, "job requeued after losing a node");
                } else {
                    job.state = final_state(&job, now);
                    tracing::info!(job = %run.job, state = job.state.name(), "job ended");
                }
            } else if failed_to_run {
                // Without this node's share the job cannot do its work: stop the rest.
                kill_others = job.nodes.iter().filter(|n| n.end.is_none()).map(|n| n.node.clone()).collect();
            }
        }
        self.commit(vec![job], nodes)?;
        self.send_free(run, &kill_others);
        self.wants_schedule = true;
        Ok(())
    }

    // ------------------------------------------------------------------ events

    /// A request to a node did not get through.
    pub fn delivery_failed(&mut self, failure: DeliveryFailure, now: Timestamp) {
        match failure.request {
            NodeRequest::StartJob(StartJob { job }) => {
                let end = NodeEnd {
                    ended_at: now,
                    cause: NodeEndCause::LaunchFailed { reason: failure.error },
                    replicas: vec![],
                };
                if let Err(e) = self.record_node_end(job.job_run(), &failure.node, end, None, now) {
                    tracing::error!(job = %job.id, error = %e, "cannot record a failed start");
                }
            }
            // The reservation stays until the node reports the end or is declared Down.
            other => {
                tracing::warn!(node = %failure.node, request = ?other, error = %failure.error, "undelivered request")
            }
        }
    }

    /// Periodic duties: declare silent nodes Down.
    pub fn tick(&mut self, now: Timestamp) {
        let timeout = self.settings.heartbeat_timeout;
        let silent: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.is_up() && n.role == Role::Compute && now.since(n.last_heartbeat) > timeout)
            .map(|n| n.id.clone())
            .collect();
        for id in silent {
            if let Err(e) = self.mark_down(&id, now) {
                tracing::error!(node = %id, error = %e, "cannot mark a node down");
            }
        }
        self.wants_schedule = true;
    }

    fn mark_down(&mut self, id: &NodeId, now: Timestamp) -> Result<(), StoreError> {
        let Some(mut node) = self.nodes.get(id).cloned() else { return Ok(()) };
        let reason = format!("no heartbeat for {} s", now.since(node.last_heartbeat).as_secs());
        tracing::warn!(node = %id, %reason, "node is down");
        let runs: Vec<JobRun> = node.allocations.iter().map(|a| self.current_run(a.job)).collect();
        node.health = NodeHealth::Down { since: now, reason: reason.clone() };
        self.commit(vec![], vec![node])?;
        for run in runs {
            let end = NodeEnd {
                ended_at: now,
                cause: NodeEndCause::Lost { reason: format!("node {id} went down ({reason})") },
                replicas: vec![],
            };
            self.record_node_end(run, id, end, None, now)?;
        }
        Ok(())
    }

    /// Runs a scheduling pass if anything changed since the last one.
    pub fn schedule_if_needed(&mut self, now: Timestamp) {
        if std::mem::take(&mut self.wants_schedule) {
            self.schedule(now);
        }
    }

    /// Places what fits, persists the placements in one write, and queues the starts for the nodes.
    pub fn schedule(&mut self, now: Timestamp) {
        if !self.jobs.values().any(|j| j.state == JobState::Pending) {
            return;
        }
        let views: Vec<NodeView> = self
            .nodes
            .values()
            .filter(|n| n.role == Role::Compute && n.is_up())
            .map(|n| NodeView {
                id: n.id.clone(),
                capacity: n.capacity,
                free: n.free(),
                only_uid: n.only_uid,
                max_procs: self.max_procs(n),
            })
            .collect();
        // Jobs in id order; the scheduler stops at the first pending one that does not fit.
        let pending = self.jobs.values().filter(|j| j.state == JobState::Pending);
        let placements = scheduler::schedule(pending, &views);
        if placements.is_empty() {
            return;
        }
        let mut jobs = Vec::with_capacity(placements.len());
        let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
        for placement in placements {
            let Some(mut job) = self.jobs.get(&placement.job).cloned() else { continue };
            job.state = JobState::Running { started_at: now };
            job.nodes =
                placement.nodes.iter().map(|n| JobNode { node: n.clone(), started_at: None, end: None }).collect();
            for id in &placement.nodes {
                let node = match nodes.get_mut(id) {
                    Some(node) => node,
                    None => match self.nodes.get(id) {
                        Some(node) => nodes.entry(id.clone()).or_insert_with(|| node.clone()),
                        None => continue,
                    },
                };
                node.allocations.push(Allocation { job: job.id, resources: job.spec.per_node });
            }
            jobs.push(job);
        }
        let starts: Vec<Job> = jobs.clone();
        if let Err(e) = self.commit(jobs, nodes.into_values().collect()) {
            // Nothing was placed; the next pass tries again.
            tracing::error!(error = %e, "cannot persist placements");
            return;
        }
        for job in starts {
            tracing::info!(job = %job.id, nodes = ?job.nodes.iter().map(|n| n.node.as_str()).collect::<Vec<_>>(), "job placed");
            for id in job.node_ids() {
                self.send(id, NodeRequest::StartJob(StartJob { job: job.clone() }));
            }
        }
    }
}

/// The uid that anonymous listings are made as: no job is theirs, and no operator has it.
const ANONYMOUS: u32 = u32::MAX;

/// What the head answers a request with.
pub enum HeadReply {
    Client(Reply<ClientResponse>),
    Compute(Reply<ComputeResponse>),
}

/// The host of `tcp://HOST:PORT` or `HOST:PORT`.
fn host_of(address: &str) -> &str {
    let address = address.strip_prefix("tcp://").unwrap_or(address);
    address.rsplit_once(':').map_or(address, |(host, _)| host)
}

fn not_found(id: JobId) -> ErrorReply {
    ErrorReply::new(ErrorCode::NotFound, format!("job {id} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::comm::RecordingComm;
    use crate::store::embedded::EmbeddedStore;
    use crate::testing::{JobBuilder, NodeBuilder};
    use cm_common::job::{ExitStatus, ReplicaExit};
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
        }
    }

    /// A compute request as the node it names sends it (sealed with the cluster key).
    fn from_node(core: &mut HeadCore, request: ComputeRequest, now: Timestamp) -> Reply<ComputeResponse> {
        let node = match &request {
            ComputeRequest::RegisterNode(r) => r.node.clone(),
            ComputeRequest::Heartbeat(h) => h.node.clone(),
            ComputeRequest::ReportJobs(r) => match r.reports.first() {
                Some(JobReport::Start(s)) => s.node.clone(),
                Some(JobReport::End(e)) => e.node.clone(),
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
        fn finished_jobs(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
            self.inner.finished_jobs(limit)
        }
        fn nodes(&self) -> Result<Vec<Node>, StoreError> {
            self.inner.nodes()
        }
    }

    impl Fixture {
        /// A head with compute nodes `ids` (2 CPUs, 512 MB each) registered.
        fn new(ids: &[&str]) -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let inner = EmbeddedStore::open(&dir.path().join("cm.redb")).expect("store");
            let failing_sync = Arc::new(AtomicBool::new(false));
            let store = FlakyStore { inner, failing_sync: failing_sync.clone() };
            let sent = RecordingComm::default();
            let me = Node { role: Role::Head, ..NodeBuilder::new("head").build() };
            let settings = settings();
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
                };
                from_node(&mut core, ComputeRequest::RegisterNode(register), Timestamp(0)).expect("register");
            }
            Fixture { core, sent, failing_sync, _dir: dir }
        }

        fn submit(&mut self, builder: JobBuilder, token: &str) -> Reply<ClientResponse> {
            let req = AssignJobId { spec: builder.spec(), token: token.into() };
            self.core.handle_client(ALICE, ClientRequest::AssignJobId(req), Timestamp(10))
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
            ClientRequest::FetchJobs(FetchJobs { include_finished: false, limit }),
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
            ClientRequest::FetchJobs(FetchJobs { include_finished: true, limit: None }),
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
        let request = HeadRequest::Client(ClientRequest::FetchJobs(FetchJobs { include_finished: true, limit: None }));
        match f.core.handle(identity, request, Timestamp(20)) {
            HeadReply::Client(Ok(ClientResponse::Jobs(reply))) => Ok(reply.jobs.iter().map(|j| j.id).collect()),
            HeadReply::Client(Err(e)) => Err(e),
            HeadReply::Client(Ok(other)) => panic!("{other:?}"),
            HeadReply::Compute(other) => panic!("{other:?}"),
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
        assert!(matches!(
            f.core.handle(&Identity::Daemon("a".into()), beat(), Timestamp(1)),
            HeadReply::Compute(Ok(_))
        ));
        let address = f.core.node(&NodeId::new("a")).expect("a").address.clone();
        let register = |address: &str| RegisterNode {
            node: NodeId::new("a"),
            address: address.into(),
            capacity: Resources::new(2, 512),
            only_uid: None,
            running: vec![],
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
        let exited = NodeEnd { ended_at: Timestamp(30), cause: NodeEndCause::Exited, replicas: vec![] };
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
        assert!(
            matches!(f.state(one), JobState::Completed { .. }) && matches!(f.state(two), JobState::Completed { .. })
        );
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
            end: NodeEnd { ended_at: Timestamp(6_003), cause: NodeEndCause::Exited, replicas: vec![] },
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
            let settings = settings();
            HeadCore::open(Box::new(store), Box::new(comm), me, settings, Timestamp(1)).expect("open")
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
        let end = NodeEnd { ended_at: Timestamp(3), cause: NodeEndCause::Exited, replicas: vec![] };
        core.record_node_end(JobRun { job: JobId(1), run: 0 }, &NodeId::new("a"), end, None, Timestamp(3))
            .expect("end");
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
}
