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
//! while its processes are still dying. The users' requests, and who may make them, are in
//! [`clients`], cancelling jobs in [`kills`], dependencies between jobs in [`dependencies`],
//! finished jobs kept a while in [`finished`], operators' orders about nodes in [`admin`], faults
//! injected on purpose in [`faults`], MPI fences across nodes in [`fences`]; the tests in
//! `tests.rs`. Arrays' tasks are split off their array's record as they start (`scheduling`).

mod admin;
mod clients;
mod dependencies;
mod faults;
mod fences;
mod finished;
mod kills;
mod queued;
mod reasons;
mod scheduling;

pub use clients::HeadReply;

use super::comm::{DeliveryFailure, NodeComm};
use super::tokens::RecentTokens;
use super::user_names::UserNames;
use crate::scheduler::{self, NodeView};
use crate::store::{Store, StoreError};
use cm_auth::Identity;
use cm_common::config::{JobLimits, SchedulingSettings, Unshared, WorkdirSettings};
use cm_common::job::{Job, JobFilter, JobNode, JobRun, JobSpec, JobState, NodeEnd, NodeEndCause};
use cm_common::node::{Allocation, Node, NodeHealth, Role};
use cm_common::partition::{Partition, Rules};
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
    /// Priorities and backfill.
    pub scheduling: SchedulingSettings,
    /// At least one (`config::validate` sees to it).
    pub partitions: Vec<Partition>,
    /// Which working directories the nodes share.
    pub workdirs: WorkdirSettings,
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
    /// Jobs settled lately (`limits.min_job_age`).
    finished: finished::Finished,
    /// How many of them are pending or running, in all and per user.
    queued: queued::Queued,
    /// Recent submission tokens, so a retried submit returns the same id.
    tokens: RecentTokens,
    /// The names jobs show for their uids.
    user_names: UserNames,
    /// The id of the last job submitted; the next gets the one after.
    last_job_id: JobId,
    /// Something changed that may let a pending job start.
    wants_schedule: bool,
    /// The next pass is the periodic one (see `scheduling.rs`: it runs even when no CPU is free).
    periodic_pass: bool,
    /// `settings.partitions`, ready to be checked (patterns compiled, times parsed): the head
    /// reads its partitions from here only.
    partitions: Vec<Rules>,
    /// The index in `partitions` of the one jobs that name none go to.
    default_partition: Option<usize>,
    /// By partition, the first pending job the last scheduling pass could not start and its
    /// reservation (for pending reasons).
    blocked: Vec<Option<scheduler::Blocked>>,
    /// Writes saved since the last successful store sync.
    unsynced: bool,
    /// The last store sync failed. Every turn of the loop waits for the store meanwhile, so
    /// heartbeats wait too: no node is declared down for the head's own outage, and once the
    /// store syncs again (`heartbeat_grace`) every node gets a fresh `heartbeat_timeout`.
    store_failing: bool,
    heartbeat_grace: bool,
    /// Messages to nodes, held until the writes they follow from are durable.
    outbox: Vec<(NodeId, NodeRequest)>,
    /// The MPI fences being gathered across nodes.
    fences: fences::Fences,
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
    // The first abort is the cause: the ranks of an MPI job abort in turn when a peer has gone.
    let first_abort = ends
        .iter()
        .filter_map(|(node, e)| match &e.cause {
            NodeEndCause::Aborted { reason } => Some((e.ended_at, node, reason)),
            _ => None,
        })
        .min_by_key(|(at, _, _)| *at);
    if let Some((_, node, reason)) = first_abort {
        return JobState::Failed { started_at, ended_at, reason: format!("{reason}, on {node}") };
    }
    if ends.iter().any(|(_, e)| e.cause == NodeEndCause::TimedOut) {
        return JobState::TimedOut { started_at, ended_at };
    }
    let failed =
        ends.iter().flat_map(|(node, e)| e.replicas.iter().map(move |r| (node, r))).find(|(_, r)| !r.status.success());
    // The kernel killed a process of the job for its memory: say where, and whom if a replica.
    if let Some((node, end)) = ends.iter().find(|(_, e)| e.usage.is_some_and(|u| u.oom_kills > 0)) {
        let failed_here = end.replicas.iter().find(|r| !r.status.success());
        let who = failed_here.map_or_else(|| "a process".to_string(), |r| format!("rank {} ({})", r.rank, r.status));
        let limit = job.spec.per_node.memory_mb;
        return JobState::OutOfMemory {
            started_at,
            ended_at,
            reason: format!("{who} on {node} ran out of memory: the job may use {limit} MB per node (--mem-per-node)"),
        };
    }
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
        for job in store.finished_jobs(&JobFilter::default(), RECENT_FINISHED)?.iter().chain(jobs.values()) {
            tokens.insert(job.submit_token.clone(), job.id);
        }
        let last_job_id = store.last_job_id()?;
        let partitions = settings.partitions.iter().cloned().map(Rules::new).collect();
        let default_partition = cm_common::partition::default_partition(&settings.partitions)
            .and_then(|d| settings.partitions.iter().position(|p| p.name == d.name));
        let finished = finished::Finished::new(settings.limits.min_job_age, settings.limits.max_finished_in_memory);
        let mut core = HeadCore {
            finished,
            store,
            comm,
            settings,
            me,
            nodes,
            queued: queued::Queued::of(jobs.values()),
            jobs,
            tokens,
            user_names: UserNames::default(),
            last_job_id,
            wants_schedule: true,
            periodic_pass: true,
            partitions,
            default_partition,
            blocked: Vec::new(),
            unsynced: false,
            store_failing: false,
            heartbeat_grace: false,
            outbox: Vec::new(),
            fences: fences::Fences::default(),
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

    /// A job no longer active: from memory while it is kept there, else from the store.
    fn ended_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        match self.finished.get(id) {
            Some(job) => Ok(Some(job.clone())),
            None => self.store.job(id),
        }
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
            if let Err(e) = self.store.sync() {
                self.store_failing = true;
                return Err(e);
            }
            self.unsynced = false;
            self.heartbeat_grace |= std::mem::take(&mut self.store_failing);
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
            self.queued.change(self.jobs.get(&job.id), Some(&job));
            if job.is_settled() {
                self.jobs.remove(&job.id);
                self.finished.keep(&job, job.state.ended_at().unwrap_or(job.submitted_at));
            } else {
                self.jobs.insert(job.id, job);
            }
        }
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
            ComputeRequest::LeaveCluster(req) => speaks_for(&req.node).and_then(|()| {
                self.leave(&req.node, now).map_err(unavailable)?;
                Ok(ComputeResponse::Ack(Ack {}))
            }),
            ComputeRequest::ReportJobs(ReportJobs { reports }) => {
                for report in &reports {
                    match report {
                        JobReport::Start(r) => speaks_for(&r.node)?,
                        JobReport::End(r) => speaks_for(&r.node)?,
                        JobReport::Fence(r) => speaks_for(&r.node)?,
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
                        JobReport::Fence(req) => {
                            self.report_fence(req);
                            Ok(())
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
        let mut node = self
            .nodes
            .get(&req.node)
            .cloned()
            .unwrap_or_else(|| Node::new(req.node.clone(), Role::Compute, String::new(), req.capacity, now));
        node.address = req.address;
        node.capacity = req.capacity;
        node.only_uid = req.only_uid;
        // A sentence for listings (cminfo escapes what it shows); a longer one is cut.
        node.containment = req.containment.chars().take(200).collect();
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
                usage: None,
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
        // Without this node's share the job cannot do its work.
        let failed_to_run = matches!(
            end.cause,
            NodeEndCause::LaunchFailed { .. } | NodeEndCause::Lost { .. } | NodeEndCause::Aborted { .. }
        );
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
                    usage: None,
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

    /// Periodic duties: declare silent nodes Down (not while the store fails: see `store_failing`).
    pub fn tick(&mut self, now: Timestamp) {
        self.wants_schedule = true;
        self.periodic_pass = true;
        self.finished.expire(now);
        let jobs = &self.jobs;
        self.fences.retain(|run| {
            jobs.get(&run.job).is_some_and(|j| j.run == run.run && matches!(j.state, JobState::Running { .. }))
        });
        if self.store_failing {
            return;
        }
        if std::mem::take(&mut self.heartbeat_grace) {
            self.nodes.values_mut().for_each(|n| n.last_heartbeat = n.last_heartbeat.max(now));
        }
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
    }

    /// A node that leaves for good: its jobs end as lost there (and are requeued where they
    /// allow it), and the node is forgotten, so that it is not listed Down for ever.
    fn leave(&mut self, id: &NodeId, now: Timestamp) -> Result<(), StoreError> {
        let Some(node) = self.nodes.get(id) else { return Ok(()) };
        tracing::info!(node = %id, "node left the cluster");
        let runs: Vec<JobRun> = node.allocations.iter().map(|a| self.current_run(a.job)).collect();
        self.lose_runs(id, runs, format!("node {id} left the cluster"), now)?;
        // The jobs' ends are durable before the node they name is gone.
        self.sync()?;
        self.store.remove_node(id)?;
        self.nodes.remove(id);
        self.wants_schedule = true;
        Ok(())
    }

    fn mark_down(&mut self, id: &NodeId, now: Timestamp) -> Result<(), StoreError> {
        let Some(mut node) = self.nodes.get(id).cloned() else { return Ok(()) };
        let reason = format!("no heartbeat for {} s", now.since(node.last_heartbeat).as_secs());
        tracing::warn!(node = %id, %reason, "node is down");
        let runs: Vec<JobRun> = node.allocations.iter().map(|a| self.current_run(a.job)).collect();
        node.health = NodeHealth::Down { since: now, reason: reason.clone() };
        self.commit(vec![], vec![node])?;
        self.lose_runs(id, runs, format!("node {id} went down ({reason})"), now)
    }

    /// Ends `runs` on node `id` as lost there, for `reason`.
    fn lose_runs(&mut self, id: &NodeId, runs: Vec<JobRun>, reason: String, now: Timestamp) -> Result<(), StoreError> {
        for run in runs {
            let end = NodeEnd {
                ended_at: now,
                cause: NodeEndCause::Lost { reason: reason.clone() },
                replicas: vec![],
                usage: None,
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
mod tests;
