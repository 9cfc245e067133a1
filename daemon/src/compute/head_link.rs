//! The compute node's side of the conversation with the head, on a thread of its own.
//!
//! It registers (retrying, with backoff, as configured), then sends heartbeats and the node's
//! reports (job start and end) in order, retrying each report until the head has it, so an end
//! is never lost while the head is restarting. A head that does not know the node any more gets
//! a fresh registration. Jobs the head says to kill come back to the compute loop.

use super::Event;
use cm_common::job::JobRun;
use cm_common::protocol::*;
use cm_common::{NodeId, Resources};
use cm_transport::{Requester, RetryPolicy};
use std::collections::VecDeque;
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
    pub heartbeat_interval: Duration,
    pub register_retries: u32,
    pub register_retry_wait: Duration,
    pub policy: RetryPolicy,
}

/// A handle to queue reports for the head.
#[derive(Clone)]
pub struct HeadLink {
    reports: Sender<ComputeRequest>,
}

impl HeadLink {
    pub fn report(&self, request: ComputeRequest) {
        if self.reports.send(request).is_err() {
            tracing::error!("the head link has stopped; a report is lost");
        }
    }

    /// Starts the link thread. `running` is this node's current job list, for heartbeats.
    pub fn spawn(
        ctx: &zmq::Context,
        config: LinkConfig,
        running: Arc<Mutex<Vec<JobRun>>>,
        events: Sender<Event>,
        shutdown: Arc<AtomicBool>,
    ) -> std::io::Result<HeadLink> {
        let (reports, inbox) = channel::<ComputeRequest>();
        let requester =
            Requester::new(ctx, &config.head_address, config.policy, config.node.as_str(), Credential { uid: 0 });
        let mut link = Link { config, requester, running, events, shutdown, queue: VecDeque::new() };
        std::thread::Builder::new().name("head-link".into()).spawn(move || {
            if !link.register() {
                return;
            }
            let mut next_heartbeat = Instant::now() + link.config.heartbeat_interval;
            loop {
                match inbox.recv_timeout(next_heartbeat.saturating_duration_since(Instant::now())) {
                    Ok(report) => {
                        link.queue.push_back(report);
                        link.queue.extend(inbox.try_iter());
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if link.shutdown.load(Ordering::Relaxed) {
                    return;
                }
                link.flush();
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
    events: Sender<Event>,
    shutdown: Arc<AtomicBool>,
    /// Reports not yet acknowledged, oldest first.
    queue: VecDeque<ComputeRequest>,
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
            let _ = self.events.send(Event::Kill(jobs));
        }
    }

    /// Sends queued reports in order; stops at the first one the head cannot take now.
    fn flush(&mut self) {
        while let Some(report) = self.queue.front().cloned() {
            match self.call(&report) {
                Ok(Ok(_)) => self.acknowledged(&report),
                Ok(Err(e)) if e.code == ErrorCode::UnknownNode => {
                    if !self.register() {
                        return;
                    }
                    continue;
                }
                Ok(Err(e)) if e.code == ErrorCode::Unavailable => {
                    tracing::warn!(error = %e, "the head cannot take a report now; will retry");
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, ?report, "the head refused a report; dropping it");
                    self.acknowledged(&report);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the head; reports wait");
                    return;
                }
            }
            self.queue.pop_front();
        }
    }

    /// Tells the compute loop that the head has a run's end, so its records can go.
    fn acknowledged(&self, report: &ComputeRequest) {
        if let ComputeRequest::ReportJobEnd(end) = report {
            let _ = self.events.send(Event::EndAcked(JobRun { job: end.job, run: end.run }));
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
