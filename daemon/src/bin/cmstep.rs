//! `cmstep DIR`: the job supervisor a compute daemon starts for each job run (see
//! `cm_daemon::compute::step`). A binary of its own, apart from `cmd`, because one starts per
//! job: it links only what supervising needs, so it starts in a fraction of `cmd`'s time.

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let Some(dir) = std::env::args_os().nth(1) else {
        eprintln!("usage: cmstep JOB_DIR (started by the compute daemon, not by users)");
        std::process::exit(2);
    };
    if let Err(e) = cm_daemon::compute::step::run(std::path::Path::new(&dir)) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}
