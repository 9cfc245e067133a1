//! `cmstep STEP_FILE`: supervise one job run (see [`cm_step::supervisor`]).
//! `cmstep --launcher`: the fork server that starts supervisors for a compute daemon (see
//! [`cm_step::launcher`]). Started by the compute daemon, not by users; stderr is the node's
//! supervisor log, `STATE_DIR/cmstep.log`.

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let Some(arg) = std::env::args_os().nth(1) else {
        eprintln!("usage: cmstep STEP_FILE | cmstep --launcher (started by the compute daemon, not by users)");
        std::process::exit(2);
    };
    if arg == "--launcher" {
        if let Err(e) = cm_step::launcher::serve() {
            tracing::error!("launcher: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let path = std::path::Path::new(&arg);
    if let Err(e) = cm_step::supervisor::run(path) {
        tracing::error!(step = %path.display(), "{e:#}");
        std::process::exit(1);
    }
}
