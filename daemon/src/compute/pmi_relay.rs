//! The compute daemon's part in MPI fences across nodes: it takes each supervisor's fence on
//! `STATE_DIR/pmi.sock` ([`cm_step::pmi::relay`]), reports it to the head, and hands back the
//! head's answer once every node of the job has reached the fence.
//!
//! One thread accepts; each connection gets a thread that reads the fence, passes it to the
//! compute loop ([`Event::Fence`]) and waits for the answer. Only processes of the daemon's own
//! uid may connect (the socket is in the private state directory, and the kernel's peer
//! credentials are checked too): a job's user cannot speak for a supervisor.

use super::Event;
use crate::service::EventSender;
use cm_step::pmi::relay::{self, FenceIn, FenceOut};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// How long a supervisor has to send its fence, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting connection checks that its supervisor is still there.
const CHECK_PEER: Duration = Duration::from_millis(500);

/// A fence from a supervisor, and where its answer goes.
pub struct FenceRequest {
    pub fence: FenceIn,
    pub answer: Sender<FenceOut>,
}

/// Listens on `state_dir/pmi.sock` until `shutdown`; returns the socket's path.
pub fn listen(state_dir: &Path, events: EventSender<Event>, shutdown: Arc<AtomicBool>) -> anyhow::Result<PathBuf> {
    let path = state_dir.join(relay::SOCKET);
    // Left by an earlier daemon; nobody else can create files here.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("cannot listen for MPI fences on {}: {e}", path.display()))?;
    let my_uid = nix::unistd::geteuid().as_raw();
    std::thread::Builder::new().name("pmi-relay".into()).spawn(move || {
        while !shutdown.load(Ordering::Relaxed) {
            let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::from(250u16)), Ok(n) if n > 0) {
                continue;
            }
            let Ok((stream, _)) = listener.accept() else { continue };
            let events = events.clone();
            let spawned = std::thread::Builder::new().name("pmi-fence".into()).spawn(move || {
                if let Err(e) = serve(stream, my_uid, &events) {
                    tracing::warn!(error = %e, "an MPI fence connection failed");
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a thread for an MPI fence");
            }
        }
    })?;
    Ok(path)
}

fn serve(mut stream: UnixStream, my_uid: u32, events: &EventSender<Event>) -> Result<(), String> {
    let peer = getsockopt(&stream, PeerCredentials).map_err(|e| format!("cannot tell who connected: {e}"))?;
    if peer.uid() != my_uid {
        return Err(format!("uid {} is not the daemon's and may not relay fences", peer.uid()));
    }
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let fence: FenceIn = relay::read_frame(&mut stream)?;
    let (answer, answers) = channel();
    events.send(Event::Fence(FenceRequest { fence, answer }));
    loop {
        match answers.recv_timeout(CHECK_PEER) {
            Ok(out) => return relay::write_frame(&mut stream, &out).map_err(|e| format!("cannot answer a fence: {e}")),
            Err(RecvTimeoutError::Timeout) if peer_gone(&stream) => return Ok(()),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}

/// Whether the supervisor has closed its end (it ended, or gave up and will ask again).
fn peer_gone(stream: &UnixStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    let mut probe = [0u8; 1];
    match recv(stream.as_raw_fd(), &mut probe, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
        Ok(0) => true,
        Ok(_) | Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}
