//! `cmd`'s command line and how it combines with the configuration file.
//!
//! Precedence, lowest first: built-in defaults, `config.yaml`, then `CM_*` environment variables
//! and flags (clap reads both; a flag beats its variable). The result is one settings struct per
//! role, so the roles never look at the raw configuration.

use crate::node_resources;
use clap::{Parser, Subcommand, ValueEnum};
use cm_common::config::{self, Config};
use cm_common::{NodeId, Resources};
use std::path::PathBuf;
use std::time::Duration;

/// The role a `cmd` process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// The head node: the scheduler and the store, serving the tools and compute nodes.
    Head,
    /// A compute node: runs the jobs the head places on it.
    Compute,
    /// Head and compute in one process: a one-machine cluster, listening on loopback only.
    Standalone,
}

/// The cm daemon: run `--role head` on the head node and `--role compute` on each compute node.
#[derive(Debug, Parser)]
#[command(name = "cmd", version, about, subcommand_negates_reqs = true)]
pub struct Args {
    /// The role of this daemon.
    #[arg(long, env = "CM_ROLE", value_enum, required = true)]
    pub role: Option<RoleArg>,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The cluster key file [default: cluster_key, else /etc/cm/cm.key for root, ~/.config/cm/cm.key otherwise].
    #[arg(long, env = "CM_CLUSTER_KEY", global = true)]
    pub cluster_key: Option<PathBuf>,
    /// Configuration file [default: /etc/cm/config.yaml if present, else built-in defaults].
    #[arg(long, env = "CM_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id [default: the host name].
    #[arg(long, env = "CM_NODE_ID")]
    pub node_id: Option<String>,
    /// HOST:PORT to listen on (port 0 picks a free port) [default: head_listen or compute_listen].
    #[arg(long, env = "CM_LISTEN")]
    pub listen: Option<String>,
    /// A Unix socket the head listens on as well, for tools on its host [default: head_socket].
    #[arg(long, env = "CM_HEAD_SOCKET")]
    pub socket: Option<PathBuf>,
    /// HOST:PORT of the head, for compute nodes [default: head_address].
    #[arg(long, env = "CM_HEAD")]
    pub head: Option<String>,
    /// HOST:PORT the head should use to reach this compute node [default: host name and port].
    #[arg(long, env = "CM_ADVERTISE")]
    pub advertise: Option<String>,
    /// The head's store: a MongoDB URI (mongodb://HOST:PORT/DBNAME) [default: store, else the
    /// embedded store in the state directory].
    #[arg(long, env = "CM_STORE")]
    pub store: Option<String>,
    /// Directory for the daemon's state [default: state_dir].
    #[arg(long, env = "CM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// CPUs this node offers, instead of the detected count (to simulate small nodes).
    #[arg(long, env = "CM_CPUS")]
    pub cpus: Option<u32>,
    /// Memory in MB this node offers, instead of the detected amount.
    #[arg(long, env = "CM_MEMORY_MB")]
    pub memory_mb: Option<u64>,
    /// GPUs this node offers (indices 0..N), instead of those nvidia-smi lists.
    #[arg(long, env = "CM_GPUS")]
    pub gpus: Option<u32>,
    /// On SIGTERM, a compute node leaves the cluster: the head forgets it rather than waiting
    /// for it to come back (for nodes that come and go, as containers do).
    #[arg(long, env = "CM_LEAVE_ON_STOP")]
    pub leave_on_stop: bool,
}

/// What `cmd` can do besides running a role.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make the cluster key (mode 0600) at PATH, or at --cluster-key / the configured path,
    /// unless one is there; copy it to every node of the cluster.
    Keygen {
        /// Where to write the key.
        path: Option<PathBuf>,
    },
}

/// Everything the head role needs.
#[derive(Debug, Clone)]
pub struct HeadConfig {
    pub node_id: NodeId,
    pub listen: String,
    /// The Unix socket to listen on as well, for the tools on this host.
    pub socket: PathBuf,
    /// The cluster key file; made if missing.
    pub cluster_key: PathBuf,
    pub operators: Vec<String>,
    pub private_data: bool,
    pub anonymous_listing: bool,
    pub limits: cm_common::config::JobLimits,
    pub scheduling: cm_common::config::SchedulingSettings,
    pub partitions: Vec<cm_common::partition::Partition>,
    pub workdirs: cm_common::config::WorkdirSettings,
    pub state_dir: PathBuf,
    /// MongoDB URI; `None` means the embedded store.
    pub store: Option<String>,
    pub store_timeout: Duration,
    pub resources: Resources,
    pub scheduler_interval: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub request_timeout: Duration,
    pub request_retries: u32,
    pub max_message_size: u64,
}

/// Everything the compute role needs.
#[derive(Debug, Clone)]
pub struct ComputeConfig {
    pub node_id: NodeId,
    pub listen: String,
    pub advertise: Option<String>,
    pub head_address: String,
    pub state_dir: PathBuf,
    /// The cluster key file, which must exist.
    pub cluster_key: PathBuf,
    pub resources: Resources,
    pub status_interval: Duration,
    pub heartbeat_interval: Duration,
    pub register_retries: u32,
    pub register_retry_wait: Duration,
    pub request_timeout: Duration,
    pub request_retries: u32,
    pub kill_grace: Duration,
    pub max_message_size: u64,
    pub cgroups: cm_common::config::CgroupSettings,
    /// Leave the cluster on SIGTERM (`--leave-on-stop`).
    pub leave_on_stop: bool,
}

/// The settings of one `cmd` process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub role: RoleArg,
    pub head: HeadConfig,
    pub compute: ComputeConfig,
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_string())
}

/// `HOST:PORT` with the host replaced by loopback.
fn on_loopback(address: &str) -> String {
    match address.rsplit_once(':') {
        Some((_, port)) => format!("127.0.0.1:{port}"),
        None => address.to_string(),
    }
}

impl Settings {
    /// Combines the parsed arguments with the configuration (already loaded from `args.config`).
    pub fn resolve(args: &Args, config: &Config) -> Settings {
        let role = args.role.unwrap_or(RoleArg::Standalone);
        let node_id = NodeId::new(args.node_id.clone().unwrap_or_else(hostname));
        let state_dir =
            args.state_dir.clone().or_else(|| config.state_dir.clone()).unwrap_or_else(config::default_state_dir);
        let cluster_key =
            args.cluster_key.clone().or_else(|| config.cluster_key.clone()).unwrap_or_else(config::default_cluster_key);
        let resources = node_resources::detect(
            args.cpus.or(config.node.cpus),
            args.memory_mb.or(config.node.memory_mb),
            args.gpus.or(config.node.gpus),
        );
        let standalone = role == RoleArg::Standalone;
        // Standalone is for one machine: it listens on loopback unless told otherwise.
        let head_listen = match (&args.listen, standalone) {
            (Some(listen), _) => listen.clone(),
            (None, true) => on_loopback(&config.head_listen),
            (None, false) => config.head_listen.clone(),
        };
        let compute_listen = match (&args.listen, standalone) {
            (Some(listen), false) => listen.clone(),
            _ if standalone => on_loopback(&config.compute_listen),
            _ => config.compute_listen.clone(),
        };
        let head = HeadConfig {
            node_id: node_id.clone(),
            listen: head_listen,
            socket: args
                .socket
                .clone()
                .or_else(|| config.head_socket.clone())
                .unwrap_or_else(config::default_head_socket),
            cluster_key: cluster_key.clone(),
            operators: config.operators.clone(),
            private_data: config.private_data,
            anonymous_listing: config.anonymous_listing,
            limits: config.limits.clone(),
            scheduling: config.scheduling.clone(),
            partitions: config.partitions.clone(),
            workdirs: config.workdirs.clone(),
            state_dir: state_dir.clone(),
            store: args.store.clone().or_else(|| config.store.clone()),
            store_timeout: config.store_timeout,
            resources,
            scheduler_interval: config.scheduler_interval,
            heartbeat_interval: config.heartbeat_interval,
            heartbeat_timeout: config.heartbeat_timeout,
            request_timeout: config.request_timeout,
            request_retries: config.request_retries,
            max_message_size: config.max_message_size,
        };
        let compute = ComputeConfig {
            node_id,
            listen: compute_listen,
            advertise: args.advertise.clone().or_else(|| config.compute_advertise.clone()),
            head_address: args
                .head
                .clone()
                .or_else(|| config.head_address.clone())
                .unwrap_or_else(|| config::DEFAULT_HEAD_ADDRESS.to_string()),
            state_dir,
            cluster_key,
            resources,
            status_interval: config.status_interval,
            heartbeat_interval: config.heartbeat_interval,
            register_retries: config.register_retries,
            register_retry_wait: config.register_retry_wait,
            request_timeout: config.request_timeout,
            request_retries: config.request_retries,
            kill_grace: config.kill_grace,
            max_message_size: config.max_message_size,
            cgroups: config.cgroups.clone(),
            leave_on_stop: args.leave_on_stop,
        };
        Settings { role, head, compute }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("cmd").chain(argv.iter().copied())).expect("parse")
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let file = Config::parse("head_address: 10.0.0.1:6000\ncompute_listen: 0.0.0.0:7000\nnode:\n  cpus: 3\n")
            .expect("config");
        let s = Settings::resolve(&args(&["--role", "compute", "--node-id", "c9", "--memory-mb", "256"]), &file);
        assert_eq!(s.compute.head_address, "10.0.0.1:6000", "file beats default");
        assert_eq!(s.compute.listen, "0.0.0.0:7000");
        assert_eq!(s.compute.resources, Resources::new(3, 256), "file cpus, flag memory");
        assert_eq!(s.compute.node_id, NodeId::new("c9"));
        assert_eq!(s.compute.heartbeat_interval, Config::default().heartbeat_interval, "default kept");

        let s = Settings::resolve(
            &args(&["--role", "compute", "--head", "h:1", "--listen", "127.0.0.1:0", "--cpus", "8"]),
            &file,
        );
        assert_eq!(s.compute.head_address, "h:1", "flag beats file");
        assert_eq!(s.compute.listen, "127.0.0.1:0");
        assert_eq!(s.compute.resources.cpus, 8);
        assert_eq!(s.head.store, None, "no URI: the embedded store");
        let s = Settings::resolve(&args(&["--role", "head", "--store", "mongodb://db:27017/cm"]), &file);
        assert_eq!(s.head.store.as_deref(), Some("mongodb://db:27017/cm"));
        assert_eq!(s.head.socket, config::default_head_socket(), "the head's socket is always there");

        let file = Config::parse("head_socket: /run/cm/head.sock\n").expect("config");
        let s = Settings::resolve(&args(&["--role", "head"]), &file);
        assert_eq!(s.head.socket, PathBuf::from("/run/cm/head.sock"));
        let s = Settings::resolve(&args(&["--role", "head", "--socket", "/tmp/h.sock"]), &file);
        assert_eq!(s.head.socket, PathBuf::from("/tmp/h.sock"), "flag beats file");
    }

    #[test]
    fn standalone_listens_on_loopback() {
        let s = Settings::resolve(&args(&["--role", "standalone"]), &Config::default());
        assert_eq!(s.head.listen, "127.0.0.1:5001");
        assert_eq!(s.compute.listen, "127.0.0.1:5002");
    }

    #[test]
    fn a_role_is_required_and_checked() {
        assert!(Args::try_parse_from(["cmd", "--role", "boss"]).is_err());
        assert!(Args::try_parse_from(["cmd"]).is_err(), "no role, no subcommand");
        let keygen = Args::try_parse_from(["cmd", "keygen", "/tmp/k"]).expect("keygen needs no role");
        assert!(matches!(keygen.command, Some(Command::Keygen { path: Some(_) })));
    }
}
