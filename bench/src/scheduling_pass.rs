//! Scenario 6: how long one scheduling pass of the head takes with 10,000 pending jobs and 1,000
//! nodes, with backfill. It drives the head's own state machine (`HeadCore`, the code the head's
//! loop runs, with the embedded store) in this process, so the figure is the pass alone: the
//! head builds the nodes' timelines and the jobs' priorities, orders the queue, tries what may
//! start, and reserves for the first job of each partition.
//!
//! The cluster: 1,000 nodes of 32 CPUs, each running a 30-CPU job whose time limit runs out at
//! a different time (10 minutes to 10 hours), so 2 CPUs are free on every node; two partitions
//! (every node, and a fifth of them). The queue: 10,000 jobs of 1 to 8 nodes, 1 to 32 CPUs each
//! and 97 different time limits, a fifth of them in the small partition; the 1-CPU ones that
//! fit around the reservations start in the first pass, which fills every CPU. The passes after
//! it are periodic ones (each `scheduler_interval`), which order the whole queue again though
//! nothing can start.

use crate::stats::Samples;
use anyhow::{anyhow, bail};
use cm_common::config::{JobLimits, SchedulingSettings};
use cm_common::job::{JobSpec, UserIdentity};
use cm_common::node::{Node, Role};
use cm_common::partition::Partition;
use cm_common::protocol::*;
use cm_common::{NodeId, Resources, Timestamp};
use cm_daemon::head::comm::RecordingComm;
use cm_daemon::head::core::{HeadCore, HeadSettings};
use cm_daemon::store::embedded::EmbeddedStore;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn partitions() -> Vec<Partition> {
    vec![
        Partition { name: "all".into(), nodes: vec!["n*".into()], default: true, ..Partition::default() },
        Partition { name: "fifth".into(), nodes: vec!["n0[0-1]*".into()], priority: 50, ..Partition::default() },
    ]
}

fn job(cpus: u32, nodes: u32, minutes: u64, partition: &str) -> JobSpec {
    JobSpec {
        name: "bench".into(),
        user: UserIdentity { uid: 0, name: "root".into() },
        command: "true".into(),
        workdir: "/tmp".into(),
        env: Default::default(),
        nodes,
        procs_per_node: 1,
        per_node: Resources::new(cpus, 1024),
        time_limit_secs: Some(minutes * 60),
        stdout: None,
        stderr: None,
        requeue: false,
        max_user_processes: None,
        partition: partition.into(),
        nice: 0,
        priority: None,
        mpi: Default::default(),
        array: None,
        dependency: Vec::new(),
        hold: false,
    }
}

fn submit(core: &mut HeadCore, spec: JobSpec, token: String, now: Timestamp) -> anyhow::Result<()> {
    let request = ClientRequest::AssignJobId(AssignJobId { spec, token });
    match core.handle_client(0, request, now) {
        Ok(ClientResponse::JobAccepted(_)) => Ok(()),
        other => bail!("submit: {other:?}"),
    }
}

/// Jobs running now.
fn running(core: &mut HeadCore, now: Timestamp) -> anyhow::Result<usize> {
    let filter = cm_common::job::JobFilter { states: vec!["Running".into()], ..Default::default() };
    match core.handle_client(
        0,
        ClientRequest::FetchJobs(FetchJobs { include_finished: false, limit: None, filter }),
        now,
    ) {
        Ok(ClientResponse::Jobs(reply)) => Ok(reply.jobs.len()),
        other => bail!("listing: {other:?}"),
    }
}

pub fn scheduling_pass(pending: usize, nodes: usize, passes: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(&dir.path().join("cm.redb"))?;
    let settings = HeadSettings {
        heartbeat_interval: Duration::from_secs(3),
        heartbeat_timeout: Duration::from_secs(3600),
        operators: vec![],
        private_data: false,
        anonymous_listing: false,
        limits: JobLimits::default(),
        scheduling: SchedulingSettings::default(),
        partitions: partitions(),
        workdirs: Default::default(),
    };
    let now = Timestamp::now();
    let me = Node::new(NodeId::new("head"), Role::Head, String::new(), Resources::new(1, 1024), now);
    let mut core = HeadCore::open(Box::new(store), Box::new(RecordingComm::default()), me, settings, now)?;
    for i in 0..nodes {
        let node = NodeId::new(format!("n{i:04}"));
        let register = ComputeRequest::RegisterNode(RegisterNode {
            node: node.clone(),
            address: format!("tcp://{node}:5002"),
            capacity: Resources::new(32, 131_072),
            only_uid: None,
            running: vec![],
            containment: String::new(),
        });
        core.handle_compute(&node, register, now).map_err(|e| anyhow!(e))?;
    }
    // Fill every node with one 30-CPU job, ending from 10 minutes to 10 hours from now.
    for i in 0..nodes {
        submit(&mut core, job(30, 1, 10 * (1 + i as u64 % 60), "all"), format!("fill-{i}"), now)?;
    }
    core.schedule(now);
    let setup = Instant::now();
    for i in 0..pending {
        let cpus = [1, 4, 8, 16, 32][i % 5];
        let width = [1, 1, 2, 4, 8][i / 5 % 5];
        let partition = if i % 5 == 4 { "fifth" } else { "all" };
        submit(&mut core, job(cpus, width, 1 + (i as u64 % 97) * 7, partition), format!("job-{i}"), now)?;
    }
    println!("6. queued {pending} pending jobs on {nodes} busy nodes in {:.1?}", setup.elapsed());
    core.sync()?;
    let before = running(&mut core, now)?;
    let first = Instant::now();
    core.schedule(now);
    let first = first.elapsed();
    core.sync()?;
    let backfilled = running(&mut core, now)? - before;
    let mut samples = Samples::default();
    for _ in 0..passes {
        core.tick(now); // a periodic pass: it runs though no CPU is free
        let started = Instant::now();
        core.schedule(now);
        samples.push(started.elapsed());
    }
    println!(
        "6. scheduling pass, {pending} pending jobs x {nodes} nodes with backfill: first {:.1} ms (starts {backfilled} jobs), then p50 {:.1} ms, p99 {:.1} ms",
        first.as_secs_f64() * 1000.0,
        samples.percentile_ms(50.0),
        samples.percentile_ms(99.0)
    );
    Ok(json!({
        "pending_jobs": pending,
        "nodes": nodes,
        "first_pass_ms": first.as_secs_f64() * 1000.0,
        "first_pass_started": backfilled,
        "pass": samples.summary(),
    }))
}
