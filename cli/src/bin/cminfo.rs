//! `cminfo`: the cluster at a glance (head nodes, compute nodes, partitions, jobs), or one job in
//! full.
#![cfg_attr(not(test), no_main)]

use anyhow::bail;
use clap::Parser;
use cm_cli::client::{HeadArgs, HeadClient};
use cm_cli::output;
use cm_common::protocol::{ClientRequest, ClientResponse, FetchJobs, FetchNodes, GetJob};
use cm_common::JobId;

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
    /// Show only the partitions, their nodes grouped by status (as sinfo does).
    #[arg(long)]
    partitions: bool,
    /// Show this job in full.
    job: Option<JobId>,
}

cm_cli::tool_main!(main);

fn main() {
    if let Err(e) = run(cm_cli::generate::parse::<Args>()) {
        eprintln!("cminfo: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut client = HeadClient::connect(&args.head, "cminfo")?;
    if let Some(id) = args.job {
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
    let request = FetchJobs {
        include_finished: args.all,
        limit: (args.limit > 0).then_some(args.limit),
        filter: Default::default(),
    };
    let ClientResponse::Jobs(jobs) = client.call(ClientRequest::FetchJobs(request))? else {
        bail!("unexpected reply from the head");
    };
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
