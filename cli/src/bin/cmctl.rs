//! `cmctl`: operators' orders about nodes, and one node or job in full, in the manner of SLURM's
//! `scontrol`.
#![cfg_attr(not(test), no_main)]

use anyhow::bail;
use clap::{Parser, Subcommand};
use cm_cli::client::{HeadArgs, HeadClient};
use cm_cli::output;
use cm_common::protocol::{
    AdministerNode, ClientRequest, ClientResponse, FetchNodes, GetJob, NodeAction, NodeAdministered,
};
use cm_common::{JobId, NodeId};

/// Drain, resume or remove compute nodes (root and the operators), or show a node or a job.
#[derive(Debug, Parser)]
#[command(name = "cmctl", version)]
struct Args {
    #[command(flatten)]
    head: HeadArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Take no new job on NODE; its running jobs finish (Draining, then Drained).
    Drain {
        node: String,
        /// Why, shown by cminfo with who drained it.
        #[arg(long)]
        reason: String,
    },
    /// Let a drained NODE take jobs again.
    Resume { node: String },
    /// Forget NODE, one that is gone for good (refused while it holds jobs).
    Remove { node: String },
    /// Show a node or a job in full.
    Show {
        #[command(subcommand)]
        what: Show,
    },
}

#[derive(Debug, Subcommand)]
enum Show {
    /// Every node, or NODE, in full.
    Node { node: Option<String> },
    /// Job ID in full.
    Job { id: JobId },
}

cm_cli::tool_main!(main);

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("cmctl: {e:#}");
        std::process::exit(1);
    }
}

fn administer(client: &mut HeadClient, node: NodeId, action: NodeAction) -> anyhow::Result<()> {
    let request = ClientRequest::AdministerNode(AdministerNode { node: node.clone(), action });
    let ClientResponse::NodeAdministered(NodeAdministered { node: after }) = client.call(request)? else {
        bail!("unexpected reply from the head");
    };
    match after {
        Some(after) => println!("{}: {}", output::shown(after.id.as_str()), after.status()),
        None => println!("{}: removed", output::shown(node.as_str())),
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut client = HeadClient::connect(&args.head, "cmctl")?;
    match args.command {
        Command::Drain { node, reason } => administer(&mut client, NodeId::new(node), NodeAction::Drain { reason }),
        Command::Resume { node } => administer(&mut client, NodeId::new(node), NodeAction::Resume),
        Command::Remove { node } => administer(&mut client, NodeId::new(node), NodeAction::Remove),
        Command::Show { what: Show::Job { id } } => {
            let ClientResponse::Job(reply) = client.call(ClientRequest::GetJob(GetJob { id }))? else {
                bail!("unexpected reply from the head");
            };
            print!("{}", output::job_detail(&reply.job));
            Ok(())
        }
        Command::Show { what: Show::Node { node } } => {
            let ClientResponse::Nodes(reply) = client.call(ClientRequest::FetchNodes(FetchNodes {}))? else {
                bail!("unexpected reply from the head");
            };
            let nodes: Vec<_> =
                reply.nodes.iter().filter(|n| node.as_ref().is_none_or(|id| n.id.as_str() == id)).collect();
            if nodes.is_empty() {
                bail!("there is no node {}; cminfo lists them", output::shown(&node.unwrap_or_default()));
            }
            for node in nodes {
                print!("{}", output::node_detail(node));
            }
            Ok(())
        }
    }
}
