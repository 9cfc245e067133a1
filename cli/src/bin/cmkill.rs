//! `cmkill`: cancel pending or running jobs, by id, range, array or array task, or every job of
//! a user, in a state or of a name, in one request to the head.
#![cfg_attr(not(test), no_main)]

use anyhow::{anyhow, bail};
use clap::Parser;
use cm_cli::accounting;
use cm_cli::client::{HeadArgs, HeadClient};
use cm_common::protocol::{ClientRequest, ClientResponse, JobRef, JobSelection, KillJobs};

const EXAMPLES: &str = "Examples:
  cmkill 42                 cancel job 42
  cmkill 42 43 100-200      several, and every job from 100 to 200
  cmkill 12                 every task of array 12
  cmkill 12_7               task 7 of array 12
  cmkill --me --state Pending            all your pending jobs
  cmkill --user alice --name sweep       alice's jobs named sweep (root and operators)";

/// Cancel jobs: a pending job leaves the queue; a running job is killed on every node. Jobs
/// named by id must all be yours (root and the operators may cancel any); with only filters,
/// other users' jobs are left alone.
#[derive(Debug, Parser)]
#[command(name = "cmkill", version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    head: HeadArgs,
    /// The jobs to cancel: ID, ID_TASK (one task of an array), FIRST-LAST (a range of ids).
    jobs: Vec<JobRef>,
    /// Only your own jobs.
    #[arg(long)]
    me: bool,
    /// Only jobs of these users (names or uids, comma-separated).
    #[arg(short = 'u', long = "user", value_delimiter = ',')]
    users: Vec<String>,
    /// Only jobs in these states (Pending, Running; any case, comma-separated).
    #[arg(short = 't', long = "state")]
    states: Option<String>,
    /// Only jobs of these names (comma-separated).
    #[arg(short = 'n', long = "name", value_delimiter = ',')]
    names: Vec<String>,
}

cm_cli::tool_main!(main);

fn main() {
    let args = cm_cli::generate::parse::<Args>();
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cmkill: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: Args) -> anyhow::Result<i32> {
    let mut users: Vec<u32> =
        args.users.iter().map(|u| accounting::uid_of(u)).collect::<Result<_, _>>().map_err(|e| anyhow!(e))?;
    if args.me {
        users.push(nix::unistd::getuid().as_raw());
    }
    let states = args.states.as_deref().map(accounting::parse_states).transpose().map_err(|e| anyhow!(e))?;
    let states = states.unwrap_or_default();
    let selection = JobSelection { jobs: args.jobs, users, states, names: args.names };
    if selection.is_empty() {
        bail!("name the jobs to cancel (ID, ID_TASK, FIRST-LAST), or select them (--me, --user, --state, --name)");
    }
    let mut client = HeadClient::connect(&args.head, "cmkill")?;
    let ClientResponse::JobsKilled(reply) = client.call(ClientRequest::KillJobs(KillJobs { selection }))? else {
        bail!("unexpected reply from the head (another cm release?)");
    };
    match reply.killed.len() {
        0 if reply.refused.is_empty() => cm_cli::outln!("no pending or running job matched"),
        0 => {}
        1 => cm_cli::outln!("killed 1 job: {}", reply.killed[0]),
        n @ 2..=20 => cm_cli::outln!("killed {n} jobs: {}", reply.killed.join(" ")),
        n => cm_cli::outln!("killed {n} jobs: {} ... {}", reply.killed[0], reply.killed[n - 1]),
    }
    for line in &reply.refused {
        eprintln!("cmkill: {}", cm_cli::output::shown(line));
    }
    Ok(i32::from(!reply.refused.is_empty()))
}
