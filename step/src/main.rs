//! `cmstep STEP_FILE`: the supervisor a compute daemon starts for each job run (see
//! [`cm_step::supervisor`]). Its stderr is the node's supervisor log, `STATE_DIR/cmstep.log`.

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: cmstep STEP_FILE (started by the compute daemon, not by users)");
        std::process::exit(2);
    };
    let path = std::path::Path::new(&path);
    if let Err(e) = cm_step::supervisor::run(path) {
        tracing::error!(step = %path.display(), "{e:#}");
        std::process::exit(1);
    }
}
