//! The head role: the cluster's single source of truth.
//!
//! `run` opens the store, binds the head's port and then runs one loop that owns all state:
//! requests (from tools and compute nodes, on the head's socket) and delivery failures (from
//! [`comm`]) come out of one [`crate::service::Inbox`] and are handled one at a time by
//! [`core::HeadCore`]. Each event's writes are synced to the store (once for all of them: a batch
//! of job ends from a node costs one disk sync) before its reply and the messages to nodes that
//! follow from it go out, so nothing is said that a crash could take back. Then, after the reply,
//! a scheduling pass runs if anything changed, so a job on an idle cluster starts as soon as it is
//! submitted, and its placements are synced before the starts go out. A periodic tick also checks
//! node heartbeats. A tool waiting for a job (`cmrun --wait`) is answered when the job ends, at
//! the end of the turn that ended it: its request waits in [`waiters`], not in a polling loop.
//! The store is MongoDB when a URI is configured, else the embedded one.

pub mod comm;
pub mod core;
pub mod tokens;
pub mod user_names;
mod waiters;

use crate::service::{body_bytes, Inbox, Next};
use crate::settings::HeadConfig;
use crate::store::embedded::EmbeddedStore;
use crate::store::mongo::MongoStore;
use crate::store::{Store, StoreError};
use anyhow::Context;
use cm_auth::{ClusterKey, Gate};
use cm_common::node::{Node, Role};
use cm_common::protocol::{ErrorCode, ErrorReply, HeadRequest, Reply};
use cm_common::Timestamp;
use cm_transport::{Responder, RetryPolicy};
use comm::{DeliveryFailure, ZmqComm};
use core::{HeadCore, HeadReply, HeadSettings};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the loop sleeps at most, which bounds how late it notices a shutdown.
const MAX_WAIT: Duration = Duration::from_millis(250);

/// A MongoDB URI with any password hidden, for logs.
fn redacted(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &uri[..scheme + 3], &uri[at..]),
        _ => uri.to_string(),
    }
}

/// Opens the configured store. MongoDB is retried with backoff until it answers (a head started
/// with its database, as in docker-compose, must wait for it); `None` if shut down meanwhile.
fn open_store(config: &HeadConfig, shutdown: &AtomicBool) -> anyhow::Result<Option<Box<dyn Store>>> {
    let Some(uri) = &config.store else {
        crate::private::create_dir(&config.state_dir)
            .with_context(|| format!("cannot create the state directory {}", config.state_dir.display()))?;
        let path = config.state_dir.join("cm.redb");
        let store = EmbeddedStore::open(&path)?;
        crate::private::tighten(&path).with_context(|| format!("cannot make {} private", path.display()))?;
        tracing::info!(store = %path.display(), "embedded store opened");
        return Ok(Some(Box::new(store)));
    };
    let mut wait = Duration::from_millis(500);
    loop {
        match MongoStore::connect(uri, config.store_timeout) {
            Ok(store) => {
                tracing::info!(uri = %redacted(uri), database = store.database_name(), "MongoDB store opened");
                return Ok(Some(Box::new(store)));
            }
            Err(StoreError::Unreachable(e)) => {
                tracing::warn!(uri = %redacted(uri), error = %e, retry_in = ?wait, "MongoDB is unreachable; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if shutdown.load(Ordering::Relaxed) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// Runs the head until `shutdown` is set. `bound` receives the endpoint actually listened on.
pub fn run(
    config: HeadConfig,
    key: Arc<ClusterKey>,
    shutdown: Arc<AtomicBool>,
    bound: impl FnOnce(&str),
) -> anyhow::Result<()> {
    let Some(store) = open_store(&config, &shutdown)? else { return Ok(()) };

    let mut responder = Responder::bind(&config.listen, config.max_message_size)
        .with_context(|| format!("the head cannot listen on {}", config.listen))?;
    let endpoint = responder.endpoint().to_string();
    tracing::info!(%endpoint, node = %config.node_id, "head listening");
    let path = &config.socket;
    let socket = responder
        .listen_on_unix_socket(path)
        .with_context(|| format!("the head cannot listen on the Unix socket {}", path.display()))?;
    tracing::info!(endpoint = %socket, "head listening for local tools");
    bound(&endpoint);

    let me = config.node_id.to_string();
    let (mut inbox, failures) =
        Inbox::<HeadRequest, DeliveryFailure>::new(responder, me.clone(), Gate::head(key.clone()))?;
    let comm = ZmqComm::new(
        RetryPolicy::new(config.request_timeout, config.request_retries),
        key,
        me.clone(),
        Arc::new(move |failure| {
            failures.send(failure);
        }),
    );
    let now = Timestamp::now();
    let me_node = Node::new(config.node_id.clone(), Role::Head, endpoint.clone(), config.resources, now);
    let settings = HeadSettings {
        heartbeat_interval: config.heartbeat_interval,
        heartbeat_timeout: config.heartbeat_timeout,
        operators: config.operators.clone(),
        private_data: config.private_data,
        anonymous_listing: config.anonymous_listing,
        limits: config.limits.clone(),
        scheduling: config.scheduling.clone(),
        partitions: config.partitions.clone(),
        workdirs: config.workdirs.clone(),
    };
    let mut core = HeadCore::open(store, Box::new(comm), me_node, settings, now)?;

    let mut waiters = waiters::Waiters::default();
    let mut next_tick = Instant::now() + config.scheduler_interval;
    while !shutdown.load(Ordering::Relaxed) {
        let wait = next_tick.saturating_duration_since(Instant::now()).min(MAX_WAIT);
        let mut reply = None;
        match inbox.next(wait) {
            Ok(Some(Next::Request(request))) => {
                reply = match core.handle(&request.identity, request.body, Timestamp::now()) {
                    HeadReply::Client(reply) => Some(body_bytes(&reply)),
                    HeadReply::Compute(reply) => Some(body_bytes(&reply)),
                    HeadReply::Later(uid, wait) => {
                        waiters.add(&mut inbox, uid, wait);
                        None
                    }
                };
            }
            Ok(Some(Next::Event(failure))) => core.delivery_failed(failure, Timestamp::now()),
            Ok(None) => {}
            Err(e) => return Err(anyhow::Error::from(e).context("the head's socket failed")),
        }
        if Instant::now() >= next_tick {
            core.tick(Timestamp::now());
            next_tick = Instant::now() + config.scheduler_interval;
        }
        if let Err(e) = core.sync() {
            tracing::error!(error = %e, "cannot sync the job store; replies are errors until it can");
            let unavailable: Reply<()> = Err(ErrorReply::new(ErrorCode::Unavailable, e.to_string()));
            reply = reply.map(|_| body_bytes(&unavailable));
        }
        if let Some(body) = reply {
            inbox.reply_body(&body);
        }
        // After the reply, so a submission is acknowledged before its job is placed.
        core.schedule_if_needed(Timestamp::now());
        if let Err(e) = core.sync() {
            tracing::error!(error = %e, "cannot sync the job store; placements wait until it can");
        } else {
            waiters.answer(&mut inbox, &mut core, Timestamp::now());
        }
    }
    tracing::info!("head shutting down");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(super::redacted("mongodb://cm:s3cret@db:27017/cm"), "mongodb://***@db:27017/cm");
        assert_eq!(super::redacted("mongodb://db:27017/cm"), "mongodb://db:27017/cm");
    }
}
