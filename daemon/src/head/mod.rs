//! The head role: the cluster's single source of truth.
//!
//! `run` opens the store, binds the head's port and then runs one loop that owns all state:
//! requests (from tools and compute nodes, via [`crate::service`]) and delivery failures (from
//! [`comm`]) arrive as [`Event`]s on one channel and are handled one at a time by
//! [`core::HeadCore`]. After each event a scheduling pass runs if anything changed, so a job on an
//! idle cluster starts as soon as it is submitted; a periodic tick also checks node heartbeats.

pub mod comm;
pub mod core;

use crate::service::{self, reply_bytes, ReplySlot};
use crate::settings::HeadConfig;
use crate::store::embedded::EmbeddedStore;
use anyhow::Context;
use cm_common::node::{Node, NodeHealth, Role};
use cm_common::protocol::{Envelope, HeadRequest};
use cm_common::transport::{Responder, RetryPolicy};
use cm_common::Timestamp;
use comm::{DeliveryFailure, ZmqComm};
use core::{HeadCore, HeadSettings};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the head's loop reacts to.
pub enum Event {
    Request(Envelope<HeadRequest>, ReplySlot),
    DeliveryFailed(DeliveryFailure),
}

/// How long the loop sleeps at most, which bounds how late it notices a shutdown.
const MAX_WAIT: Duration = Duration::from_millis(250);

/// Runs the head until `shutdown` is set. `bound` receives the endpoint actually listened on.
pub fn run(config: HeadConfig, shutdown: Arc<AtomicBool>, bound: impl FnOnce(&str)) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create the state directory {}", config.state_dir.display()))?;
    let store_path = config.state_dir.join("cm.redb");
    let store = EmbeddedStore::open(&store_path)?;
    tracing::info!(store = %store_path.display(), "embedded store opened");

    let ctx = zmq::Context::new();
    let responder = Responder::bind(&ctx, &config.listen, config.max_message_size)
        .with_context(|| format!("the head cannot listen on {}", config.listen))?;
    let endpoint = responder.endpoint().to_string();
    tracing::info!(%endpoint, node = %config.node_id, "head listening");
    bound(&endpoint);

    let (events, inbox) = channel::<Event>();
    let me = config.node_id.to_string();
    let server = service::spawn("head-rep", responder, me.clone(), shutdown.clone(), events.clone(), Event::Request)?;
    let failures = events.clone();
    let comm = ZmqComm::new(
        ctx.clone(),
        RetryPolicy::new(config.request_timeout, config.request_retries),
        me.clone(),
        Arc::new(move |failure| {
            let _ = failures.send(Event::DeliveryFailed(failure));
        }),
    );
    let now = Timestamp::now();
    let me_node = Node {
        id: config.node_id.clone(),
        role: Role::Head,
        address: endpoint.clone(),
        capacity: config.resources,
        allocations: vec![],
        health: NodeHealth::Up,
        only_uid: None,
        registered_at: now,
        last_heartbeat: now,
    };
    let settings =
        HeadSettings { heartbeat_interval: config.heartbeat_interval, heartbeat_timeout: config.heartbeat_timeout };
    let mut core = HeadCore::open(Box::new(store), Box::new(comm), me_node, settings, now)?;

    let mut next_tick = Instant::now() + config.scheduler_interval;
    while !shutdown.load(Ordering::Relaxed) {
        let wait = next_tick.saturating_duration_since(Instant::now()).min(MAX_WAIT);
        match inbox.recv_timeout(wait) {
            Ok(Event::Request(envelope, slot)) => {
                let now = Timestamp::now();
                let bytes = match envelope.body {
                    HeadRequest::Client(req) => reply_bytes(&me, &core.handle_client(envelope.credential, req, now)),
                    HeadRequest::Compute(req) => reply_bytes(&me, &core.handle_compute(req, now)),
                };
                // The requester may have given up; its retry will be answered then.
                let _ = slot.send(bytes);
            }
            Ok(Event::DeliveryFailed(failure)) => core.delivery_failed(failure, Timestamp::now()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() >= next_tick {
            core.tick(Timestamp::now());
            next_tick = Instant::now() + config.scheduler_interval;
        }
        // After the reply, so a submission is acknowledged before its job is started.
        core.schedule_if_needed(Timestamp::now());
    }
    tracing::info!("head shutting down");
    drop(core);
    let _ = server.join();
    Ok(())
}
