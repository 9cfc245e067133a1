//! How the tools reach the head: one request, one reply, with the transport's deadlines, over
//! [`Requester`], which costs a short-lived process no libzmq threads. On the head's host they use
//! its Unix socket, where the kernel tells the head who runs them; over TCP each request carries a
//! MUNGE credential (the local `munged` vouches for the user).

use anyhow::anyhow;
use clap::Args;
use cm_auth::Credentials;
use cm_common::config::{self, Config};
use cm_common::protocol::{ClientRequest, ClientResponse, HeadRequest};
use cm_common::Error;
use cm_transport::{Requester, RetryPolicy};
use std::path::PathBuf;

/// Where the head is: flags shared by every tool.
#[derive(Debug, Clone, Args)]
pub struct HeadArgs {
    /// HOST:PORT or ipc://PATH of the head [default: CM_HEAD, else head_address from the config,
    /// else the head's Unix socket on this host, else 127.0.0.1:5001].
    #[arg(long, env = "CM_HEAD", global = true)]
    pub head: Option<String>,
    /// Configuration file [default: /etc/cm/config.yaml if present].
    #[arg(long, env = "CM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// The head on this host, by its Unix socket, if one is there; else the default TCP address.
fn local_head() -> String {
    match config::local_head_sockets().into_iter().find(|socket| socket.exists()) {
        Some(socket) => format!("ipc://{}", socket.display()),
        None => config::DEFAULT_HEAD_ADDRESS.to_string(),
    }
}

/// A connection to the head.
pub struct HeadClient {
    requester: Requester,
    pub config: Config,
}

impl HeadClient {
    /// Resolves the head's address; `tool` names the caller in the head's logs.
    pub fn connect(args: &HeadArgs, tool: &str) -> anyhow::Result<HeadClient> {
        let config = Config::load(args.config.as_deref())?;
        let address = args.head.clone().or_else(|| config.head_address.clone()).unwrap_or_else(local_head);
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        // The kernel names us on a Unix socket; anywhere else MUNGE does.
        let credentials = if address.starts_with("ipc://") { Credentials::None } else { Credentials::Munge };
        let policy = RetryPolicy::new(config.request_timeout, config.request_retries);
        let requester = Requester::new(&address, policy, &format!("{tool}@{host}"), credentials)?;
        Ok(HeadClient { requester, config })
    }

    /// Sends one request; the head's error reply becomes an error whose text is the head's sentence.
    pub fn call(&mut self, request: ClientRequest) -> anyhow::Result<ClientResponse> {
        let reply = match self.requester.call::<HeadRequest, ClientResponse>(&HeadRequest::Client(request)) {
            Ok(reply) => reply,
            // These name the endpoint themselves.
            Err(e @ (Error::Unreachable { .. } | Error::Network { .. })) => {
                return Err(anyhow::Error::from(e).context("cannot reach the head"))
            }
            Err(e) => {
                let context = format!("cannot talk to the head at {}", self.requester.endpoint());
                return Err(anyhow::Error::from(e).context(context));
            }
        };
        reply.map_err(|e| anyhow!(e.message))
    }
}
