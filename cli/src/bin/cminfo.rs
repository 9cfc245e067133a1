//! `cminfo`: the cluster at a glance (head nodes, compute nodes, partitions, jobs), or one job in
//! full.
#![cfg_attr(not(test), no_main)]

use anyhow::{anyhow, bail};
use clap::Parser;
use cm_cli::accounting::{fields_json, fields_table, parse_format, parse_states, uid_of};
use cm_cli::client::{HeadArgs, HeadClient};
use cm_cli::output;
use cm_common::job::JobFilter;
use cm_common::protocol::{ClientRequest, ClientResponse, FetchJobs, FetchNodes, GetJob, JobRef};
use cm_common::{JobId, NodeId};

const EXAMPLES: &str = "Examples:
  cminfo                  nodes, partitions, pending and running jobs
  cminfo 42               job 42 in full: why it waits, where it ran, how it ended
  cminfo --all --limit 0  every job, finished ones too
  cminfo --partitions     partitions and their nodes, as sinfo shows them
  cminfo --json | jq '.jobs[] | select(.state.status == \"Pending\") | .id'";

/// Show nodes and pending/running jobs, or one job in full.
#[derive(Debug, Parser)]
#[command(name = "cminfo", version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    head: HeadArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also list finished jobs (the most recent --limit).
    #[arg(long)]
    all: bool,
    /// List at most this many pending and running jobs (running first, then the oldest
    /// pending), and with --all this many finished ones; 0: no limit.
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Only these users' jobs (comma-separated names or uids).
    #[arg(short = 'u', long = "user", value_delimiter = ',')]
    users: Vec<String>,
    /// Only your own jobs.
    #[arg(long)]
    me: bool,
    /// Only jobs in these states (comma-separated, any case: pending,running).
    #[arg(short = 's', long = "state")]
    states: Option<String>,
    /// Only jobs placed on any of these nodes (comma-separated).
    #[arg(short = 'w', long = "nodelist", value_delimiter = ',')]
    nodes: Vec<String>,
    /// The job table's columns, comma-separated, as cmacct's --format names them (JobID, JobName,
    /// User, State, Partition, Priority, Reason, NodeList, ...: cmacct --help lists them).
    #[arg(short = 'o', long = "format")]
    format: Option<String>,
    /// Show only the partitions, their nodes grouped by status (as sinfo does).
    #[arg(long)]
    partitions: bool,
    /// Show this job in full: an id (12) or an array task (12_7).
    job: Option<JobRef>,
}

cm_cli::tool_main!(main);

fn main() {
    if let Err(e) = run(cm_cli::generate::parse::<Args>()) {
        eprintln!("cminfo: {e:#}");
        std::process::exit(1);
    }
}

/// The id of the job `job` names: a task of an array is a job of its own once it has started,
/// and the array's record while it waits there.
fn job_id(client: &mut HeadClient, job: JobRef) -> anyhow::Result<JobId> {
    let (array, task) = match job {
        JobRef::Job(id) => return Ok(id),
        JobRef::Range(..) => bail!("give one job, not a range"),
        JobRef::Task(array, task) => (array, task),
    };
    let filter = JobFilter { arrays: vec![array], ..JobFilter::default() };
    let request = FetchJobs { include_finished: true, limit: None, filter };
    let ClientResponse::Jobs(reply) = client.call(ClientRequest::FetchJobs(request))? else {
        bail!("unexpected reply from the head");
    };
    let found = reply.jobs.iter().find(|j| j.array.as_ref().is_some_and(|a| a.holds(task)));
    found.map(|j| j.id).ok_or_else(|| anyhow!("array {array} has no task {task}"))
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut client = HeadClient::connect(&args.head, "cminfo")?;
    if let Some(job) = args.job {
        let id = job_id(&mut client, job)?;
        let ClientResponse::Job(reply) = client.call(ClientRequest::GetJob(GetJob { id }))? else {
            bail!("unexpected reply from the head");
        };
        if args.json {
            cm_cli::outln!("{}", output::json_shown(&serde_json::to_string_pretty(&reply.job)?));
        } else {
            cm_cli::out!("{}", output::job_detail(&reply.job));
        }
        return Ok(());
    }
    let fields = args.format.as_deref().map(parse_format).transpose().map_err(|e| anyhow!(e))?;
    let mut users: Vec<u32> = args.users.iter().map(|u| uid_of(u)).collect::<Result<_, _>>().map_err(|e| anyhow!(e))?;
    if args.me {
        users.push(nix::unistd::getuid().as_raw());
    }
    let filter = JobFilter {
        users,
        states: args.states.as_deref().map(parse_states).transpose().map_err(|e| anyhow!(e))?.unwrap_or_default(),
        nodes: args.nodes.iter().map(|n| NodeId::new(n.as_str())).collect(),
        ..JobFilter::default()
    };
    // Filters or columns: the jobs alone, as squeue shows them.
    let jobs_only = fields.is_some() || filter != JobFilter::default();
    let ClientResponse::Nodes(nodes) = client.call(ClientRequest::FetchNodes(FetchNodes {}))? else {
        bail!("unexpected reply from the head");
    };
    if args.partitions {
        if args.json {
            cm_cli::outln!("{}", output::json_shown(&serde_json::to_string_pretty(&nodes.partitions)?));
        } else {
            cm_cli::out!("{}", output::partitions_table(&nodes.partitions, &nodes.nodes));
        }
        return Ok(());
    }
    let request = FetchJobs { include_finished: args.all, limit: (args.limit > 0).then_some(args.limit), filter };
    let ClientResponse::Jobs(jobs) = client.call(ClientRequest::FetchJobs(request))? else {
        bail!("unexpected reply from the head");
    };
    if let Some(fields) = fields {
        let now = cm_common::Timestamp::now();
        if args.json {
            let rows = fields_json(&jobs.jobs, &fields, now);
            cm_cli::outln!("{}", output::json_shown(&serde_json::to_string_pretty(&rows)?));
        } else {
            cm_cli::outln!("{}", fields_table(&jobs.jobs, &fields, now));
        }
        return Ok(());
    }
    if jobs_only {
        if args.json {
            let only = serde_json::json!({ "jobs": jobs.jobs, "jobs_left_out": jobs.left_out });
            cm_cli::outln!("{}", output::json_shown(&serde_json::to_string_pretty(&only)?));
        } else {
            cm_cli::out!("{}", output::jobs_table(&jobs.jobs, jobs.left_out));
        }
        return Ok(());
    }
    if args.json {
        let all = serde_json::json!({
            "nodes": nodes.nodes,
            "partitions": nodes.partitions,
            "jobs": jobs.jobs,
            "jobs_left_out": jobs.left_out,
        });
        cm_cli::outln!("{}", output::json_shown(&serde_json::to_string_pretty(&all)?));
    } else {
        cm_cli::out!(
            "{}\n{}\n{}",
            output::nodes_tables(&nodes.nodes),
            output::partitions_table(&nodes.partitions, &nodes.nodes),
            output::jobs_table(&jobs.jobs, jobs.left_out)
        );
    }
    Ok(())
}
