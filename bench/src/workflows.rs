//! Scenarios 7-10, workflows at scale:
//! 7. a 10,000-task array of `true` on 4 computes x 32 CPUs, end to end, beside the same number
//!    of tasks as separate jobs, both with output discarded (as HyperQueue's array runs are
//!    measured: `hq submit --array ... --stdout=none --stderr=none`);
//! 8. cancelling 5,000 pending jobs with one `cmkill --me --state Pending`;
//! 9. 100,000 short jobs in a row, in chunks, the head's RSS after 10k, 25k, 50k, 75k and 100k;
//! 10. `cmrun --wait true` on an idle cluster, end to end, as a user runs it.

use crate::cpu::{machine_ticks, process_ticks, ticks_per_second, ClusterTicks};
use crate::stats::Samples;
use crate::{head, rss_mb, spec, submit, wait_idle, JobOptions, Leftovers, BENCH_CONFIG, BENCH_LOG};
use anyhow::{bail, Context};
use cm_common::array::ArraySpec;
use cm_testkit::{Cluster, StoreKind};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const DISCARD: JobOptions = JobOptions { discard_output: true };

/// Scenario 7: `tasks` tasks as one array, then as separate jobs; tasks per second end to end.
pub fn array(store: &StoreKind, tasks: usize, later: &mut Leftovers) -> anyhow::Result<Value> {
    let cluster = later.keep(Cluster::start_with(store, 4, 32, 65536, BENCH_CONFIG, BENCH_LOG));
    let mut h = head(&cluster)?;
    let mut job = spec(&cluster.workdir, "true", DISCARD)?;
    job.array = Some(ArraySpec::parse(&format!("0-{}", tasks - 1), tasks as u64).map_err(anyhow::Error::msg)?);
    let head_pid = cluster.head.pid().context("head pid")?;
    let (cluster_before, head_before, machine_before) =
        (ClusterTicks::now(&cluster)?, process_ticks(head_pid)?, machine_ticks()?);
    let started = Instant::now();
    submit(&mut h, &job)?;
    let submitted = started.elapsed();
    wait_idle(&mut h, Duration::from_secs(1200))?;
    let array_seconds = started.elapsed().as_secs_f64();
    let array_rate = tasks as f64 / array_seconds;
    // Where each task's CPU went, in ms: the head, the compute daemons, the jobs (supervisors and
    // the tasks' own processes), and the machine in all.
    let spent = ClusterTicks::now(&cluster)?.since(cluster_before);
    let head_ticks = process_ticks(head_pid)?.saturating_sub(head_before);
    let machine_ticks_spent = machine_ticks()?.0.saturating_sub(machine_before.0);
    let per_task =
        |ticks: u64| -> anyhow::Result<f64> { Ok(ticks as f64 / ticks_per_second()? * 1000.0 / tasks as f64) };
    let cpu = json!({
        "head_ms": per_task(head_ticks)?,
        "compute_daemons_ms": per_task(spent.daemons.saturating_sub(head_ticks))?,
        "jobs_ms": per_task(spent.jobs)?,
        "machine_ms": per_task(machine_ticks_spent)?,
    });
    job.array = None;
    let started = Instant::now();
    for _ in 0..tasks {
        submit(&mut h, &job)?;
    }
    wait_idle(&mut h, Duration::from_secs(1200))?;
    let jobs_seconds = started.elapsed().as_secs_f64();
    let jobs_rate = tasks as f64 / jobs_seconds;
    println!(
        "7. {tasks} tasks of `true` on 4 x 32 CPUs, output discarded: as one array {array_rate:.0} tasks/s (submitted in {submitted:.2?}, all done in {array_seconds:.1} s; CPU per task in ms: the head {:.2}, the compute daemons {:.2}, the jobs {:.2}, the machine {:.2}); as separate jobs {jobs_rate:.0} jobs/s ({jobs_seconds:.1} s)",
        cpu["head_ms"].as_f64().unwrap_or(f64::NAN),
        cpu["compute_daemons_ms"].as_f64().unwrap_or(f64::NAN),
        cpu["jobs_ms"].as_f64().unwrap_or(f64::NAN),
        cpu["machine_ms"].as_f64().unwrap_or(f64::NAN),
    );
    Ok(json!({ "tasks": tasks, "array_tasks_per_second": array_rate, "array_seconds": array_seconds,
               "array_cpu_per_task": cpu,
               "separate_jobs_per_second": jobs_rate, "separate_seconds": jobs_seconds }))
}

/// Scenario 8: `pending` jobs wait behind one that holds the only CPU; one cmkill cancels them.
pub fn bulk_cancel(pending: usize, later: &mut Leftovers) -> anyhow::Result<Value> {
    let cluster = later.keep(Cluster::start_with(&StoreKind::Embedded, 1, 1, 4096, BENCH_CONFIG, BENCH_LOG));
    let mut h = head(&cluster)?;
    submit(&mut h, &spec(&cluster.workdir, "sleep 3600", DISCARD)?)?;
    let job = spec(&cluster.workdir, "true", DISCARD)?;
    for _ in 0..pending {
        submit(&mut h, &job)?;
    }
    let started = Instant::now();
    let out = cluster.tool("cmkill", &["--me", "--state", "Pending"]);
    let took = started.elapsed();
    let said = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !said.contains(&format!("killed {pending} jobs")) {
        bail!("cmkill: {said} {}", String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "8. cmkill --me --state Pending cancelled {pending} pending jobs in {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    Ok(json!({ "pending_jobs": pending, "seconds": took.as_secs_f64() }))
}

/// Scenario 9: `total` short jobs in chunks of 5,000 (each waited for, so the queue stays under
/// its limits), the head's RSS at each of `marks`.
pub fn memory(total: usize, marks: &[usize], later: &mut Leftovers) -> anyhow::Result<Value> {
    let cluster = later.keep(Cluster::start_with(&StoreKind::Embedded, 4, 32, 65536, BENCH_CONFIG, BENCH_LOG));
    let pid = cluster.head.pid().context("head pid")?;
    let mut h = head(&cluster)?;
    let job = spec(&cluster.workdir, "true", DISCARD)?;
    let mut done = 0;
    let mut rss = serde_json::Map::new();
    let started = Instant::now();
    let start_rss = rss_mb(pid)?;
    while done < total {
        let chunk = 5_000.min(total - done);
        for _ in 0..chunk {
            submit(&mut h, &job)?;
        }
        wait_idle(&mut h, Duration::from_secs(600))?;
        done += chunk;
        if marks.contains(&done) {
            let mb = rss_mb(pid)?;
            println!("9. head RSS after {done} jobs: {mb:.1} MB ({:.0} s in)", started.elapsed().as_secs_f64());
            rss.insert(format!("{}k", done / 1000), json!(mb));
        }
    }
    Ok(json!({ "jobs": total, "head_rss_mb_at_start": start_rss, "head_rss_mb": rss }))
}

/// Scenario 10: `n` runs of `cmrun --wait true` one after another, as a user runs them.
pub fn wait_round_trip(n: usize, later: &mut Leftovers) -> anyhow::Result<Value> {
    let cluster = later.keep(Cluster::start_with(&StoreKind::Embedded, 1, 4, 4096, BENCH_CONFIG, BENCH_LOG));
    let mut samples = Samples::default();
    for _ in 0..n {
        let t = Instant::now();
        let out = cluster.tool("cmrun", &["--wait", "-o", "/dev/null", "-e", "/dev/null", "true"]);
        samples.push(t.elapsed());
        if !out.status.success() {
            bail!("cmrun --wait: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    println!(
        "10. cmrun --wait true on an idle cluster, over the head's Unix socket: p50 {:.1} ms, p99 {:.1} ms",
        samples.percentile_ms(50.0),
        samples.percentile_ms(99.0)
    );
    Ok(json!({ "runs": n, "latency": samples.summary() }))
}
