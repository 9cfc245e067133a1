//! `cmrun --wait`: waits for the job to end and returns its exit code. The head answers a
//! [`WaitJob`] when the job is placed and when it ends (or after a while, when it is asked
//! again), so the end is known within the head's turn that made it, with no polling interval.
//! Meanwhile a second thread shows the job's output as it is written, every 100 ms, and acts on
//! signals: the first cancels the job (over a connection of its own), a second stops waiting.

use crate::client::{HeadArgs, HeadClient};
use crate::follow::Follower;
use anyhow::bail;
use cm_common::job::JobState;
use cm_common::protocol::{ClientRequest, ClientResponse, KillJob, WaitJob, MAX_WAIT_MS};
use cm_common::JobId;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Waits for job `id`, showing its output with `follower`; returns the code cmrun exits with.
pub fn wait_for(client: &mut HeadClient, head: &HeadArgs, id: JobId, follower: Follower) -> anyhow::Result<i32> {
    let caught = catch_cancel_signals()?;
    let output = Arc::new(Mutex::new(follower));
    // Dropped when the job has ended: the watcher stops at once, not at its next look.
    let (done, stop) = std::sync::mpsc::channel::<()>();
    let cancelled_by = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (output, cancelled_by, head) = (output.clone(), cancelled_by.clone(), head.clone());
        std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(100)) {
                if let Some(signal) = take_signal(&caught) {
                    if cancelled_by.load(Ordering::Relaxed) != 0 {
                        eprintln!("cmrun: stopped waiting for job {id}, which is being cancelled");
                        std::process::exit(128 + signal);
                    }
                    eprintln!("cmrun: cancelling job {id} (signal {signal}); again to stop waiting");
                    cancelled_by.store(usize::try_from(signal).unwrap_or(0), Ordering::Relaxed);
                    let kill = HeadClient::connect(&head, "cmrun")
                        .and_then(|mut c| c.call(ClientRequest::KillJob(KillJob { id })));
                    // It may have ended meanwhile: its state says so.
                    if let Err(e) = kill {
                        eprintln!("cmrun: {e:#}");
                    }
                }
                if let Ok(mut output) = output.lock() {
                    output.show(false);
                }
            }
        })
    };
    // Well within the request's deadline, so a long wait is not taken for a lost reply.
    let timeout_ms =
        u32::try_from((client.config.request_timeout / 2).as_millis()).unwrap_or(MAX_WAIT_MS).min(MAX_WAIT_MS);
    let mut known_run = None;
    let job = loop {
        let job = match client.call(ClientRequest::WaitJob(WaitJob { id, known_run, timeout_ms }))? {
            ClientResponse::Job(reply) => reply.job,
            _ => bail!("unexpected reply from the head (another cm release?)"),
        };
        if !job.nodes.is_empty() {
            known_run = Some(job.run);
        }
        if let Ok(mut output) = output.lock() {
            output.track(&job);
        }
        if job.exit_code().is_some() {
            break job;
        }
    };
    drop(done);
    let _ = watcher.join();
    let code = job.exit_code().unwrap_or(1);
    let mut output = output.lock().map_err(|_| anyhow::anyhow!("the output thread failed"))?;
    output.show(true);
    if let Some(unseen) = output.none_visible(&job) {
        eprintln!(
            "cmrun: the job's output is not visible on this host (no {}): its working directory is not shared with its nodes",
            crate::output::shown(&unseen.display().to_string())
        );
    }
    let signal = cancelled_by.load(Ordering::Relaxed);
    if signal != 0 && matches!(job.state, JobState::Killed { .. }) {
        return Ok(128 + i32::try_from(signal).unwrap_or(0));
    }
    if code != 0 {
        let reason = job.state.reason().map(|r| format!(": {r}")).unwrap_or_default();
        eprintln!("cmrun: job {} ended {}{}", job.display_id(), job.state.name(), crate::output::shown(&reason));
    }
    Ok(code)
}

/// The signals that cancel a job `cmrun --wait` waits for: the number of the last one caught.
fn catch_cancel_signals() -> anyhow::Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let caught = Arc::new(AtomicUsize::new(0));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register_usize(signal, caught.clone(), signal as usize)?;
    }
    Ok(caught)
}

fn take_signal(caught: &AtomicUsize) -> Option<i32> {
    i32::try_from(caught.swap(0, Ordering::Relaxed)).ok().filter(|&s| s != 0)
}
