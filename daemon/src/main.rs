//! `cmd`: the cm daemon. Parses its settings, sets up logging and signals, and runs its role.

use anyhow::Context;
use clap::Parser;
use cm_auth::key::{ClusterKey, Created};
use cm_common::config::Config;
use cm_daemon::settings::{Args, Command, RoleArg, Settings};
use cm_daemon::{compute, head};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(&args) {
        tracing::error!("{e:#}");
        eprintln!("cmd: {e:#}");
        std::process::exit(1);
    }
}

/// Writes `<state_dir>/<role>.endpoint`, so scripts and tests can find a port chosen by the OS.
fn record_endpoint(state_dir: &Path, role: &str, endpoint: &str) {
    let path = state_dir.join(format!("{role}.endpoint"));
    let written = cm_daemon::private::create_dir(state_dir).and_then(|()| std::fs::write(&path, endpoint));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the endpoint");
    }
}

/// The cluster key at `path`, made first if `make` and there is none.
fn cluster_key(path: &Path, make: bool) -> anyhow::Result<Arc<ClusterKey>> {
    if make && ClusterKey::create(path)? == Created::New {
        tracing::info!(key = %path.display(), "made a new cluster key; copy it to every compute node (mode 0600)");
    }
    Ok(Arc::new(ClusterKey::load(path)?))
}

/// Lets the head use as many descriptors as the system allows it (the soft limit is often
/// 1,024, the hard one far more): every connection takes one. Not for a role that runs jobs,
/// which would inherit the raised limit.
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
            }
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    let settings = Settings::resolve(args, &config);
    if let Some(Command::Keygen { path }) = &args.command {
        let path = path.clone().unwrap_or(settings.head.cluster_key);
        match ClusterKey::create(&path)? {
            Created::New => {
                println!("made the cluster key {}; copy it to every node of the cluster (mode 0600)", path.display())
            }
            Created::Existing => println!("{} is there already; left as it is", path.display()),
        }
        return Ok(());
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, shutdown.clone()).context("cannot install signal handlers")?;
    }
    match settings.role {
        RoleArg::Head => {
            raise_descriptor_limit();
            let key = cluster_key(&settings.head.cluster_key, true)?;
            let dir = settings.head.state_dir.clone();
            head::run(settings.head, key, shutdown, |e| record_endpoint(&dir, "head", e))
        }
        RoleArg::Compute => {
            let key = cluster_key(&settings.compute.cluster_key, false)?;
            let dir = settings.compute.state_dir.clone();
            compute::run(settings.compute, key, shutdown, |e| record_endpoint(&dir, "compute", e))
        }
        RoleArg::Standalone => {
            let key = cluster_key(&settings.head.cluster_key, true)?;
            let head_key = key.clone();
            let (head_bound, bound) = std::sync::mpsc::channel::<String>();
            let dir = settings.head.state_dir.clone();
            let head_shutdown = shutdown.clone();
            let head_settings = settings.head.clone();
            let head = std::thread::Builder::new().name("head".into()).spawn(move || {
                head::run(head_settings, head_key, head_shutdown, |e| {
                    record_endpoint(&dir, "head", e);
                    let _ = head_bound.send(e.to_string());
                })
            })?;
            let Ok(endpoint) = bound.recv() else {
                // The head failed before binding: its error is the one to report.
                return head.join().map_err(|_| anyhow::anyhow!("the head thread panicked"))?;
            };
            let mut compute_settings = settings.compute;
            compute_settings.head_address = endpoint;
            let dir = compute_settings.state_dir.clone();
            let result = compute::run(compute_settings, key, shutdown.clone(), |e| record_endpoint(&dir, "compute", e));
            shutdown.store(true, Ordering::Relaxed);
            let head_result = head.join().map_err(|_| anyhow::anyhow!("the head thread panicked"))?;
            result.and(head_result)
        }
    }
}
