//! `cmctl`: operators' orders about nodes, changes to pending jobs, one node, job or partition
//! in full, in the manner of SLURM's `scontrol`, and faults injected on purpose.
#![cfg_attr(not(test), no_main)]

use anyhow::bail;
use clap::{Parser, Subcommand};
use cm_cli::client::{HeadArgs, HeadClient};
use cm_cli::output;
use cm_common::protocol::{
    AdministerNode, ClientRequest, ClientResponse, Fault, FetchNodes, GetJob, InjectFault, JobChange, NodeAction,
    NodeAdministered, UpdateJob,
};
use cm_common::{JobId, NodeId};

const EXAMPLES: &str = "Examples:
  cmctl drain c3 --reason 'new disk'   no new jobs on c3; its running ones finish
  cmctl resume c3
  cmctl hold 42 43                     hold pending jobs (cmctl release 42 43 lets them go)
  cmctl update job 42 priority=0       an operator's hold on job 42 (priority=auto releases it)
  cmctl update job 42 nice=100         lower its priority (owners may, too)
  cmctl show partition
  cmctl fault freeze c2 30             c2 stops answering for 30 s: watch it go Down in cminfo";

/// Drain, resume or remove compute nodes (root and the operators), change a pending job's
/// priority, or show a node, a job or a partition.
#[derive(Debug, Parser)]
#[command(name = "cmctl", version, after_help = EXAMPLES)]
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
    /// Change a pending job: `priority=N` (operators; 0 holds it), `priority=auto` (work it out
    /// again; releases a hold), `nice=N` (owners may lower their job's priority, 0 to 10000).
    Update {
        #[command(subcommand)]
        what: Update,
    },
    /// Hold pending jobs: they wait until released (their owner, root or an operator).
    Hold {
        #[arg(required = true)]
        jobs: Vec<JobId>,
    },
    /// Release held jobs: an owner's hold, and an operator's too if an operator asks.
    Release {
        #[arg(required = true)]
        jobs: Vec<JobId>,
    },
    /// Show a node, a job or a partition in full.
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Inject a fault on purpose, to watch the cluster detect it and recover (root and the
    /// operators): a crash, a hang or a network cut of a node's daemon, or a rank dying.
    Fault {
        #[command(subcommand)]
        fault: FaultArg,
    },
}

#[derive(Debug, Subcommand)]
enum FaultArg {
    /// NODE's daemon exits at once, as in a crash (its jobs keep running under their
    /// supervisors until the daemon is restarted, by systemd or the container's restart policy).
    Crash { node: String },
    /// NODE's daemon stops for SECONDS, as if hung: no heartbeats, no answers; its jobs run on.
    Freeze { node: String, seconds: u32 },
    /// NODE is cut off from the head for SECONDS: its daemon and jobs run, nothing passes.
    Isolate { node: String, seconds: u32 },
    /// Rank RANK of job JOB is killed (SIGKILL), as if it crashed.
    KillRank { job: JobId, rank: u64 },
}

#[derive(Debug, Subcommand)]
enum Update {
    /// Job ID: one or more KEY=VALUE (priority=N, priority=auto, nice=N).
    Job {
        id: JobId,
        #[arg(required = true, value_parser = parse_change)]
        changes: Vec<JobChange>,
    },
}

/// `priority=N`, `priority=auto` or `nice=N` (keys in any case, as scontrol takes them).
fn parse_change(text: &str) -> Result<JobChange, String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    match (key.to_ascii_lowercase().as_str(), value) {
        ("priority", "auto") => Ok(JobChange::AutoPriority),
        ("priority", n) => {
            n.parse().map(JobChange::Priority).map_err(|_| format!("priority={n}: give 0 to 4294967295, or auto"))
        }
        ("nice", n) => n.parse().map(JobChange::Nice).map_err(|_| format!("nice={n}: give a whole number")),
        _ => Err(format!("cannot change {key:?}: priority and nice can change")),
    }
}

#[derive(Debug, Subcommand)]
enum Show {
    /// Every node, or NODE, in full.
    Node { node: Option<String> },
    /// Job ID in full.
    Job { id: JobId },
    /// Every partition, or NAME, in full.
    Partition { name: Option<String> },
}

cm_cli::tool_main!(main);

fn main() {
    if let Err(e) = run(cm_cli::generate::parse::<Args>()) {
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
        Some(after) => cm_cli::outln!("{}: {}", output::shown(after.id.as_str()), after.status()),
        None => cm_cli::outln!("{}: removed", output::shown(node.as_str())),
    }
    Ok(())
}

/// Holds or releases each of `jobs`, saying what became of each; fails if any could not be.
fn hold_or_release(client: &mut HeadClient, jobs: Vec<JobId>, change: JobChange, done: &str) -> anyhow::Result<()> {
    let mut failed = 0;
    for id in jobs {
        match client.call(ClientRequest::UpdateJob(UpdateJob { id, changes: vec![change.clone()] })) {
            Ok(ClientResponse::Job(reply)) => cm_cli::outln!("job {} {done}", reply.job.display_id()),
            Ok(_) => bail!("unexpected reply from the head"),
            Err(e) => {
                eprintln!("cmctl: job {id}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} job(s) not {done}");
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    let mut client = HeadClient::connect(&args.head, "cmctl")?;
    match args.command {
        Command::Drain { node, reason } => administer(&mut client, NodeId::new(node), NodeAction::Drain { reason }),
        Command::Resume { node } => administer(&mut client, NodeId::new(node), NodeAction::Resume),
        Command::Remove { node } => administer(&mut client, NodeId::new(node), NodeAction::Remove),
        Command::Fault { fault } => {
            let fault = match fault {
                FaultArg::Crash { node } => Fault::Crash { node: NodeId::new(node) },
                FaultArg::Freeze { node, seconds } => Fault::Freeze { node: NodeId::new(node), seconds },
                FaultArg::Isolate { node, seconds } => Fault::Isolate { node: NodeId::new(node), seconds },
                FaultArg::KillRank { job, rank } => Fault::KillRank { job, rank },
            };
            let ClientResponse::FaultInjected(done) = client.call(ClientRequest::InjectFault(InjectFault { fault }))?
            else {
                bail!("unexpected reply from the head");
            };
            cm_cli::outln!("fault sent to {}", output::shown(done.node.as_str()));
            Ok(())
        }
        Command::Show { what: Show::Job { id } } => {
            let ClientResponse::Job(reply) = client.call(ClientRequest::GetJob(GetJob { id }))? else {
                bail!("unexpected reply from the head");
            };
            cm_cli::out!("{}", output::job_detail(&reply.job));
            Ok(())
        }
        Command::Hold { jobs } => hold_or_release(&mut client, jobs, JobChange::Hold, "held"),
        Command::Release { jobs } => hold_or_release(&mut client, jobs, JobChange::Release, "released"),
        Command::Update { what: Update::Job { id, changes } } => {
            let ClientResponse::Job(reply) = client.call(ClientRequest::UpdateJob(UpdateJob { id, changes }))? else {
                bail!("unexpected reply from the head");
            };
            cm_cli::out!("{}", output::job_detail(&reply.job));
            Ok(())
        }
        Command::Show { what: Show::Partition { name } } => {
            let ClientResponse::Nodes(reply) = client.call(ClientRequest::FetchNodes(FetchNodes {}))? else {
                bail!("unexpected reply from the head");
            };
            let shown: Vec<_> =
                reply.partitions.iter().filter(|p| name.as_ref().is_none_or(|n| &p.partition.name == n)).collect();
            if shown.is_empty() {
                bail!(
                    "there is no partition {}; cminfo --partitions lists them",
                    output::shown(&name.unwrap_or_default())
                );
            }
            for partition in shown {
                cm_cli::out!("{}", output::partition_detail(partition));
            }
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
                cm_cli::out!("{}", output::node_detail(node));
            }
            Ok(())
        }
    }
}
