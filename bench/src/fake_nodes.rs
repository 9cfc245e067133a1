//! A load generator that plays many compute nodes over the real protocol: it registers them and
//! sends their heartbeats, sealed with the cluster's key as real compute daemons do, without
//! running jobs.

use cm_auth::{ClusterKey, Credentials};
use cm_common::protocol::*;
use cm_common::{NodeId, Resources};
use cm_transport::{Requester, RetryPolicy};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fake nodes are registered as run by this uid, so the scheduler never places real jobs on them.
pub const NOBODYS_UID: u32 = 4_000_000_000;

fn requester(head: &str, key: &Arc<ClusterKey>) -> anyhow::Result<Requester> {
    let sealed = Credentials::Sealed { key: key.clone(), recipient: cm_auth::credentials::HEAD.into() };
    Ok(Requester::new(head, RetryPolicy::new(Duration::from_secs(5), 2), "cmbench", sealed)?)
}

/// Registers `count` fake nodes named `fake-<i>`.
pub fn register(head: &str, key: &Arc<ClusterKey>, count: usize) -> anyhow::Result<()> {
    let mut head = requester(head, key)?;
    for i in 0..count {
        head.set_sender(&format!("fake-{i}"));
        let request = HeadRequest::Compute(ComputeRequest::RegisterNode(RegisterNode {
            node: NodeId::new(format!("fake-{i}")),
            address: "tcp://127.0.0.1:1".into(),
            capacity: Resources::new(32, 65536),
            only_uid: Some(NOBODYS_UID),
            running: vec![],
            containment: String::new(),
        }));
        head.call::<_, ComputeResponse>(&request)?.map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok(())
}

/// Heartbeats `count` fake nodes (registered with [`register`]) every `interval` from `threads`
/// threads until `stop`; returns how many heartbeats were answered.
pub fn heartbeat(
    head: &str,
    key: &Arc<ClusterKey>,
    count: usize,
    interval: Duration,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> u64 {
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (head, key, stop, sent) = (head.to_string(), key.clone(), stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut head = requester(&head, &key).expect("the endpoint register() used");
                let mine: Vec<usize> = (t..count).step_by(threads).collect();
                // Spread each node's beats evenly over the interval, as independent nodes would.
                let gap = interval / u32::try_from(mine.len().max(1)).unwrap_or(u32::MAX);
                let mut next = Instant::now();
                'run: loop {
                    for &i in &mine {
                        if stop.load(Ordering::Relaxed) {
                            break 'run;
                        }
                        head.set_sender(&format!("fake-{i}"));
                        let beat = HeadRequest::Compute(ComputeRequest::Heartbeat(Heartbeat {
                            node: NodeId::new(format!("fake-{i}")),
                            running: vec![],
                        }));
                        if matches!(head.call::<_, ComputeResponse>(&beat), Ok(Ok(_))) {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        next += gap;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
    sent.load(Ordering::Relaxed)
}
