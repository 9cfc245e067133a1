//! How the tools reach the head: one request, one reply, with the transport's deadlines, over
//! [`Requester`], which costs a short-lived process no libzmq threads.

use anyhow::anyhow;
use clap::Args;
use cm_common::config::Config;
use cm_common::protocol::{ClientRequest, ClientResponse, Credential, HeadRequest};
use cm_common::Error;
use cm_transport::{Requester, RetryPolicy};
use std::path::PathBuf;

/// Where the head is: flags shared by every tool.
#[derive(Debug, Clone, Args)]
pub struct HeadArgs {
    /// HOST:PORT of the head [default: CM_HEAD, else head_address from the config].
    #[arg(long, env = "CM_HEAD", global = true)]
    pub head: Option<String>,
    /// Configuration file [default: /etc/cm/config.yaml if present].
    #[arg(long, env = "CM_CONFIG", global = true)]
    pub config: Option<PathBuf>,
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
        let address = args.head.clone().unwrap_or_else(|| config.head_address.clone());
        let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
        let credential = Credential { uid: nix::unistd::getuid().as_raw() };
        let policy = RetryPolicy::new(config.request_timeout, config.request_retries);
        let requester = Requester::new(&address, policy, &format!("{tool}@{host}"), credential)?;
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
