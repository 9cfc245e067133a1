//! `cmbench`: measures cm on a local cluster of real `cmd` daemons and prints each figure, then
//! all of them as JSON. Run from a release build: `cargo build --release --workspace &&
//! target/release/cmbench` (see docs/benchmarks.md). Scenarios:
//! 1. serial CLI submission: N x `cmrun true` as separate processes, and beside it the floor
//!    of any such tool here: N runs of `cmbench-floor`, one ZeroMQ request to an echo server;
//!    over TCP, then again over the head's Unix socket;
//! 2. short-job throughput: N `true` jobs on 4 computes x 32 CPUs, submitted back to back over
//!    the protocol, from first submission to last completion; over TCP (a MUNGE credential per
//!    submission), then again over the head's Unix socket;
//! 3. submit-to-start latency on an idle cluster, from the job's own start time;
//! 4. `cminfo` latency with 10,000 pending jobs and 256 registered computes;
//! 5. head CPU and memory with 1,000 heartbeating computes (a load generator that speaks the
//!    real protocol as many nodes, see `fake_nodes`);
//! 6. one scheduling pass with 10,000 pending jobs and 1,000 busy nodes, with backfill, timed
//!    in the head's own state machine in this process (`scheduling_pass`);
//! 7. to 10. workflows at scale (`workflows`): a 10,000-task array beside 10,000 separate
//!    jobs, cancelling 5,000 pending jobs, the head's memory over 100,000 jobs, and
//!    `cmrun --wait true`.
//!
//! Each scenario's cluster directory (state, job outputs) is removed when cmbench exits, not when
//! the scenario ends: on ext4 a file created within a while of many deletions costs more, so
//! removing one scenario's thousands of files would slow the next scenario's file creation.

mod cpu;
mod fake_nodes;
mod scheduling_pass;
mod stats;
mod workflows;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use cm_auth::Credentials;
use cm_cli::submit::{build_spec, current_user, submit_token, Request};
use cm_common::config::JobDefaults;
use cm_common::job::{Job, JobSpec, JobState};
use cm_common::protocol::*;
use cm_common::JobId;
use cm_testkit::{Cluster, StoreKind};
use cm_transport::{Incoming, Requester, Responder, RetryPolicy};
use cpu::{machine_ticks, process_ticks, ticks_per_second, ClusterTicks};
use serde_json::{json, Value};
use stats::Samples;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Daemon settings for benchmarks: the shipped defaults, quiet logs.
const BENCH_CONFIG: &str = "kill_grace: 1s\n";
const BENCH_LOG: &str = "warn";

#[derive(Debug, Parser)]
#[command(name = "cmbench", about = "Measure cm on a local cluster of real daemons")]
struct Args {
    /// Which scenarios to run (1-10).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10])]
    only: Vec<u32>,
    /// The head's store: embedded or mongodb (scenarios 1-3; SecantusDB or mongod is started).
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Smaller counts, for a quick look.
    #[arg(long)]
    quick: bool,
    /// Send the jobs' stdout and stderr to /dev/null (`cmrun -o /dev/null -e /dev/null`), as
    /// SLURM and HyperQueue throughput runs do; by default each job writes its two files.
    #[arg(long)]
    discard_output: bool,
    /// Run the chosen scenarios this many times, in turn (so the machine's drift reaches them all
    /// alike), and print the median of each headline figure: the goals are medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Also write the JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// The figures the goals are about, by their path in a run's JSON, for the medians.
const HEADLINES: [&str; 27] = [
    "serial_cli.per_second",
    "serial_cli.jobs_held.per_second",
    "serial_cli.floor.per_second",
    "serial_cli.unix_socket.per_second",
    "serial_cli.unix_socket.jobs_held.per_second",
    "serial_cli.unix_socket.floor.per_second",
    "throughput.jobs_per_second",
    "throughput.unix_socket.jobs_per_second",
    "throughput.unix_socket.without_cgroups.jobs_per_second",
    "submit_to_start.p50_ms",
    "submit_to_start.p99_ms",
    "cminfo.latency.p50_ms",
    "cminfo.latency.p99_ms",
    "head_at_1000_nodes.head_cpu_percent",
    "head_at_1000_nodes.head_rss_mb",
    "scheduling_pass.pass.p50_ms",
    "scheduling_pass.pass.p99_ms",
    "array.array_tasks_per_second",
    "array.separate_jobs_per_second",
    "bulk_cancel.seconds",
    "memory.head_rss_mb.10k",
    "memory.head_rss_mb.25k",
    "memory.head_rss_mb.50k",
    "memory.head_rss_mb.75k",
    "memory.head_rss_mb.100k",
    "wait.latency.p50_ms",
    "wait.latency.p99_ms",
];

/// How the benchmark's jobs are submitted: `cmrun` arguments before the command.
#[derive(Debug, Clone, Copy)]
struct JobOptions {
    discard_output: bool,
}

impl JobOptions {
    fn cmrun_args(self) -> Vec<&'static str> {
        if self.discard_output {
            vec!["-o", "/dev/null", "-e", "/dev/null"]
        } else {
            vec![]
        }
    }
}

/// The benchmark's own client: over TCP with a MUNGE credential per request, as a tool on another
/// host.
fn head(cluster: &Cluster) -> anyhow::Result<Requester> {
    let policy = RetryPolicy::new(Duration::from_secs(30), 0);
    Ok(Requester::new(&cluster.head_endpoint, policy, "cmbench", Credentials::Munge)?)
}

fn call(head: &mut Requester, request: ClientRequest) -> anyhow::Result<ClientResponse> {
    head.call::<_, ClientResponse>(&HeadRequest::Client(request))?.map_err(|e| anyhow!(e.message))
}

/// A job spec exactly as `cmrun` would build it here, for `command`.
fn spec(workdir: &std::path::Path, command: &str, options: JobOptions) -> anyhow::Result<JobSpec> {
    let discard = options.discard_output.then(|| "/dev/null".to_string());
    let request =
        Request { command: vec![command.to_string()], stdout: discard.clone(), stderr: discard, ..Request::default() };
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let workdir = workdir.to_str().context("workdir")?.to_string();
    build_spec(&request, &JobDefaults::default(), current_user(), workdir, env).map_err(|e| anyhow!(e))
}

/// The request `cmrun` sends to submit `spec`.
fn assign(spec: JobSpec) -> ClientRequest {
    ClientRequest::AssignJobId(AssignJobId { spec, token: submit_token() })
}

fn submit(head: &mut Requester, spec: &JobSpec) -> anyhow::Result<JobId> {
    match call(head, assign(spec.clone()))? {
        ClientResponse::JobAccepted(a) => Ok(a.id),
        other => bail!("unexpected reply {other:?}"),
    }
}

fn get(head: &mut Requester, id: JobId) -> anyhow::Result<Job> {
    match call(head, ClientRequest::GetJob(GetJob { id }))? {
        ClientResponse::Job(reply) => Ok(reply.job),
        other => bail!("unexpected reply {other:?}"),
    }
}

fn active_jobs(head: &mut Requester) -> anyhow::Result<usize> {
    match call(
        head,
        ClientRequest::FetchJobs(FetchJobs { include_finished: false, limit: Some(0), filter: Default::default() }),
    )? {
        ClientResponse::Jobs(reply) => Ok(reply.jobs.len() + usize::try_from(reply.left_out)?),
        other => bail!("unexpected reply {other:?}"),
    }
}

fn wait_idle(head: &mut Requester, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while active_jobs(head)? > 0 {
        if Instant::now() > deadline {
            bail!("jobs still active after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn store_kind(name: &str) -> anyhow::Result<StoreKind> {
    match name {
        "embedded" => Ok(StoreKind::Embedded),
        "mongodb" | "mongo" => {
            StoreKind::mongo("bench").context("no MongoDB-compatible server (pip install SecantusDB)")
        }
        other => bail!("unknown store {other:?}: embedded or mongodb"),
    }
}

/// CPUs of each of scenario 1's compute nodes.
const SERIAL_CPUS: u32 = 32;

/// Scenario 1 over TCP, as from any host, then over the head's Unix socket, as the tools on the
/// head's own host can reach it (`head_socket`); each beside its floor over the same transport.
fn serial_cli(store: &StoreKind, n: usize, options: JobOptions, later: &mut Leftovers) -> anyhow::Result<Value> {
    let mut cluster = later.keep(Cluster::start_with(store, 4, SERIAL_CPUS, 65536, BENCH_CONFIG, BENCH_LOG));
    // The size of what `cmrun true` sends from the work directory, for the floor's requests.
    let submission = HeadRequest::Client(assign(spec(&cluster.workdir, "true", options)?));
    let body = cm_common::protocol::encode_body(&submission)?;
    let (request, _) = Credentials::Munge.request("cmrun@bench", &body)?;
    let request_size = request.len();
    cluster.tools_over_tcp();
    let (tcp, tcp_held, tcp_floor) = serial_transport(&cluster, n, options, request_size, None)?;
    print_serial("1. serial cmrun over TCP", &tcp, &tcp_held, &tcp_floor);
    cluster.tools_over_socket();
    let echo_socket = cluster.dir.path().join("echo.sock");
    let (unix, unix_held, unix_floor) = serial_transport(&cluster, n, options, request_size, Some(&echo_socket))?;
    print_serial("   over the head's Unix socket", &unix, &unix_held, &unix_floor);
    let mut result = tcp;
    result["jobs_held"] = tcp_held;
    result["floor"] = tcp_floor;
    let mut over_socket = unix;
    over_socket["jobs_held"] = unix_held;
    over_socket["floor"] = unix_floor;
    result["unix_socket"] = over_socket;
    Ok(result)
}

/// Scenario 1's three runs over the transport the cluster's tools use now: the jobs running, the
/// jobs held, and the floor (its echo server on the Unix socket `unix`, else on TCP).
fn serial_transport(
    cluster: &Cluster,
    n: usize,
    options: JobOptions,
    request_size: usize,
    unix: Option<&std::path::Path>,
) -> anyhow::Result<(Value, Value, Value)> {
    Ok((
        serial_cmrun(cluster, n, options, false)?,
        serial_cmrun(cluster, n, options, true)?,
        client_floor(n, request_size, unix)?,
    ))
}

fn print_serial(title: &str, run: &Value, held: &Value, floor: &Value) {
    let rate = run["per_second"].as_f64().unwrap_or(f64::NAN);
    let floor_rate = floor["per_second"].as_f64().unwrap_or(f64::NAN);
    let p = |v: &Value, q: &str| v["latency"][q].as_f64().unwrap_or(f64::NAN);
    let busy = |v: &Value| {
        let ms = |key: &str| v[key].as_f64().unwrap_or(f64::NAN);
        let (machine, daemons, jobs) = (
            ms("machine_cpu_ms_per_submission"),
            ms("daemons_cpu_ms_per_submission"),
            ms("jobs_cpu_ms_per_submission"),
        );
        format!(
            "the machine {:.0} % busy, {machine:.1} ms of CPU per submission (the daemons {daemons:.2}, the jobs with their supervisors {jobs:.2}, the rest {:.2}: cmrun, this benchmark, the kernel's own work)",
            ms("machine_busy_percent"),
            machine - daemons - jobs
        )
    };
    println!(
        "{title}: {} submissions in {:.2} s: {rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms; {}",
        run["submissions"],
        run["seconds"].as_f64().unwrap_or(f64::NAN),
        p(run, "p50_ms"),
        p(run, "p99_ms"),
        busy(run),
    );
    println!(
        "   the same with the jobs held in the queue (the submission path alone, no job running): {:.0}/s, p50 {:.2} ms; {}",
        held["per_second"].as_f64().unwrap_or(f64::NAN),
        p(held, "p50_ms"),
        busy(held),
    );
    println!(
        "   floor: a bare ZeroMQ client process, one {}-byte request to an echo server: {floor_rate:.0}/s, p50 {:.2} ms (cmrun runs at {:.0} % of it)",
        floor["request_bytes"],
        p(floor, "p50_ms"),
        100.0 * rate / floor_rate
    );
}

/// `n` serial runs of `cmrun true`, each waited for, then until the cluster is idle again. With
/// `held`, a job that takes every CPU of every compute node runs first, so the `n` jobs wait in
/// the queue until it is killed after the last submission: the figure is then the submission
/// path alone, without the jobs' own work on the same cores.
fn serial_cmrun(cluster: &Cluster, n: usize, options: JobOptions, held: bool) -> anyhow::Result<Value> {
    let mut h = head(cluster)?;
    let blocker = if held { Some(hold_the_queue(cluster, &mut h)?) } else { None };
    let mut samples = Samples::default();
    let machine = machine_ticks()?;
    let cluster_before = ClusterTicks::now(cluster)?;
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let mut args = options.cmrun_args();
        args.push("true");
        let out = cluster.tool("cmrun", &args);
        if !out.status.success() {
            bail!("cmrun failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    let (busy, all) = machine_ticks()?;
    let spent = ClusterTicks::now(cluster)?.since(cluster_before);
    let busy_ticks = busy.saturating_sub(machine.0) as f64;
    let machine_busy_percent = 100.0 * busy_ticks / all.saturating_sub(machine.1).max(1) as f64;
    let ms_per_submission = |ticks: f64| -> anyhow::Result<f64> { Ok(ticks / ticks_per_second()? * 1000.0 / n as f64) };
    let machine_cpu_ms = ms_per_submission(busy_ticks)?;
    let daemons_cpu_ms = ms_per_submission(spent.daemons as f64)?;
    let jobs_cpu_ms = ms_per_submission(spent.jobs as f64)?;
    if let Some(id) = blocker {
        call(&mut h, ClientRequest::KillJob(KillJob { id }))?;
    }
    wait_idle(&mut h, Duration::from_secs(300))?;
    let rate = n as f64 / total.as_secs_f64();
    Ok(json!({
        "submissions": n,
        "seconds": total.as_secs_f64(),
        "per_second": rate,
        "latency": samples.summary(),
        "machine_busy_percent": machine_busy_percent,
        "machine_cpu_ms_per_submission": machine_cpu_ms,
        "daemons_cpu_ms_per_submission": daemons_cpu_ms,
        "jobs_cpu_ms_per_submission": jobs_cpu_ms,
    }))
}

/// Submits a job that takes every CPU of scenario 1's compute nodes and waits until it runs.
fn hold_the_queue(cluster: &Cluster, head: &mut Requester) -> anyhow::Result<JobId> {
    let (nodes, cpus) = (cluster.computes.len().to_string(), SERIAL_CPUS.to_string());
    let out = cluster.tool("cmrun", &["-n", &nodes, "-c", &cpus, "-o", "/dev/null", "-e", "/dev/null", "sleep 3600"]);
    if !out.status.success() {
        bail!("cmrun failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let id = JobId(String::from_utf8_lossy(&out.stdout).trim().parse().context("cmrun printed no job id")?);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call(head, ClientRequest::GetJob(GetJob { id }))? {
            ClientResponse::Job(reply) if matches!(reply.job.state, JobState::Running { .. }) => return Ok(id),
            ClientResponse::Job(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            other => bail!("the job holding the queue did not start: {other:?}"),
        }
    }
}

/// Scenario 1's floor: `n` serial runs of `cmbench-floor`, each a process that sends one
/// `size`-byte request through cm's transport to an echo server here and exits. No tool that
/// starts a process and speaks ZeroMQ per submission can beat this rate on the same machine.
/// The server listens on TCP, or on the Unix socket `unix` when given.
fn client_floor(n: usize, size: usize, unix: Option<&std::path::Path>) -> anyhow::Result<Value> {
    let mut echo = Responder::bind("127.0.0.1:0", 1 << 20)?;
    let endpoint = match unix {
        Some(path) => echo.listen_on_unix_socket(path)?,
        None => echo.endpoint().to_string(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop_server = stop.clone();
    let server = std::thread::spawn(move || {
        echo.serve(&stop_server, |incoming| match incoming {
            Incoming::Message(bytes) => bytes,
            Incoming::Malformed(why) => why.into_bytes(),
        })
    });
    let client = cm_testkit::bin("cmbench-floor");
    let mut samples = Samples::default();
    let started = Instant::now();
    let mut failure = None;
    for _ in 0..n {
        let t = Instant::now();
        let out = std::process::Command::new(&client)
            .args([endpoint.as_str(), &size.to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", client.display()))?;
        if !out.status.success() {
            failure = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    server.join().map_err(|_| anyhow!("the echo server panicked"))??;
    if let Some(why) = failure {
        bail!("cmbench-floor failed: {why}");
    }
    Ok(
        json!({ "runs": n, "request_bytes": size, "per_second": n as f64 / total.as_secs_f64(), "latency": samples.summary() }),
    )
}

/// Scenario 2 over TCP, as from another host (MUNGE), then over the head's Unix socket.
fn throughput(store: &StoreKind, n: usize, options: JobOptions, later: &mut Leftovers) -> anyhow::Result<Value> {
    let mut result = throughput_over(store, n, options, later, false, BENCH_CONFIG)?;
    result["unix_socket"] = throughput_over(store, n, options, later, true, BENCH_CONFIG)?;
    // What containing each job in a cgroup costs: the same without.
    let uncontained = format!("{BENCH_CONFIG}cgroups:\n  enabled: false\n");
    result["unix_socket"]["without_cgroups"] = throughput_over(store, n, options, later, true, &uncontained)?;
    Ok(result)
}

fn throughput_over(
    store: &StoreKind,
    n: usize,
    options: JobOptions,
    later: &mut Leftovers,
    over_socket: bool,
    config: &str,
) -> anyhow::Result<Value> {
    let cluster = later.keep(Cluster::start_with(store, 4, 32, 65536, config, BENCH_LOG));
    let info = cluster.info().context("cminfo")?;
    let containment = info["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["role"] == "Compute"))
        .and_then(|n| n["containment"].as_str())
        .unwrap_or_default()
        .to_string();
    let mut h = if over_socket {
        let policy = RetryPolicy::new(Duration::from_secs(30), 0);
        Requester::new(&cluster.head_socket, policy, "cmbench", Credentials::None)?
    } else {
        head(&cluster)?
    };
    let how = if over_socket { "the head's Unix socket" } else { "TCP" };
    let job = spec(&cluster.workdir, "true", options)?;
    let first = cm_common::Timestamp::now();
    let started = Instant::now();
    let mut last = JobId(0);
    for _ in 0..n {
        last = submit(&mut h, &job)?;
    }
    let submitted = started.elapsed();
    wait_idle(&mut h, Duration::from_secs(600))?;
    let wall = started.elapsed();
    let ended = get(&mut h, last)?.state.ended_at().context("last job ended")?;
    let makespan = ended.since(first).max(Duration::from_millis(1));
    let rate = n as f64 / makespan.as_secs_f64();
    println!("2. throughput: {n} jobs of `true` on 4 x 32 CPUs over {how}, containment {containment}: submitted in {submitted:.2?}, makespan {makespan:.2?}: {rate:.0} jobs/s (all done after {wall:.2?})");
    Ok(
        json!({ "jobs": n, "containment": containment, "submit_seconds": submitted.as_secs_f64(), "makespan_seconds": makespan.as_secs_f64(), "jobs_per_second": rate }),
    )
}

fn submit_to_start(store: &StoreKind, n: usize, options: JobOptions, later: &mut Leftovers) -> anyhow::Result<Value> {
    let cluster = later.keep(Cluster::start_with(store, 4, 32, 65536, BENCH_CONFIG, BENCH_LOG));
    let mut h = head(&cluster)?;
    let job = spec(&cluster.workdir, "true", options)?;
    let mut samples = Samples::default();
    for _ in 0..n {
        let id = submit(&mut h, &job)?;
        let done = loop {
            let j = get(&mut h, id)?;
            if j.state.is_terminal() {
                break j;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let started = done.nodes.first().and_then(|n| n.started_at).context("start reported")?;
        samples.push(started.since(done.submitted_at));
    }
    println!(
        "3. submit-to-start on an idle cluster ({n} jobs, ms clock): p50 {:.0} ms, p99 {:.0} ms",
        samples.percentile_ms(50.0),
        samples.percentile_ms(99.0)
    );
    Ok(samples.summary())
}

fn cminfo_latency(pending: usize, nodes: usize, later: &mut Leftovers) -> anyhow::Result<Value> {
    let mut cluster = later.keep(Cluster::start_with(
        &StoreKind::Embedded,
        1,
        1,
        4096,
        "kill_grace: 1s\nheartbeat_timeout: 1h\n",
        BENCH_LOG,
    ));
    let mut h = head(&cluster)?;
    let blocker = submit(&mut h, &spec(&cluster.workdir, "sleep 3600", JobOptions { discard_output: false })?)?;
    while !matches!(get(&mut h, blocker)?.state, cm_common::job::JobState::Running { .. }) {
        std::thread::sleep(Duration::from_millis(10));
    }
    fake_nodes::register(&cluster.head_endpoint, &cluster.key(), nodes)?;
    let job = spec(&cluster.workdir, "true", JobOptions { discard_output: false })?;
    let started = Instant::now();
    for _ in 0..pending {
        submit(&mut h, &job)?;
    }
    println!("4. queued {pending} pending jobs behind a running one in {:.2?}", started.elapsed());
    // As from another host: over TCP, with a MUNGE credential.
    cluster.tools_over_tcp();
    let mut samples = Samples::default();
    for _ in 0..30 {
        let t = Instant::now();
        let out = cluster.tool("cminfo", &[]);
        if !out.status.success() {
            bail!("cminfo failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        samples.push(t.elapsed());
    }
    println!(
        "4. cminfo with {pending} pending jobs and {} compute nodes: p50 {:.1} ms, p99 {:.1} ms",
        nodes + 1,
        samples.percentile_ms(50.0),
        samples.percentile_ms(99.0)
    );
    call(&mut h, ClientRequest::KillJob(KillJob { id: blocker }))?;
    Ok(json!({ "pending_jobs": pending, "compute_nodes": nodes + 1, "latency": samples.summary() }))
}

fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

fn head_at_scale(nodes: usize, seconds: u64, later: &mut Leftovers) -> anyhow::Result<Value> {
    let cluster = later.keep(Cluster::start_with(&StoreKind::Embedded, 0, 1, 1024, BENCH_CONFIG, BENCH_LOG));
    let pid = cluster.head.pid().context("head pid")?;
    fake_nodes::register(&cluster.head_endpoint, &cluster.key(), nodes)?;
    let stop = Arc::new(AtomicBool::new(false));
    let interval = cm_common::config::Config::default().heartbeat_interval;
    let generator = {
        let (endpoint, key, stop) = (cluster.head_endpoint.clone(), cluster.key(), stop.clone());
        std::thread::spawn(move || fake_nodes::heartbeat(&endpoint, &key, nodes, interval, 4, stop))
    };
    std::thread::sleep(interval); // warm up: every node has beaten once
    let (t0, c0) = (Instant::now(), process_ticks(pid)?);
    std::thread::sleep(Duration::from_secs(seconds));
    let (elapsed, c1) = (t0.elapsed(), process_ticks(pid)?);
    let rss = rss_mb(pid)?;
    stop.store(true, Ordering::Relaxed);
    let beats = generator.join().map_err(|_| anyhow!("load generator panicked"))?;
    let cpu = (c1 - c0) as f64 / ticks_per_second()? / elapsed.as_secs_f64() * 100.0;
    let info = cluster.tool("cminfo", &["--json"]);
    let up = serde_json::from_slice::<Value>(&info.stdout)
        .ok()
        .and_then(|v| {
            v["nodes"]
                .as_array()
                .map(|n| n.iter().filter(|n| n["role"] == "Compute" && n["health"]["health"] == "Up").count())
        })
        .unwrap_or(0);
    println!("5. head with {nodes} nodes heartbeating every {interval:?} (load generator, real protocol): {cpu:.1}% of a core, RSS {rss:.1} MB; {beats} heartbeats answered, {up} compute nodes Up");
    Ok(
        json!({ "nodes": nodes, "heartbeat_interval_s": interval.as_secs_f64(), "head_cpu_percent": cpu, "head_rss_mb": rss, "heartbeats": beats, "nodes_up": up }),
    )
}

/// Cluster directories to remove when cmbench exits (see the module comment).
#[derive(Default)]
struct Leftovers(Vec<std::path::PathBuf>);

impl Leftovers {
    fn keep(&mut self, mut cluster: Cluster) -> Cluster {
        cluster.dir.disable_cleanup(true);
        self.0.push(cluster.dir.path().to_path_buf());
        cluster
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = store_kind(&args.store)?;
    let scale = |full: usize, quick: usize| if args.quick { quick } else { full };
    let options = JobOptions { discard_output: args.discard_output };
    let mut later = Leftovers::default();
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        if args.runs > 1 {
            println!("run {run} of {}", args.runs);
        }
        let mut results = serde_json::Map::new();
        for scenario in &args.only {
            let result = match scenario {
                1 => serial_cli(&store, scale(1000, 200), options, &mut later)?,
                2 => throughput(&store, scale(2000, 500), options, &mut later)?,
                3 => submit_to_start(&store, scale(200, 50), options, &mut later)?,
                4 => cminfo_latency(scale(10_000, 2_000), 256, &mut later)?,
                5 => head_at_scale(1000, scale(20, 6) as u64, &mut later)?,
                6 => scheduling_pass::scheduling_pass(10_000, 1000, scale(30, 10))?,
                7 => workflows::array(&store, scale(10_000, 2_000), &mut later)?,
                8 => workflows::bulk_cancel(5_000, &mut later)?,
                9 if args.quick => workflows::memory(20_000, &[5_000, 10_000, 20_000], &mut later)?,
                9 => workflows::memory(100_000, &[10_000, 25_000, 50_000, 75_000, 100_000], &mut later)?,
                10 => workflows::wait_round_trip(scale(200, 50), &mut later)?,
                other => bail!("no scenario {other}"),
            };
            let name = [
                "",
                "serial_cli",
                "throughput",
                "submit_to_start",
                "cminfo",
                "head_at_1000_nodes",
                "scheduling_pass",
                "array",
                "bulk_cancel",
                "memory",
                "wait",
            ][*scenario as usize];
            results.insert(name.into(), result);
        }
        runs.push(Value::Object(results));
    }
    let medians = medians(&runs);
    if args.runs > 1 {
        println!("medians of {} runs:", args.runs);
        for (path, median) in &medians {
            let each: Vec<String> =
                runs.iter().filter_map(|run| figure(run, path)).map(|v| format!("{v:.1}")).collect();
            println!("   {path}: {median:.1} (each run: {})", each.join(", "));
        }
    }
    let report = json!({
        "store": args.store,
        "job_output": if args.discard_output { "/dev/null" } else { "files" },
        "runs": runs,
        "medians": Value::Object(medians.into_iter().map(|(path, median)| (path.to_string(), json!(median))).collect()),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The figure at `path` (keys joined by dots) in one run's results, if that run measured it.
fn figure(run: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(run, |value, key| value.get(key))?.as_f64()
}

/// The median of each headline figure over the runs that measured it.
fn medians(runs: &[Value]) -> Vec<(&'static str, f64)> {
    HEADLINES
        .iter()
        .filter_map(|path| {
            let values: Vec<f64> = runs.iter().filter_map(|run| figure(run, path)).collect();
            stats::median(values).map(|median| (*path, median))
        })
        .collect()
}
