//! `cmrun`: submit a job; with `--wait`, wait for it and exit with its exit code.
#![cfg_attr(not(test), no_main)]

use anyhow::{anyhow, bail};
use clap::Parser;
use cm_cli::client::{HeadArgs, HeadClient};
use cm_cli::follow::Follower;
use cm_cli::submit::{build_spec, current_user, submit_token, Request};
use cm_common::job::Mpi;
use cm_common::protocol::{AssignJobId, ClientRequest, ClientResponse};

const EXAMPLES: &str = "Examples:
  cmrun hostname                           one process on one node; prints the job id
  cmrun -n 2 -p 4 'echo $CM_PROC_RANK'     8 ranks, 4 on each of 2 nodes
  cmrun --wait -t 10 ./simulate            wait for it (Ctrl-C cancels); exit with its code
  cmrun -P debug -c 4 --mem-per-node 2000 make -j4
  cmrun -o 'out/%j.%r.txt' ./sweep         where each rank's stdout goes
  cmrun -n 2 -p 2 -W -l ./mpi_hello        an MPI program of 4 ranks (MPICH), no mpiexec
  cmrun --array 0-99%8 ./task.sh           100 tasks, 8 at a time; each sees CM_ARRAY_TASK_ID
  cmrun -d afterok:42 ./analyse            starts once job 42 has completed
  cmrun job.sh                             a batch script: its #CM lines give options (#CM -n 2)";

/// Submit a job: COMMAND runs as `sh -c COMMAND` in N processes on each of N nodes, as you, in
/// this directory, with this environment plus CM_* variables.
#[derive(Debug, Parser)]
#[command(name = "cmrun", version, after_help = EXAMPLES, args_override_self = true)]
struct Args {
    #[command(flatten)]
    head: HeadArgs,
    /// Job name [default: the command's first word].
    #[arg(short = 'a', long)]
    alias: Option<String>,
    /// Number of nodes.
    #[arg(short = 'n', long)]
    nodes: Option<u32>,
    /// Processes (replicas) per node.
    #[arg(short = 'p', long)]
    processes: Option<u32>,
    /// CPU cores reserved per node.
    #[arg(short = 'c', long = "num-cpus-per-node")]
    cpus_per_node: Option<u32>,
    /// Memory reserved per node, in MB.
    #[arg(long = "mem-per-node")]
    mem_per_node: Option<u64>,
    /// GPUs reserved per node; the job sees them, and only them, in CUDA_VISIBLE_DEVICES.
    #[arg(long = "gpus-per-node", default_value_t = 0)]
    gpus_per_node: u32,
    /// Time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (0: none).
    #[arg(short = 't', long = "time-limit")]
    time_limit: Option<String>,
    /// stdout file pattern (%j job id, %n node, %r rank) [default: cmlogs/%j/%n.%r.out].
    #[arg(short = 'o', long = "output")]
    output: Option<String>,
    /// stderr file pattern [default: cmlogs/%j/%n.%r.err].
    #[arg(short = 'e', long = "error")]
    error: Option<String>,
    /// If one of the job's nodes is lost, queue the job again (same id) instead of ending it as NodeFail.
    #[arg(long)]
    requeue: bool,
    /// The partition to run in [default: the cluster's default partition].
    #[arg(short = 'P', long)]
    partition: Option<String>,
    /// Lower the job's priority by N (0 to 10000); only operators may give a negative N.
    #[arg(long, allow_negative_numbers = true)]
    nice: Option<i32>,
    /// Fix the job's priority at N instead of working it out (operators only; 0 holds the job).
    #[arg(long)]
    priority: Option<u32>,
    /// Wait until the job ends, showing every rank's stdout and stderr as it is written, and exit
    /// with the job's exit code. Ctrl-C (or SIGTERM, SIGHUP) cancels the job, waits for it to
    /// end, and exits with 128 + the signal (130 for Ctrl-C); a second one stops waiting at once.
    #[arg(short = 'W', long)]
    wait: bool,
    /// How the ranks find each other as one MPI program: pmi1 gives each rank a PMI-1
    /// connection (PMI_FD), which MPICH's MPI_Init uses; none gives none.
    #[arg(long, value_parser = ["pmi1", "none"], default_value = "pmi1")]
    mpi: String,
    /// Submit an array of tasks, each a job of its own that sees CM_ARRAY_TASK_ID: 0-99,
    /// 1,5,7-9, 0-99:10 (every tenth), with %N to run at most N at once (0-99%8). To wait for
    /// all of them: cmrun --wait -d afterany:ID true.
    #[arg(long, conflicts_with = "wait")]
    array: Option<String>,
    /// Start only once other jobs have: after:ID (started), afterany:ID (ended), afterok:ID
    /// (completed), afternotok:ID (failed), each with :ID:ID... for several, or singleton (no
    /// earlier job of yours of the same name is pending or running); several joined with `,`.
    #[arg(short = 'd', long)]
    dependency: Option<String>,
    /// Submit it held: it waits until released (cmctl release ID).
    #[arg(short = 'H', long)]
    hold: bool,
    /// With --wait, begin each line of output with its rank (`3: ...`), as srun --label.
    #[arg(short = 'l', long, requires = "wait")]
    label: bool,
    /// The command to run.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

cm_cli::tool_main!(main);

fn main() {
    let args = cm_cli::generate::parse::<Args>();
    let args = match with_directives(args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("cmrun: {e}");
            std::process::exit(2);
        }
    };
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("cmrun: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The arguments with a batch script's `#CM` lines before the command line's own options
/// (which therefore override them), and the command that runs the script.
fn with_directives(args: Args) -> Result<Args, String> {
    let Some(first) = args.command.first() else { return Ok(args) };
    let Some(script) = cm_cli::directives::script(first)? else { return Ok(args) };
    let mut words: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let program = words.first().cloned().unwrap_or_else(|| "cmrun".into());
    // The directives alone first, so that one short of its value does not take the next word.
    let alone = std::iter::once(program.clone()).chain(script.options.iter().map(Into::into));
    let refused = |e: clap::Error| {
        let text = e.to_string();
        let line = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
        format!("in the #CM lines of {first}: {line}")
    };
    let parsed = Args::try_parse_from(alone.chain(["--".into(), "true".into()])).map_err(refused)?;
    // A word cmrun does not take would otherwise begin the command.
    if let Some(stray) = parsed.command.first().filter(|_| parsed.command.len() > 1) {
        return Err(format!("in the #CM lines of {first}: {stray:?} is not an option of cmrun (cmrun --help)"));
    }
    words.splice(0..1, std::iter::once(program).chain(script.options.iter().map(Into::into)));
    let mut args = Args::try_parse_from(words).map_err(|e| format!("{e}"))?;
    // The script's words, then its arguments, each quoted for the shell as several words are.
    args.command.splice(0..1, script.program);
    Ok(args)
}

fn run(args: Args) -> anyhow::Result<i32> {
    let mut client = HeadClient::connect(&args.head, "cmrun")?;
    let request = Request {
        alias: args.alias,
        nodes: args.nodes,
        processes: args.processes,
        cpus_per_node: args.cpus_per_node,
        mem_per_node_mb: args.mem_per_node,
        gpus_per_node: args.gpus_per_node,
        time_limit: args.time_limit,
        stdout: args.output,
        stderr: args.error,
        requeue: args.requeue,
        partition: args.partition,
        nice: args.nice,
        priority: args.priority,
        mpi: if args.mpi == "none" { Mpi::None } else { Mpi::Pmi1 },
        array: args.array,
        dependency: args.dependency,
        hold: args.hold,
        command: args.command,
    };
    let workdir = std::env::current_dir().map_err(|e| anyhow!("cannot read the current directory: {e}"))?;
    let workdir = workdir.to_str().ok_or_else(|| anyhow!("the current directory is not valid UTF-8"))?.to_string();
    // Variables that are not valid UTF-8 cannot travel in the job; they are left out, not fatal.
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect();
    let spec = build_spec(&request, &client.config.defaults, current_user(), workdir, env).map_err(|e| anyhow!(e))?;
    let id = match client.call(ClientRequest::AssignJobId(AssignJobId { spec, token: submit_token() }))? {
        ClientResponse::JobAccepted(accepted) => {
            if let Some(warning) = accepted.warning {
                eprintln!("cmrun: warning: {warning}");
            }
            accepted.id
        }
        _ => bail!("unexpected reply from the head (another cm release?)"),
    };
    cm_cli::outln!("{id}");
    let code =
        if args.wait { cm_cli::wait::wait_for(&mut client, &args.head, id, Follower::new(args.label))? } else { 0 };
    Ok(code)
}
