//! `cmstep STEP_FILE`: supervise one job run (see [`cm_step::supervisor`]).
//! `cmstep --launcher [KEEP_IDLE_MS]`: the fork server that starts supervisors for a compute
//! daemon (see [`cm_step::launcher`]); an idle supervisor is kept KEEP_IDLE_MS for a next run
//! (default [`cm_step::launcher::IDLE_KEEP`]). Started by the compute daemon, not by users;
//! stderr is the node's supervisor log, `STATE_DIR/cmstep.log`.

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
        let keep_idle = match std::env::args().nth(2).map(|ms| ms.parse::<u64>()) {
            None => cm_step::launcher::IDLE_KEEP,
            Some(Ok(ms)) => std::time::Duration::from_millis(ms),
            Some(Err(_)) => {
                eprintln!("cmstep --launcher: KEEP_IDLE_MS must be a whole number of milliseconds");
                std::process::exit(2);
            }
        };
        if let Err(e) = cm_step::launcher::serve(keep_idle) {
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
