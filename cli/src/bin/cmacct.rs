//! `cmacct`: what jobs used and how they ended, from the head's store, in the manner of `sacct`.
#![cfg_attr(not(test), no_main)]

use anyhow::{anyhow, bail};
use clap::Parser;
use cm_cli::accounting::{self, parse_format, parse_states, parse_time, DEFAULT_FORMAT};
use cm_cli::client::{HeadArgs, HeadClient};
use cm_cli::output;
use cm_common::job::JobFilter;
use cm_common::protocol::{ClientRequest, ClientResponse, FetchJobs};
use cm_common::{JobId, NodeId, Timestamp};

const EXAMPLES: &str = "Examples:
  cmacct                               your jobs: state, elapsed, CPU time, peak memory, exit code
  cmacct -S now-1d -s failed,outofmemory
  cmacct -a -o JobID,User,Partition,State,Elapsed --json";

/// List jobs with their states and what they used (CPU time, peak memory, exit codes): the
/// caller's own by default, finished ones included, from the head's store.
#[derive(Debug, Parser)]
#[command(name = "cmacct", version, after_help = fields_help())]
struct Args {
    #[command(flatten)]
    head: HeadArgs,
    /// Only these jobs (comma-separated ids).
    #[arg(short = 'j', long = "jobs", value_delimiter = ',')]
    jobs: Vec<JobId>,
    /// Only the tasks of these arrays (comma-separated array ids).
    #[arg(long = "array", value_delimiter = ',')]
    arrays: Vec<JobId>,
    /// Only these users' jobs (comma-separated names or uids).
    #[arg(short = 'u', long = "user", value_delimiter = ',')]
    users: Vec<String>,
    /// Every user's jobs (those the head lets the caller see).
    #[arg(short = 'a', long = "allusers")]
    all_users: bool,
    /// Only jobs in these states (comma-separated, e.g. failed,outofmemory).
    #[arg(short = 's', long = "state")]
    states: Option<String>,
    /// Only jobs that had not ended by this time: now, now-2h, 2026-12-06, 2026-12-06T14:30 (UTC).
    #[arg(short = 'S', long = "starttime")]
    start: Option<String>,
    /// Only jobs that ran on any of these nodes (comma-separated).
    #[arg(short = 'N', long = "nodelist", value_delimiter = ',')]
    nodes: Vec<String>,
    /// Only jobs submitted before this time (same forms as --starttime).
    #[arg(short = 'E', long = "endtime")]
    end: Option<String>,
    /// The columns, comma-separated (see below).
    #[arg(short = 'o', long = "format", default_value = DEFAULT_FORMAT)]
    format: String,
    /// At most this many finished jobs (the most recent), and this many pending and running ones; 0: no limit.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON (an array of objects, one key per column, in lower case) instead of a table.
    #[arg(long)]
    json: bool,
}

fn fields_help() -> String {
    let lines: Vec<String> = accounting::FIELDS.iter().map(|(name, what)| format!("  {name:<10} {what}")).collect();
    format!("Fields for --format:\n{}\n\n{EXAMPLES}", lines.join("\n"))
}

cm_cli::tool_main!(main);

fn main() {
    if let Err(e) = run(cm_cli::generate::parse::<Args>()) {
        eprintln!("cmacct: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let fields = parse_format(&args.format).map_err(|e| anyhow!(e))?;
    let now = std::time::SystemTime::now();
    let time = |text: &Option<String>| text.as_deref().map(|t| parse_time(t, now)).transpose().map_err(|e| anyhow!(e));
    let me = nix::unistd::getuid().as_raw();
    let named = !args.jobs.is_empty() || !args.arrays.is_empty();
    let users = match (args.users.is_empty(), args.all_users || named || me == 0) {
        (false, _) => {
            args.users.iter().map(|u| accounting::uid_of(u)).collect::<Result<_, _>>().map_err(|e| anyhow!(e))?
        }
        (true, true) => vec![],
        (true, false) => vec![me],
    };
    let filter = JobFilter {
        users,
        states: args.states.as_deref().map(parse_states).transpose().map_err(|e| anyhow!(e))?.unwrap_or_default(),
        jobs: args.jobs.clone(),
        since: time(&args.start)?,
        until: time(&args.end)?,
        nodes: args.nodes.iter().map(|n| NodeId::new(n.as_str())).collect(),
        arrays: args.arrays.clone(),
    };
    let mut client = HeadClient::connect(&args.head, "cmacct")?;
    let request = FetchJobs { include_finished: true, limit: (args.limit > 0).then_some(args.limit), filter };
    let ClientResponse::Jobs(reply) = client.call(ClientRequest::FetchJobs(request))? else {
        bail!("unexpected reply from the head");
    };
    let now = Timestamp::now();
    if args.json {
        let rows = accounting::fields_json(&reply.jobs, &fields, now);
        cm_cli::outln!("{}", output::json_shown(&serde_json::to_string_pretty(&rows)?));
        return Ok(());
    }
    cm_cli::outln!("{}", accounting::fields_table(&reply.jobs, &fields, now));
    if reply.left_out > 0 {
        cm_cli::outln!("... and {} more pending or running jobs (cmacct --limit 0 lists them all)", reply.left_out);
    }
    Ok(())
}
