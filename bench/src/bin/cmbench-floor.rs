//! `cmbench-floor ENDPOINT SIZE`: the least any ZeroMQ command-line tool does, for scenario 1's
//! floor. It sends one SIZE-byte request to ENDPOINT through the same transport as `cmrun`
//! (`cm_transport::Requester`: a libzmq context, a REQ socket, connect, send, receive) and exits
//! the way the tools do ([`Requester::leave`]).
//! `cmbench` answers it with an echo server that does nothing else, so the time one call takes is
//! what a process start plus one ZeroMQ round trip cost on this machine, before any cm work.

use cm_common::protocol::Credential;
use cm_transport::{Requester, RetryPolicy};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoint), Some(Ok(size))) = (args.get(1), args.get(2).map(|s| s.parse::<usize>())) else {
        eprintln!("usage: cmbench-floor ENDPOINT SIZE");
        std::process::exit(2);
    };
    let ctx = zmq::Context::new();
    let policy = RetryPolicy::new(Duration::from_secs(5), 0);
    let mut requester = Requester::new(&ctx, endpoint, policy, "cmbench-floor", Credential { uid: 0 });
    if let Err(e) = requester.request_bytes(&vec![0u8; size]) {
        eprintln!("cmbench-floor: {e}");
        std::process::exit(1);
    }
    requester.leave(); // as the tools do
}
