//! The compute node's side of the conversation with the head, on a thread of its own.
//!
//! It registers (retrying, with backoff, as configured), then sends heartbeats and the node's
//! reports (job start and end) in order, retrying them until the head has them, so an end is
//! never lost while the head is restarting. Whatever has queued up while the link was busy goes
//! in one request ([`ReportJobs`]), and a start is held back briefly ([`START_HOLD`]) so that,
//! once its end is queued, it rides in that end: a short job costs the head one request, a busy
//! node one request and one disk sync per batch. A head that does not know the node any more gets
//! a fresh registration. Jobs the head says to kill come back to the compute loop.

use super::Event;
use crate::service::EventSender;
use cm_auth::Credentials;
use cm_common::job::JobRun;
use cm_common::protocol::*;
use cm_common::{NodeId, Resources};
use cm_transport::{Requester, RetryPolicy};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the link needs to know.
pub struct LinkConfig {
    pub head_address: String,
    pub node: NodeId,
    pub address: String,
    pub capacity: Resources,
    pub only_uid: Option<u32>,
    /// How the node contains its jobs, for `cminfo`.
    pub containment: String,
    /// Every request to the head is sealed with it.
    pub key: std::sync::Arc<cm_auth::ClusterKey>,
    pub heartbeat_interval: Duration,
    pub register_retries: u32,
    pub register_retry_wait: Duration,
    pub policy: RetryPolicy,
    /// While active, nothing is sent (`cmctl fault isolate`); reports wait.
    pub isolation: super::faults::Isolation,
}

/// The most reports one request carries.
const MAX_BATCH: usize = 256;

/// How long a start report waits for its job's end, so that a short job costs the head one
/// report instead of two. Ends go at once (they free the node's resources on the head); the
/// start's time travels in the report, so holding it back changes no recorded time.
const START_HOLD: Duration = Duration::from_millis(20);

/// A handle to queue reports for the head.
#[derive(Clone)]
pub struct HeadLink {
    reports: Sender<JobReport>,
}

impl HeadLink {
    pub fn report(&self, report: JobReport) {
        if self.reports.send(report).is_err() {
            tracing::error!("the head link has stopped; a report is lost");
        }
    }

    /// Starts the link thread. `running` is this node's current job list, for heartbeats.
    pub fn spawn(
        config: LinkConfig,
        running: Arc<Mutex<Vec<JobRun>>>,
        events: EventSender<Event>,
        shutdown: Arc<AtomicBool>,
    ) -> anyhow::Result<HeadLink> {
        let (reports, inbox) = channel::<JobReport>();
        let sealed = Credentials::Sealed { key: config.key.clone(), recipient: cm_auth::credentials::HEAD.into() };
        let requester = Requester::new(&config.head_address, config.policy, config.node.as_str(), sealed)?;
        let mut link = Link { config, requester, running, events, shutdown, queue: VecDeque::new(), held_since: None };
        std::thread::Builder::new().name("head-link".into()).spawn(move || {
            if !link.register() {
                return;
            }
            let mut next_heartbeat = Instant::now() + link.config.heartbeat_interval;
            loop {
                let wake = link.held_since.map_or(next_heartbeat, |since| (since + START_HOLD).min(next_heartbeat));
                match inbox.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                    Ok(report) => {
                        link.enqueue(report);
                        for report in inbox.try_iter() {
                            link.enqueue(report);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if link.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                if link.config.isolation.active() {
                    next_heartbeat = Instant::now() + link.config.isolation.left().min(link.config.heartbeat_interval);
                    continue;
                }
                // Ends free resources on the head and fences hold MPI jobs: neither waits.
                let urgent = link.queue.iter().any(|r| matches!(r, JobReport::End(_) | JobReport::Fence(_)));
                if urgent || link.held_since.is_none_or(|since| since.elapsed() >= START_HOLD) {
                    link.flush();
                }
                if Instant::now() >= next_heartbeat {
                    link.heartbeat();
                    link.flush();
                    next_heartbeat = Instant::now() + link.config.heartbeat_interval;
                }
            }
        })?;
        Ok(HeadLink { reports })
    }
}

struct Link {
    config: LinkConfig,
    requester: Requester,
    running: Arc<Mutex<Vec<JobRun>>>,
    events: EventSender<Event>,
    shutdown: Arc<AtomicBool>,
    /// Reports not yet acknowledged, oldest first.
    queue: VecDeque<JobReport>,
    /// Since when a start report has been held back (see [`START_HOLD`]).
    held_since: Option<Instant>,
}

impl Link {
    /// One request to the head, wrapped as the head expects compute requests.
    fn call(&mut self, request: &ComputeRequest) -> cm_common::Result<Reply<ComputeResponse>> {
        self.requester.call(&HeadRequest::Compute(request.clone()))
    }

    fn running(&self) -> Vec<JobRun> {
        self.running.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Registers, retrying as configured; false if it gave up (the daemon then exits).
    fn register(&mut self) -> bool {
        let mut wait = Duration::from_millis(200);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let request = ComputeRequest::RegisterNode(RegisterNode {
                node: self.config.node.clone(),
                address: self.config.address.clone(),
                capacity: self.config.capacity,
                only_uid: self.config.only_uid,
                running: self.running(),
                containment: self.config.containment.clone(),
            });
            let problem = match self.call(&request) {
                Ok(Ok(ComputeResponse::Registered(registered))) => {
                    tracing::info!(head = %self.requester.endpoint(), "registered with the head");
                    self.kill(registered.kill);
                    return true;
                }
                Ok(Ok(other)) => format!("unexpected reply {other:?}"),
                Ok(Err(refusal)) => refusal.message,
                Err(e) => e.to_string(),
            };
            let retries = self.config.register_retries;
            if retries > 0 && attempt >= retries {
                let _ =
                    self.events.send(Event::Fatal(format!("could not register after {attempt} attempts: {problem}")));
                return false;
            }
            tracing::warn!(attempt, %problem, "registration failed; retrying");
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if self.shutdown.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            wait = (wait * 2).min(self.config.register_retry_wait);
        }
    }

    fn kill(&self, jobs: Vec<JobRun>) {
        if !jobs.is_empty() {
            tracing::warn!(?jobs, "the head says these jobs should not run here");
            self.events.send(Event::Kill(jobs));
        }
    }

    fn enqueue(&mut self, report: JobReport) {
        if matches!(report, JobReport::Start(_)) && self.held_since.is_none() {
            self.held_since = Some(Instant::now());
        }
        self.queue.push_back(report);
    }

    /// Sends the queued reports in order, in batches; stops when the head cannot take them now
    /// (what is left goes with the next report or heartbeat).
    fn flush(&mut self) {
        self.held_since = None;
        fold_starts_into_ends(&mut self.queue);
        while !self.queue.is_empty() {
            let count = self.queue.len().min(MAX_BATCH);
            let reports: Vec<JobReport> = self.queue.iter().take(count).cloned().collect();
            match self.call(&ComputeRequest::ReportJobs(ReportJobs { reports })) {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.code == ErrorCode::UnknownNode => {
                    if !self.register() {
                        return;
                    }
                    continue;
                }
                Ok(Err(e)) if e.code == ErrorCode::Unavailable => {
                    tracing::warn!(error = %e, "the head cannot take reports now; will retry");
                    return;
                }
                Ok(Err(e)) => {
                    let dropped: Vec<&JobReport> = self.queue.iter().take(count).collect();
                    tracing::error!(error = %e, reports = ?dropped, "the head refused reports; dropping them");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the head; reports wait");
                    return;
                }
            }
            for report in self.queue.drain(..count) {
                // The head has the end: the run's records on this node can go.
                if let JobReport::End(end) = report {
                    self.events.send(Event::EndAcked(end.job_run()));
                }
            }
        }
    }

    fn heartbeat(&mut self) {
        let request = ComputeRequest::Heartbeat(Heartbeat { node: self.config.node.clone(), running: self.running() });
        match self.call(&request) {
            Ok(Ok(ComputeResponse::HeartbeatAck(ack))) => self.kill(ack.kill),
            Ok(Ok(other)) => tracing::warn!(?other, "unexpected heartbeat reply"),
            Ok(Err(e)) if e.code == ErrorCode::UnknownNode => {
                self.register();
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat refused"),
            Err(e) => tracing::warn!(error = %e, "heartbeat not answered"),
        }
    }
}

/// Drops each start report whose run's end is also queued, putting its time in that end instead.
fn fold_starts_into_ends(queue: &mut VecDeque<JobReport>) {
    let ended: HashSet<JobRun> = queue
        .iter()
        .filter_map(|r| match r {
            JobReport::End(end) => Some(end.job_run()),
            JobReport::Start(_) | JobReport::Fence(_) => None,
        })
        .collect();
    if ended.is_empty() {
        return;
    }
    let mut started = HashMap::new();
    queue.retain(|r| match r {
        JobReport::Start(start) if ended.contains(&start.job_run()) => {
            started.insert(start.job_run(), start.started_at);
            false
        }
        _ => true,
    });
    for report in queue.iter_mut() {
        if let JobReport::End(end) = report {
            if let Some(&at) = started.get(&end.job_run()) {
                end.started_at = end.started_at.or(Some(at));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_common::job::{NodeEnd, NodeEndCause};
    use cm_common::{JobId, Timestamp};

    fn start(job: u64, at: u64) -> JobReport {
        JobReport::Start(ReportJobStart { node: NodeId::new("n"), job: JobId(job), run: 0, started_at: Timestamp(at) })
    }

    fn end(job: u64) -> JobReport {
        let end = NodeEnd { ended_at: Timestamp(99), cause: NodeEndCause::Exited, replicas: vec![], usage: None };
        JobReport::End(ReportJobEnd { node: NodeId::new("n"), job: JobId(job), run: 0, end, started_at: None })
    }

    #[test]
    fn a_start_whose_end_is_queued_rides_in_the_end_and_the_rest_keep_their_order() {
        let mut queue = VecDeque::from(vec![start(1, 10), start(2, 20), end(1), start(3, 30)]);
        fold_starts_into_ends(&mut queue);
        let JobReport::End(ReportJobEnd { started_at, .. }) = &queue[1] else { panic!("{queue:?}") };
        assert_eq!(*started_at, Some(Timestamp(10)));
        let folded = VecDeque::from(vec![start(2, 20), queue[1].clone(), start(3, 30)]);
        assert_eq!(queue, folded, "job 1's start is gone; 2 and 3 still start in order");
    }
}
