//! [`Responder`]: the REP socket a daemon answers on, owned by the loop that answers it, over TCP
//! and, for the head, a Unix socket for the tools on its host as well.

use cm_common::{Error, Result};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::tcp_endpoint;

/// A REP server socket, owned by the loop that answers it.
pub struct Responder {
    socket: zmq::Socket,
    endpoint: String,
}

/// A request as it came off the socket: one frame, or why it was refused.
pub enum Incoming {
    Message(Vec<u8>),
    /// The message had several frames; it is answered with an error.
    Malformed(String),
}

impl Responder {
    /// Binds `address` (`HOST:PORT`; port 0 picks a free one). Messages above `max_message_size`
    /// bytes make libzmq drop the sender's connection, so they never reach [`Responder::try_recv`].
    pub fn bind(ctx: &zmq::Context, address: &str, max_message_size: u64) -> Result<Self> {
        let wanted = tcp_endpoint(address);
        let zmq_err = |e: zmq::Error| Error::Network { endpoint: wanted.clone(), reason: e.to_string() };
        let socket = ctx.socket(zmq::REP).map_err(zmq_err)?;
        socket.set_linger(0).map_err(zmq_err)?;
        socket.set_maxmsgsize(i64::try_from(max_message_size).unwrap_or(i64::MAX)).map_err(zmq_err)?;
        socket.bind(&wanted).map_err(zmq_err)?;
        let endpoint = socket
            .get_last_endpoint()
            .map_err(zmq_err)?
            .map_err(|_| Error::InvalidSetting(format!("bound endpoint of {wanted} is not UTF-8")))?;
        Ok(Responder { socket, endpoint })
    }

    /// The endpoint actually bound (with the real port when 0 was asked for).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Listens on the Unix socket `path` as well (creating its directory), open to every local
    /// user as the TCP endpoint is, and returns its endpoint (`ipc://PATH`). A socket file left
    /// by an earlier process is replaced; one that a live process still listens on is not (libzmq
    /// would take it over, and with it that process's local clients), nor is anything at `path`
    /// that is not a socket. Requests from both arrive on this socket, in one queue.
    pub fn listen_on_unix_socket(&self, path: &Path) -> Result<String> {
        let text = path.to_str().ok_or_else(|| Error::InvalidSetting(format!("{} is not UTF-8", path.display())))?;
        let endpoint = format!("ipc://{text}");
        let fail = |reason: String| Error::Network { endpoint: endpoint.clone(), reason };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
        }
        if let Ok(existing) = std::fs::symlink_metadata(path) {
            if !existing.file_type().is_socket() {
                return Err(fail("something that is not a socket is in the way".into()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another process is listening on this socket".into()));
            }
        }
        self.socket.bind(&endpoint).map_err(|e| fail(e.to_string()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| fail(format!("cannot open the socket to all local users: {e}")))?;
        Ok(endpoint)
    }

    fn error(&self, e: zmq::Error) -> Error {
        Error::Network { endpoint: self.endpoint.clone(), reason: e.to_string() }
    }

    /// Waits up to `timeout` until a request is waiting or `wake` (a descriptor another thread
    /// makes readable, such as an eventfd) is readable, whichever comes first.
    pub fn wait(&self, wake: Option<BorrowedFd<'_>>, timeout: Duration) -> Result<()> {
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let mut items = vec![self.socket.as_poll_item(zmq::POLLIN)];
        if let Some(fd) = wake {
            items.push(zmq::PollItem::from_fd(fd.as_raw_fd(), zmq::POLLIN));
        }
        match zmq::poll(&mut items, timeout_ms) {
            // A signal cut the wait short: the caller looks around and waits again.
            Ok(_) | Err(zmq::Error::EINTR) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// The next request, if one is waiting. Each must be answered with [`Responder::send`]
    /// before the next is taken: a REP socket answers in order.
    pub fn try_recv(&self) -> Result<Option<Incoming>> {
        match self.socket.recv_multipart(zmq::DONTWAIT) {
            Ok(mut parts) if parts.len() == 1 => Ok(parts.pop().map(Incoming::Message)),
            Ok(parts) => Ok(Some(Incoming::Malformed(format!("a request must be one frame, got {}", parts.len())))),
            Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => Ok(None),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Answers the request taken last. A requester that has gone away is not an error here: its
    /// retry, on a fresh socket, will be answered then.
    pub fn send(&self, reply: &[u8]) {
        if let Err(e) = self.socket.send(reply, 0) {
            tracing::warn!(endpoint = %self.endpoint, error = %e, "could not send a reply");
        }
    }

    /// Serves until `shutdown` is set: one request in, one reply out, in order.
    pub fn serve(&self, shutdown: &AtomicBool, mut handler: impl FnMut(Incoming) -> Vec<u8>) -> Result<()> {
        while !shutdown.load(Ordering::Relaxed) {
            // The timeout only bounds how late a shutdown is noticed.
            self.wait(None, Duration::from_millis(200))?;
            while let Some(incoming) = self.try_recv()? {
                self.send(&handler(incoming));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::echo;
    use crate::{Requester, RetryPolicy};
    use cm_common::protocol::Credential;

    #[test]
    fn requests_are_answered_and_the_server_stops_on_shutdown() {
        let ctx = zmq::Context::new();
        let server = Responder::bind(&ctx, "127.0.0.1:0", 1 << 20).expect("bind");
        let endpoint = server.endpoint().to_string();
        let stop = echo(server);
        let mut client =
            Requester::new(&endpoint, RetryPolicy::new(Duration::from_secs(2), 1), "t", Credential { uid: 0 })
                .expect("endpoint");
        assert_eq!(client.request_bytes(b"hi").expect("reply"), b"echo:hi");
        assert_eq!(client.request_bytes(b"again").expect("reply"), b"echo:again");
        stop();
    }

    #[test]
    fn a_unix_socket_serves_alongside_tcp_and_every_local_user_may_connect() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/cm/head.sock");
        let ctx = zmq::Context::new();
        let server = Responder::bind(&ctx, "127.0.0.1:0", 1 << 20).expect("bind");
        let unix = server.listen_on_unix_socket(&path).expect("unix socket");
        assert_eq!(unix, format!("ipc://{}", path.display()));
        let mode = std::fs::metadata(&path).expect("socket file").permissions().mode();
        assert_eq!(mode & 0o777, 0o666, "mode {mode:o}");
        let tcp = server.endpoint().to_string();
        let stop = echo(server);
        let policy = RetryPolicy::new(Duration::from_secs(2), 1);
        let mut over_unix = Requester::new(&unix, policy, "t", Credential { uid: 0 }).expect("endpoint");
        let mut over_tcp = Requester::new(&tcp, policy, "t", Credential { uid: 0 }).expect("endpoint");
        assert_eq!(over_unix.request_bytes(b"a").expect("reply"), b"echo:a");
        assert_eq!(over_tcp.request_bytes(b"b").expect("reply"), b"echo:b");
        stop();
    }

    #[test]
    fn a_unix_socket_that_cannot_be_made_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").expect("file");
        let ctx = zmq::Context::new();
        let server = Responder::bind(&ctx, "127.0.0.1:0", 1 << 20).expect("bind");
        let err = server.listen_on_unix_socket(&file.join("head.sock")).expect_err("a file is no directory");
        assert!(err.to_string().contains("a-file/head.sock"), "{err}");
        // Nor is a file that is not a socket replaced.
        let err = server.listen_on_unix_socket(&file).expect_err("a regular file is in the way");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert!(std::fs::metadata(&file).expect("still there").is_file());
    }

    #[test]
    fn a_unix_socket_in_use_is_not_taken_over_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("head.sock");
        let ctx = zmq::Context::new();
        let first = Responder::bind(&ctx, "127.0.0.1:0", 1 << 20).expect("bind");
        let unix = first.listen_on_unix_socket(&path).expect("unix socket");
        let second = Responder::bind(&ctx, "127.0.0.1:0", 1 << 20).expect("bind");
        let err = second.listen_on_unix_socket(&path).expect_err("the first still listens");
        assert!(err.to_string().contains("another process is listening"), "{err}");
        // The first still has its clients.
        let stop = echo(first);
        let policy = RetryPolicy::new(Duration::from_secs(2), 1);
        let mut client = Requester::new(&unix, policy, "t", Credential { uid: 0 }).expect("endpoint");
        assert_eq!(client.request_bytes(b"a").expect("reply"), b"echo:a");
        stop();
        // A socket file nobody listens on is stale: the second takes its place.
        drop(client);
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).expect("listener");
        drop(stale);
        second.listen_on_unix_socket(&dir.path().join("stale.sock")).expect("a stale socket is replaced");
    }
}
