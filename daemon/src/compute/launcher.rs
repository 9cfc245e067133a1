//! The compute daemon's end of `cmstep --launcher` ([`cm_step::launcher`]), which starts job
//! supervisors (or hands the run to an idle one).
//!
//! [`Launcher::launch`] writes a step file's path to the launcher and waits for the supervisor's
//! `started` line (or a `failed` one). One thread reads everything the launcher says: it hands
//! each launch its answer and calls a run's end callback on its `ended` line, or on the
//! supervisor's `exited` line if it died first. If the launcher dies, its supervisors live on
//! (they only lose their parent), so the daemon then watches them by their step files' locks; see
//! [`Launcher::is_lost`].

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What runs when a run's supervisor is done with it.
pub type OnEnd = Box<dyn FnOnce() + Send>;

/// How long a launch waits for its answer; a fork takes well under a millisecond.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Shared {
    /// Launches waiting for their answer, by step file.
    waiting: HashMap<PathBuf, (OnEnd, SyncSender<Result<i32, String>>)>,
    /// The runs of live supervisors, by pid: their step files and end callbacks.
    running: HashMap<i32, (PathBuf, OnEnd)>,
}

/// A running `cmstep --launcher`.
pub struct Launcher {
    requests: ChildStdin,
    shared: Arc<Mutex<Shared>>,
    lost: Arc<AtomicBool>,
    /// Set when the daemon closes the launcher on purpose, so its exit is not a warning.
    closing: Arc<AtomicBool>,
}

impl Launcher {
    /// Starts the launcher `exe`, logging to `log`.
    pub fn spawn(exe: &Path, log: File) -> std::io::Result<Launcher> {
        let mut child = Command::new(exe)
            .arg("--launcher")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own process group, which its supervisors leave for their own: signals meant
            // for the daemon (a terminal's ^C, a group kill) reach neither.
            .process_group(0)
            .spawn()?;
        let (Some(requests), Some(answers)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("the launcher's pipes are missing"));
        };
        let shared = Arc::new(Mutex::new(Shared::default()));
        let lost = Arc::new(AtomicBool::new(false));
        let closing = Arc::new(AtomicBool::new(false));
        let (reader_shared, reader_lost, reader_closing) = (shared.clone(), lost.clone(), closing.clone());
        std::thread::Builder::new().name("step-launcher".into()).spawn(move || {
            for line in BufReader::new(answers).split(b'\n') {
                let Ok(line) = line else { break };
                heard(&reader_shared, &String::from_utf8_lossy(&line));
            }
            reader_lost.store(true, Ordering::Relaxed);
            let _ = child.wait();
            let waiting = reader_shared.lock().map(|mut s| std::mem::take(&mut s.waiting)).unwrap_or_default();
            for (_, answer) in waiting.into_values() {
                let _ = answer.send(Err("the supervisor launcher exited".into()));
            }
            if !reader_closing.load(Ordering::Relaxed) {
                tracing::warn!("the supervisor launcher exited; its jobs are watched by their step files");
            }
        })?;
        Ok(Launcher { requests, shared, lost, closing })
    }

    /// Whether the launcher has exited. Its supervisors' exits are then reported by nobody.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Has a supervisor take the step file at `path`; returns its pid. `on_end` runs (on the
    /// reader thread) when the supervisor is done with the run (it ended, or the supervisor died),
    /// unless the launcher dies first.
    pub fn launch(&mut self, path: &Path, on_end: OnEnd) -> Result<i32, String> {
        let line = path.to_str().filter(|p| !p.contains(['\n', '\t']) && p.len() < cm_step::launcher::MAX_LINE - 64);
        let Some(line) = line else {
            return Err(format!("the step file path {} cannot be sent to the launcher", path.display()));
        };
        let (answer, answered) = sync_channel(1);
        let forget = |shared: &Mutex<Shared>| {
            if let Ok(mut s) = shared.lock() {
                s.waiting.remove(path);
            }
        };
        self.shared
            .lock()
            .map_err(|_| "the launcher's state is poisoned")?
            .waiting
            .insert(path.into(), (on_end, answer));
        if let Err(e) = writeln!(self.requests, "{line}") {
            forget(&self.shared);
            return Err(format!("cannot reach the supervisor launcher: {e}"));
        }
        answered.recv_timeout(ANSWER_TIMEOUT).unwrap_or_else(|_| {
            forget(&self.shared);
            Err("the supervisor launcher did not answer".into())
        })
    }
}

impl Drop for Launcher {
    /// The launcher exits when its stdin closes, which dropping `requests` does next; the
    /// supervisors keep running.
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

/// Acts on one line from the launcher.
fn heard(shared: &Mutex<Shared>, line: &str) {
    let Ok(mut s) = shared.lock() else { return };
    let mut words = line.splitn(3, '\t');
    match (words.next(), words.next(), words.next()) {
        (Some("started"), Some(pid), Some(path)) => {
            let Ok(pid) = pid.parse::<i32>() else { return };
            match s.waiting.remove(Path::new(path)) {
                Some((on_end, answer)) => {
                    s.running.insert(pid, (path.into(), on_end));
                    let _ = answer.send(Ok(pid));
                }
                None => {
                    // Its launch was given up on and the job placed elsewhere: it must not run.
                    tracing::warn!(pid, step = %path, "stopping a supervisor that started too late");
                    let run =
                        Path::new(path).file_name().and_then(|name| name.to_str()).and_then(cm_step::record::run_of);
                    if let Some(run) = run {
                        let _ = cm_step::supervisor::ask_to_stop(pid, run.job);
                    }
                }
            }
        }
        (Some("failed"), Some(path), reason) => {
            if let Some((_, answer)) = s.waiting.remove(Path::new(path)) {
                let _ = answer.send(Err(reason.unwrap_or("no reason given").to_string()));
            }
        }
        // The supervisor has recorded the run's end and may take another run next.
        (Some("ended"), Some(pid), Some(path)) => {
            let Ok(pid) = pid.parse::<i32>() else { return };
            let ours = s.running.get(&pid).is_some_and(|(ran, _)| ran == Path::new(path));
            let on_end = if ours { s.running.remove(&pid).map(|(_, on_end)| on_end) } else { None };
            drop(s);
            if let Some(on_end) = on_end {
                on_end();
            }
        }
        // Died with a run (its end is whatever the step file holds), or retired idle.
        (Some("exited"), Some(pid), None) => {
            let on_end = pid.parse().ok().and_then(|pid| s.running.remove(&pid));
            drop(s);
            if let Some((_, on_end)) = on_end {
                on_end();
            }
        }
        _ => tracing::warn!(%line, "the supervisor launcher said something unexpected"),
    }
}
