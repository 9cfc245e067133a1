//! The compute role: runs the jobs the head places here and reports how they end.
//!
//! `run` binds the node's port, adopts the job supervisors a previous daemon left running
//! ([`steps`]), starts the [`head_link`] (registration, heartbeats, reports) and then runs one
//! loop: requests from the head (on the node's socket) and ended runs, acknowledged
//! reports and kill orders ([`Event`]s from other threads) come out of one
//! [`crate::service::Inbox`]. Each job run is owned by a supervisor process (`cmstep`, crate
//! `cm-step`), which starts the replicas and enforces the time limit, so jobs keep running, and
//! are reported, across a restart of this daemon.

pub mod accounts;
pub mod faults;
pub mod head_link;
pub mod launcher;
pub mod pmi_relay;
pub mod steps;

use crate::service::{EventSender, Inbox, Next};
use crate::settings::ComputeConfig;
use accounts::Accounts;
use anyhow::{anyhow, Context};
use cm_auth::{ClusterKey, Gate};
use cm_common::job::{Job, JobRun, NodeEnd, NodeEndCause};
use cm_common::protocol::*;
use cm_common::{JobId, Resources, Timestamp};
use cm_step::cgroup;
use cm_step::pmi::relay::FenceOut;
use cm_transport::{Responder, RetryPolicy};
use head_link::{HeadLink, LinkConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use steps::{Containment, Steps};

/// What the compute loop hears from its other threads.
pub enum Event {
    /// A supervisor started by this daemon is done with a run: it recorded the end, or died.
    StepEnded(JobRun),
    /// The head has acknowledged a run's end.
    EndAcked(JobRun),
    /// The head says these job runs must not run here (any more).
    Kill(Vec<JobRun>),
    /// A supervisor's MPI fence, for the head.
    Fence(pmi_relay::FenceRequest),
    /// The head link gave up (registration failed for good).
    Fatal(String),
}

/// How long a fence waits for the head's answer before it is reported again (the head may have
/// restarted and forgotten it, or its answer may have been lost).
const FENCE_REPEAT: Duration = Duration::from_secs(3);

/// A fence reported to the head, waiting for its answer.
struct PendingFence {
    report: ReportFence,
    answer: std::sync::mpsc::Sender<FenceOut>,
    reported_at: Instant,
}

const MAX_WAIT: Duration = Duration::from_millis(250);

/// The address the head should use: the bound endpoint, with a wildcard host replaced.
fn advertised(endpoint: &str, advertise: Option<&str>) -> String {
    if let Some(address) = advertise {
        return cm_transport::tcp_endpoint(address);
    }
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into());
    endpoint.replace("0.0.0.0", &host).replace("://*:", &format!("://{host}:"))
}

struct Compute {
    config: ComputeConfig,
    capacity: Resources,
    /// Whether this daemon can switch users (runs as root).
    is_root: bool,
    my_uid: u32,
    steps: Steps,
    /// The groups of the users whose jobs run here.
    accounts: Accounts,
    link: HeadLink,
    events: EventSender<Event>,
    /// Runs to start once an earlier run of the same job has stopped here, by job. The head
    /// requeues a job when it declares a silent node Down; if that node comes back, it is told
    /// to stop the earlier run and may be given the next one at once.
    waiting: BTreeMap<JobId, Job>,
    /// MPI fences reported to the head, by run and fence.
    fences: BTreeMap<(JobRun, u32), PendingFence>,
    /// The cluster key, for the request that says goodbye.
    key: Arc<ClusterKey>,
    /// A fault an operator asked for, acted out once its order is answered.
    fault_due: Option<Fault>,
    /// Cut off from the head until then (`cmctl fault isolate`).
    isolation: faults::Isolation,
}

/// How this node contains its jobs: in cgroups where the host allows and the configuration does
/// not forbid it (said once, in the log, when it cannot), and on the CPUs the daemon may use.
/// Also returns how, for `cminfo`: `cgroup v1`, `cgroup v2` or `none: WHY`.
fn containment(config: &ComputeConfig) -> (Containment, String) {
    let host_cpus: Vec<u32> = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count() as u32).filter(|&c| set.is_set(c as usize).unwrap_or(false)).collect()
        })
        .unwrap_or_default();
    let found = if config.cgroups.enabled {
        cgroup::detect::Host::read().and_then(|host| host.prepare(config.node_id.as_str(), &config.state_dir))
    } else {
        Err("cgroups.enabled is false".to_string())
    };
    let described = match &found {
        Ok(hierarchy) => {
            tracing::info!(containment = %hierarchy.describe(), "jobs run in cgroups of their own");
            hierarchy.describe()
        }
        Err(reason) => {
            tracing::warn!(%reason, "jobs run without cgroups: their memory and processes are not capped, and a process that leaves its job's process group is not killed with it");
            format!("none: {reason}")
        }
    };
    let containment = Containment {
        cgroup: found.ok(),
        host_cpus,
        gpus: config.resources.gpus,
        max_pids: config.cgroups.max_pids_per_job,
    };
    (containment, described)
}

/// Runs the compute daemon until `shutdown` is set. `bound` receives the endpoint listened on.
pub fn run(
    config: ComputeConfig,
    key: Arc<ClusterKey>,
    shutdown: Arc<AtomicBool>,
    bound: impl FnOnce(&str),
) -> anyhow::Result<()> {
    let capacity = config.resources;
    let responder = Responder::bind(&config.listen, config.max_message_size)
        .with_context(|| format!("the compute daemon cannot listen on {}", config.listen))?;
    let endpoint = responder.endpoint().to_string();
    let address = advertised(&endpoint, config.advertise.as_deref());
    tracing::info!(%endpoint, %address, node = %config.node_id, cpus = capacity.cpus, memory_mb = capacity.memory_mb, "compute listening");
    bound(&endpoint);

    let my_uid = nix::unistd::getuid().as_raw();
    let is_root = my_uid == 0;
    let gate = Gate::node(key.clone(), config.node_id.as_str());
    let (mut inbox, events) = Inbox::<NodeRequest, Event>::new(responder, config.node_id.to_string(), gate)?;
    let (containment, described) = containment(&config);
    let mut steps = Steps::new(&config.state_dir, config.node_id.clone(), config.kill_grace, containment.clone())
        .with_context(|| format!("cannot use the state directory {}", config.state_dir.display()))?;
    let ended_meanwhile = steps.adopt();
    match pmi_relay::listen(&config.state_dir, events.clone(), shutdown.clone()) {
        Ok(path) => steps.set_pmi_relay(path),
        Err(e) => tracing::warn!(error = %e, "MPI jobs cannot span this node and others"),
    }
    if let Some(hierarchy) = &containment.cgroup {
        // Left by supervisors that died; those of the runs adopted may be starting.
        let known: Vec<String> = steps.runs().into_iter().map(cgroup::cgroup_name).collect();
        hierarchy.remove_empty(&known);
    }
    // Registration tells the head what still runs here.
    let running = Arc::new(Mutex::new(steps.runs()));
    let isolation = faults::Isolation::default();
    let link = HeadLink::spawn(
        LinkConfig {
            head_address: config.head_address.clone(),
            node: config.node_id.clone(),
            address,
            capacity,
            only_uid: (!is_root).then_some(my_uid),
            containment: described,
            key: key.clone(),
            heartbeat_interval: config.heartbeat_interval,
            register_retries: config.register_retries,
            register_retry_wait: config.register_retry_wait,
            policy: RetryPolicy::new(config.request_timeout, config.request_retries),
            isolation: isolation.clone(),
        },
        running.clone(),
        events.clone(),
        shutdown.clone(),
    )?;
    let mut compute = Compute {
        config,
        capacity,
        is_root,
        my_uid,
        steps,
        accounts: Accounts::default(),
        link,
        events,
        waiting: BTreeMap::new(),
        fences: BTreeMap::new(),
        key,
        fault_due: None,
        isolation,
    };
    for (run, end) in ended_meanwhile {
        compute.report_end(run, end);
    }

    let mut result = Ok(());
    let mut next_poll = Instant::now() + compute.config.status_interval;
    while !shutdown.load(Ordering::Relaxed) {
        match inbox.next(next_poll.saturating_duration_since(Instant::now()).min(MAX_WAIT)) {
            Ok(Some(Next::Request(_))) if compute.isolation.active() => inbox.forget(),
            Ok(Some(Next::Request(request))) => {
                // Only the cluster's daemons get here: the node's gate takes nothing else.
                let reply = compute.handle(request.body);
                inbox.reply(&reply);
                compute.act_out_fault();
            }
            Ok(Some(Next::Event(Event::StepEnded(run)))) => compute.step_ended(run),
            Ok(Some(Next::Event(Event::EndAcked(run)))) => compute.steps.acknowledged(run),
            Ok(Some(Next::Event(Event::Kill(runs)))) => {
                for run in runs {
                    if compute.steps.run_of(run.job) == Some(run.run) {
                        compute.steps.stop(run.job);
                    }
                }
            }
            Ok(Some(Next::Event(Event::Fence(request)))) => compute.fence(request),
            Ok(Some(Next::Event(Event::Fatal(message)))) => {
                result = Err(anyhow!(message));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                result = Err(anyhow!("the node's socket failed: {e}"));
                break;
            }
        }
        compute.repeat_fences();
        if Instant::now() >= next_poll {
            for run in compute.steps.ended_adopted() {
                compute.step_ended(run);
            }
            next_poll = Instant::now() + compute.config.status_interval;
        }
        if let Ok(mut ids) = running.lock() {
            *ids = compute.steps.runs();
        }
    }
    shutdown.store(true, Ordering::Relaxed);
    if compute.config.leave_on_stop {
        compute.leave_cluster();
    } else {
        tracing::info!("compute daemon shutting down; its jobs keep running under their supervisors");
    }
    let idle = compute.steps.runs().is_empty();
    // The launcher goes, and its idle supervisors with it, each leaving its own cgroups; a node
    // with no job left leaves nothing behind.
    drop(compute);
    if let (Some(hierarchy), true) = (&containment.cgroup, idle) {
        let until = Instant::now() + Duration::from_secs(2);
        while !hierarchy.remove_if_unused() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    result
}

impl Compute {
    fn handle(&mut self, request: NodeRequest) -> Reply<NodeResponse> {
        match request {
            NodeRequest::GetNodeStatus(_) => Ok(NodeResponse::NodeStatus(NodeStatusReply {
                node: self.config.node_id.clone(),
                capacity: self.capacity,
                allocated: self.steps.allocated(),
                running: self.steps.runs(),
            })),
            NodeRequest::HostJob(req) => {
                let reason = if !self.may_run_as(req.uid) {
                    Some(self.uid_refusal(req.uid))
                } else if !self.capacity.saturating_sub(&self.steps.allocated()).contains(&req.per_node) {
                    Some("not enough free CPUs or memory".to_string())
                } else {
                    None
                };
                Ok(NodeResponse::CanHost(CanHost { ok: reason.is_none(), reason }))
            }
            NodeRequest::StartJob(StartJob { job }) => {
                let run = job.job_run();
                if self.steps.knows(run) || self.waiting.get(&job.id).is_some_and(|w| w.run == job.run) {
                    return Ok(NodeResponse::Ack(Ack {})); // a retried request: never run a job twice
                }
                let uid = job.spec.user.uid;
                if !self.may_run_as(uid) {
                    return Err(ErrorReply::new(ErrorCode::PermissionDenied, self.uid_refusal(uid)));
                }
                match self.steps.run_of(job.id) {
                    Some(here) if here > job.run => Err(ErrorReply::new(
                        ErrorCode::Invalid,
                        format!(
                            "run {here} of job {} runs on {}, a later one than {}",
                            job.id, self.config.node_id, run
                        ),
                    )),
                    Some(earlier) => {
                        tracing::info!(job = %job.id, earlier, run = job.run, "job waits for its earlier run to stop");
                        self.steps.stop(job.id);
                        self.waiting.insert(job.id, job);
                        Ok(NodeResponse::Ack(Ack {}))
                    }
                    None => self.start(&job).map(|()| NodeResponse::Ack(Ack {})),
                }
            }
            NodeRequest::FreeResources(FreeResources { job, run }) => {
                if self.steps.run_of(job).is_some_and(|here| here <= run) {
                    self.steps.stop(job);
                }
                if self.waiting.get(&job).is_some_and(|w| w.run <= run) {
                    if let Some(waiting) = self.waiting.remove(&job) {
                        self.end_unstarted(waiting.job_run(), NodeEndCause::Killed);
                    }
                }
                Ok(NodeResponse::Ack(Ack {}))
            }
            NodeRequest::InjectFault(fault) => {
                if let Fault::KillRank { job, rank } = fault {
                    let supervisor = self
                        .steps
                        .supervisor(job)
                        .ok_or_else(|| ErrorReply::new(ErrorCode::NotFound, format!("job {job} does not run here")))?;
                    faults::kill_rank(supervisor, job, rank).map_err(|e| ErrorReply::new(ErrorCode::NotFound, e))?;
                    tracing::warn!(%job, rank, "killed a rank on an operator's order (cmctl fault)");
                } else {
                    self.fault_due = Some(fault);
                }
                Ok(NodeResponse::Ack(Ack {}))
            }
            NodeRequest::FenceDone(done) => {
                let run = JobRun { job: done.job, run: done.run };
                if let Some(pending) = self.fences.remove(&(run, done.epoch)) {
                    let out = match done.refused {
                        Some(reason) => FenceOut::Refused { reason },
                        None => FenceOut::Done { epoch: done.epoch, kvs: done.kvs },
                    };
                    // A supervisor that has gone asks again, and the head answers again.
                    let _ = pending.answer.send(out);
                }
                Ok(NodeResponse::Ack(Ack {}))
            }
        }
    }

    /// Acts out the fault an operator asked for, now that the order is answered.
    fn act_out_fault(&mut self) {
        match self.fault_due.take() {
            Some(Fault::Crash { .. }) => {
                tracing::error!("crashing on an operator's order (cmctl fault crash)");
                std::process::exit(1);
            }
            Some(Fault::Freeze { seconds, .. }) => {
                tracing::warn!(seconds, "freezing on an operator's order (cmctl fault freeze)");
                if let Err(e) = faults::freeze(seconds) {
                    tracing::error!(error = %e, "cannot freeze");
                }
            }
            Some(Fault::Isolate { seconds, .. }) => {
                tracing::warn!(seconds, "cut off from the head on an operator's order (cmctl fault isolate)");
                self.isolation.begin(seconds);
            }
            Some(Fault::KillRank { .. }) | None => {}
        }
    }

    /// Tells the head this node is leaving for good, and stops its jobs (the head has ended them).
    fn leave_cluster(&mut self) {
        let sealed =
            cm_auth::Credentials::Sealed { key: self.key.clone(), recipient: cm_auth::credentials::HEAD.into() };
        let node = self.config.node_id.clone();
        let policy = RetryPolicy::new(Duration::from_secs(2), 1);
        let left = cm_transport::Requester::new(&self.config.head_address, policy, node.as_str(), sealed)
            .map_err(|e| e.to_string())
            .and_then(|mut requester| {
                let request = HeadRequest::Compute(ComputeRequest::LeaveCluster(LeaveCluster { node }));
                match requester.call::<HeadRequest, ComputeResponse>(&request) {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(refusal)) => Err(refusal.message),
                    Err(e) => Err(e.to_string()),
                }
            });
        match left {
            Ok(()) => tracing::info!("left the cluster; stopping this node's jobs"),
            Err(e) => tracing::warn!(error = %e, "could not tell the head this node leaves; stopping its jobs"),
        }
        for run in self.steps.runs() {
            self.steps.stop(run.job);
        }
    }

    /// A supervisor's fence: reported to the head, answered when the head answers.
    fn fence(&mut self, request: pmi_relay::FenceRequest) {
        let pmi_relay::FenceRequest { fence, answer } = request;
        if self.steps.run_of(fence.run.job) != Some(fence.run.run) {
            let reason = format!("job run {} does not run on {}", fence.run, self.config.node_id);
            let _ = answer.send(FenceOut::Refused { reason });
            return;
        }
        let report = ReportFence {
            node: self.config.node_id.clone(),
            job: fence.run.job,
            run: fence.run.run,
            epoch: fence.epoch,
            puts: fence.puts,
        };
        self.link.report(JobReport::Fence(report.clone()));
        self.fences.insert((fence.run, fence.epoch), PendingFence { report, answer, reported_at: Instant::now() });
    }

    /// Reports again the fences the head has not answered for a while; forgets those of runs
    /// that ended here.
    fn repeat_fences(&mut self) {
        if self.fences.is_empty() {
            return;
        }
        let steps = &self.steps;
        self.fences.retain(|(run, _), _| steps.run_of(run.job) == Some(run.run));
        for pending in self.fences.values_mut() {
            if pending.reported_at.elapsed() >= FENCE_REPEAT {
                self.link.report(JobReport::Fence(pending.report.clone()));
                pending.reported_at = Instant::now();
            }
        }
    }

    /// Starts this node's share of `job` and reports the start to the head.
    fn start(&mut self, job: &Job) -> Reply<()> {
        let events = self.events.clone();
        let uid = job.spec.user.uid;
        let run_as = if self.is_root && uid != self.my_uid {
            let who = self.accounts.run_as(uid, self.config.node_id.as_str());
            Some(who.map_err(|e| ErrorReply::new(ErrorCode::Invalid, e))?)
        } else {
            None
        };
        // On a node with GPUs every run gets its list, empty if it reserved none.
        let wanted = job.spec.per_node.gpus;
        let gpus = match self.capacity.gpus {
            0 => None,
            all => Some(self.steps.free_gpus(all, wanted).ok_or_else(|| {
                ErrorReply::new(ErrorCode::Unavailable, format!("{} has not {wanted} GPU(s) free", self.config.node_id))
            })?),
        };
        let cpus = self.steps.free_cpus(self.capacity.cpus, job.spec.per_node.cpus);
        let on_end = move |run| {
            events.send(Event::StepEnded(run));
        };
        self.steps.start(job, run_as, gpus, cpus, on_end).map_err(|e| {
            tracing::warn!(job = %job.id, error = %e, "cannot start job");
            ErrorReply::new(ErrorCode::Internal, e)
        })?;
        let started_at = Timestamp::now();
        tracing::info!(job = %job.id, replicas = job.spec.procs_per_node, "job started");
        self.link.report(JobReport::Start(ReportJobStart {
            node: self.config.node_id.clone(),
            job: job.id,
            run: job.run,
            started_at,
        }));
        Ok(())
    }

    fn may_run_as(&self, uid: u32) -> bool {
        self.is_root || uid == self.my_uid
    }

    fn uid_refusal(&self, uid: u32) -> String {
        format!(
            "the compute daemon on {} runs as uid {} and cannot run jobs as uid {uid}; run it as root to serve every user",
            self.config.node_id, self.my_uid
        )
    }

    fn step_ended(&mut self, run: JobRun) {
        if let Some(end) = self.steps.end_of(run) {
            self.report_end(run, end);
        }
        if self.steps.run_of(run.job).is_some() {
            return;
        }
        if let Some(job) = self.waiting.remove(&run.job) {
            if let Err(e) = self.start(&job) {
                self.end_unstarted(job.job_run(), NodeEndCause::LaunchFailed { reason: e.message });
            }
        }
    }

    /// Ends a run that never started here (it waited for an earlier one to stop).
    fn end_unstarted(&mut self, run: JobRun, cause: NodeEndCause) {
        self.steps.remember_end(run);
        self.report_end(run, NodeEnd { ended_at: Timestamp::now(), cause, replicas: vec![], usage: None });
    }

    fn report_end(&self, run: JobRun, end: NodeEnd) {
        tracing::info!(job = %run, cause = ?end.cause, "job ended here");
        let report =
            ReportJobEnd { node: self.config.node_id.clone(), job: run.job, run: run.run, end, started_at: None };
        self.link.report(JobReport::End(report));
    }
}
