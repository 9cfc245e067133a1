//! `cmkill`: cancel pending or running jobs.
#![cfg_attr(not(test), no_main)]

use clap::Parser;
use cm_cli::client::{HeadArgs, HeadClient};
use cm_common::protocol::{ClientRequest, ClientResponse, KillJob};
use cm_common::JobId;

const EXAMPLES: &str = "Examples:
  cmkill 42         cancel job 42
  cmkill 42 43 44   cancel several";

/// Cancel jobs: a pending job leaves the queue; a running job is killed on every node.
#[derive(Debug, Parser)]
#[command(name = "cmkill", version, after_help = EXAMPLES)]
struct Args {
    #[command(flatten)]
    head: HeadArgs,
    /// The jobs to cancel.
    #[arg(required = true)]
    jobs: Vec<JobId>,
}

cm_cli::tool_main!(main);

fn main() {
    let args = cm_cli::generate::parse::<Args>();
    let mut client = match HeadClient::connect(&args.head, "cmkill") {
        Ok(client) => client,
        Err(e) => {
            eprintln!("cmkill: {e:#}");
            std::process::exit(1);
        }
    };
    let mut failed = false;
    for id in args.jobs {
        match client.call(ClientRequest::KillJob(KillJob { id })) {
            Ok(ClientResponse::JobKilled(k)) => cm_cli::outln!("job {} killed (was {})", k.id, k.previous_state),
            Ok(_) => {
                eprintln!("cmkill: job {id}: unexpected reply from the head (another cm release?)");
                failed = true;
            }
            Err(e) => {
                eprintln!("cmkill: job {id}: {e:#}");
                failed = true;
            }
        }
    }
    std::process::exit(i32::from(failed));
}
