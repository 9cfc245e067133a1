//! `cmbench-floor ENDPOINT SIZE`: the least any command-line tool of cm does, for scenario 1's
//! floor. It sends one SIZE-byte request to ENDPOINT through the same transport as `cmrun`
//! (`cm_transport::Requester`: connect, one ZMTP handshake and request, the reply) and exits.
//! `cmbench` answers it with an echo server that does nothing else, so the time one call takes is
//! what a process start plus one ZeroMQ round trip cost on this machine, before any cm work.
#![cfg_attr(not(test), no_main)]

use cm_auth::Credentials;
use cm_transport::{Requester, RetryPolicy};
use std::time::Duration;

cm_cli::tool_main!(main);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoint), Some(Ok(size))) = (args.get(1), args.get(2).map(|s| s.parse::<usize>())) else {
        eprintln!("usage: cmbench-floor ENDPOINT SIZE");
        std::process::exit(2);
    };
    let policy = RetryPolicy::new(Duration::from_secs(5), 0);
    let result = Requester::new(endpoint, policy, "cmbench-floor", Credentials::None)
        .and_then(|mut requester| requester.request_bytes(&vec![0u8; size]));
    if let Err(e) = result {
        eprintln!("cmbench-floor: {e}");
        std::process::exit(1);
    }
}
