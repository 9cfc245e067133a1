//! cm-testkit: a cluster of real `cmd` processes on loopback, for tests and benchmarks.
//!
//! One head and N computes, each with its own port (chosen by the OS), state directory and log
//! file, killed on drop. Dropping a cluster whose daemon died unexpectedly fails the test; a
//! failing test prints every daemon's log tail. [`mongo_server`] provides a MongoDB server.
//! The binaries are found beside the running test or benchmark executable (cargo puts them all
//! in one target directory).

pub mod mongo_server;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Settings every test cluster runs with: short intervals so faults show quickly.
pub const TEST_CONFIG: &str = "\
scheduler_interval: 200ms
status_interval: 200ms
heartbeat_interval: 300ms
heartbeat_timeout: 3s
register_retry_wait: 300ms
request_timeout: 1s
request_retries: 2
kill_grace: 1s
store_timeout: 300ms
max_message_size: 2097152
";

/// The directory cargo put the binaries in: the running executable's, or its parent for tests
/// (which run from `target/<profile>/deps`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// A cm binary of this build.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is missing; build the workspace (cargo test --workspace builds it)", path.display());
    path
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// One daemon process.
pub struct Daemon {
    pub name: String,
    args: Vec<String>,
    pub log: PathBuf,
    /// `CM_LOG` for the process.
    filter: String,
    child: Option<Child>,
    /// Set when the test stopped it on purpose.
    stopped: bool,
}

impl Daemon {
    fn spawn(name: &str, args: Vec<String>, log: PathBuf, filter: &str) -> Daemon {
        let mut daemon =
            Daemon { name: name.to_string(), args, log, filter: filter.to_string(), child: None, stopped: false };
        daemon.start();
        daemon
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(bin("cmd"))
            .args(&self.args)
            .env("CM_LOG", &self.filter)
            .env_remove("CM_HEAD")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start cmd");
        self.child = Some(child);
        self.stopped = false;
    }

    /// SIGTERM, as an operator stopping the service, and wait for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
        self.stopped = true;
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stopped = true;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Which store the head uses.
#[derive(Debug, Clone)]
pub enum StoreKind {
    Embedded,
    /// A MongoDB URI.
    Mongo(String),
}

/// Makes each named test function (taking a [`StoreKind`]) a test on the embedded store, in
/// `mod embedded`, and on MongoDB, in `mod mongodb` (skipped, outside CI, without a server).
#[macro_export]
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(#[test] fn $case() { super::$case($crate::StoreKind::Embedded) })*
        }
        mod mongodb {
            $(#[test] fn $case() {
                if let Some(store) = $crate::StoreKind::mongo(stringify!($case)) { super::$case(store) }
            })*
        }
    };
}

impl StoreKind {
    /// A fresh MongoDB database, or `None` (test skipped, with a printed reason) where no server
    /// can be had outside CI.
    pub fn mongo(name: &str) -> Option<StoreKind> {
        mongo_server::database_uri(name).map(StoreKind::Mongo)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Also covers a cluster that failed while starting, before `Cluster` owned its daemons.
        self.kill9();
    }
}

/// A head and its computes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub head: Daemon,
    pub computes: Vec<Daemon>,
    /// `tcp://127.0.0.1:PORT` of the head.
    pub head_endpoint: String,
    /// `ipc://DIR/head.sock`: the head's Unix socket, which it listens on as well.
    pub head_socket: String,
    /// Where the tools reach the head: `head_socket` unless [`Cluster::tools_over_tcp`].
    tools_head: String,
    /// The cluster key every daemon of this cluster holds (the head makes it).
    pub cluster_key: PathBuf,
    pub config: PathBuf,
    /// Where tools run (the job's working directory).
    pub workdir: PathBuf,
}

impl Cluster {
    /// Starts a head and `computes` compute nodes named c1, c2, ... with `cpus` and `memory_mb` each,
    /// and waits until all are registered.
    pub fn start(computes: usize, cpus: u32, memory_mb: u64) -> Cluster {
        Cluster::start_on(&StoreKind::Embedded, computes, cpus, memory_mb)
    }

    /// As [`Cluster::start`], with the head on `store`.
    pub fn start_on(store: &StoreKind, computes: usize, cpus: u32, memory_mb: u64) -> Cluster {
        Cluster::start_with(store, computes, cpus, memory_mb, TEST_CONFIG, "info,cm_daemon=debug")
    }

    /// As [`Cluster::start_on`], with a given configuration file text and log filter.
    pub fn start_with(
        store: &StoreKind,
        computes: usize,
        cpus: u32,
        memory_mb: u64,
        config_text: &str,
        log: &str,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, config_text).expect("config");
        let workdir = dir.path().join("work");
        std::fs::create_dir_all(&workdir).expect("workdir");
        let head_state = dir.path().join("head");
        let socket = dir.path().join("head.sock");
        let cluster_key = dir.path().join("cm.key");
        let mut args = strings(&[
            "--role",
            "head",
            "--node-id",
            "head",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            head_state.to_str().expect("utf8"),
            "--config",
            config.to_str().expect("utf8"),
            "--socket",
            socket.to_str().expect("utf8"),
            "--cluster-key",
            cluster_key.to_str().expect("utf8"),
        ]);
        if let StoreKind::Mongo(uri) = store {
            args.extend(strings(&["--store", uri]));
        }
        let head = Daemon::spawn("head", args, dir.path().join("head.log"), log);
        let endpoint_file = head_state.join("head.endpoint");
        let started = wait_until(Duration::from_secs(30), || endpoint_file.exists());
        assert!(started, "the head did not start; its log:\n{}", head.log_tail(30));
        let head_endpoint = std::fs::read_to_string(&endpoint_file).expect("endpoint");
        let head_socket = format!("ipc://{}", socket.display());
        let tools_head = head_socket.clone();
        let mut cluster = Cluster {
            dir,
            head,
            computes: vec![],
            head_endpoint,
            head_socket,
            tools_head,
            cluster_key,
            config,
            workdir,
        };
        for i in 1..=computes {
            cluster.add_compute(&format!("c{i}"), cpus, memory_mb);
        }
        cluster.wait_for_nodes(computes);
        cluster
    }

    pub fn add_compute(&mut self, name: &str, cpus: u32, memory_mb: u64) {
        let state = self.dir.path().join(name);
        let args = strings(&[
            "--role",
            "compute",
            "--node-id",
            name,
            "--listen",
            "127.0.0.1:0",
            "--head",
            &self.head_endpoint,
            "--state-dir",
            state.to_str().expect("utf8"),
            "--config",
            self.config.to_str().expect("utf8"),
            "--cpus",
            &cpus.to_string(),
            "--memory-mb",
            &memory_mb.to_string(),
            "--cluster-key",
            self.cluster_key.to_str().expect("utf8"),
        ]);
        let filter = self.head.filter.clone();
        self.computes.push(Daemon::spawn(name, args, self.dir.path().join(format!("{name}.log")), &filter));
    }

    /// Waits until `n` compute nodes are registered and Up.
    pub fn wait_for_nodes(&self, n: usize) {
        let ok = wait_until(Duration::from_secs(30), || self.info().map(|v| up_computes(&v) == n).unwrap_or(false));
        assert!(ok, "{n} compute nodes did not register");
    }

    /// Restarts the head on the same port and state directory, after a SIGKILL.
    pub fn restart_head(&mut self) {
        self.head.kill9();
        let port = self.head_endpoint.rsplit(':').next().expect("port").to_string();
        for arg in self.head.args.iter_mut() {
            if arg == "127.0.0.1:0" {
                *arg = format!("127.0.0.1:{port}");
            }
        }
        self.head.start();
    }

    /// From now on the tools reach the head over its Unix socket (the default), as tools on the
    /// head's host do; the kernel tells the head who runs them.
    pub fn tools_over_socket(&mut self) {
        self.tools_head = self.head_socket.clone();
    }

    /// From now on the tools reach the head over TCP, as tools on another host do: each request
    /// carries a MUNGE credential, so the host's `munged` must run.
    pub fn tools_over_tcp(&mut self) {
        self.tools_head = self.head_endpoint.clone();
    }

    /// The cluster key, as the daemons hold it: for tests that speak for a daemon.
    pub fn key(&self) -> std::sync::Arc<cm_auth::ClusterKey> {
        std::sync::Arc::new(cm_auth::ClusterKey::load(&self.cluster_key).expect("the cluster key"))
    }

    /// Runs a tool (cmrun, cminfo, cmkill) against this cluster from the work directory.
    pub fn tool(&self, name: &str, args: &[&str]) -> Output {
        self.tool_command(name, args).output().expect("run tool")
    }

    pub fn tool_command(&self, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(bin(name));
        command
            .args(args)
            .current_dir(&self.workdir)
            .env("CM_HEAD", &self.tools_head)
            .env("CM_CONFIG", &self.config)
            .stdin(Stdio::null());
        command
    }

    /// Submits with cmrun and returns the job id; panics with cmrun's stderr on failure.
    pub fn submit(&self, args: &[&str]) -> u64 {
        let out = self.tool("cmrun", args);
        assert!(out.status.success(), "cmrun {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("cmrun prints the job id")
    }

    /// `cminfo --all --json`, or None if it failed.
    pub fn info(&self) -> Option<Value> {
        let out = self.tool("cminfo", &["--json", "--all", "--limit", "0"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
    }

    /// `cminfo --json JOBID`.
    pub fn job(&self, id: u64) -> Value {
        let out = self.tool("cminfo", &["--json", &id.to_string()]);
        assert!(out.status.success(), "cminfo {id}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json")
    }

    pub fn job_status(&self, id: u64) -> String {
        self.job(id)["state"]["status"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until the job reaches `status`; panics with the job's JSON if it does not.
    pub fn wait_status(&self, id: u64, status: &str, timeout: Duration) -> Value {
        let reached = wait_until(timeout, || self.job_status(id) == status);
        let job = self.job(id);
        assert!(reached, "job {id} did not reach {status}: {job:#}");
        job
    }

    /// Fails if a daemon that should run has exited.
    pub fn assert_alive(&mut self) {
        for daemon in std::iter::once(&mut self.head).chain(self.computes.iter_mut()) {
            if !daemon.stopped {
                if let Some(status) = daemon.exited() {
                    panic!("daemon {} exited ({status}); log:\n{}", daemon.name, daemon.log_tail(40));
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for daemon in std::iter::once(&self.head).chain(self.computes.iter()) {
                eprintln!("----- {} log (last 30 lines) -----\n{}", daemon.name, daemon.log_tail(30));
            }
        } else {
            self.assert_alive();
        }
        for daemon in std::iter::once(&mut self.head).chain(self.computes.iter_mut()) {
            daemon.kill9();
        }
        stop_supervisors(self.dir.path());
        let nodes: Vec<String> = self
            .computes
            .iter()
            .map(|c| cm_step::cgroup::detect::node_dir(&c.name, &self.dir.path().join(&c.name)))
            .collect();
        remove_node_cgroups(&nodes);
    }
}

/// Removes the job cgroup directories of this cluster's compute nodes (named `nodes`), which a
/// node killed outright leaves behind, once its supervisors have left them (briefly retried).
fn remove_node_cgroups(nodes: &[String]) {
    let Ok(host) = cm_step::cgroup::detect::Host::read() else { return };
    fn find(dir: &Path, names: &[String], depth: u32, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if names.iter().any(|n| entry.file_name().to_str() == Some(n.as_str())) {
                out.push(path);
            } else if depth > 0 {
                find(&path, names, depth - 1, out);
            }
        }
    }
    let mut found = Vec::new();
    for mount in &host.mounts {
        find(&mount.mount_point, nodes, 4, &mut found);
    }
    let until = std::time::Instant::now() + Duration::from_secs(2);
    for node in found {
        loop {
            let children = std::fs::read_dir(&node).into_iter().flatten().flatten().filter(|e| e.path().is_dir());
            children.for_each(|child| {
                let _ = std::fs::remove_dir(child.path());
            });
            if std::fs::remove_dir(&node).is_ok() || !node.exists() || std::time::Instant::now() > until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Job supervisors outlive their compute daemon by design: stop those of this cluster (they
/// stop their replicas), found by `dir` in their command line or in a file they hold open (a
/// supervisor forked by the launcher has the launcher's command line, and holds its step file).
fn stop_supervisors(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let names_dir = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for entry in procs.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let is_cm = cmdline.windows(6).any(|w| w == b"cmstep") || cmdline.windows(6).any(|w| w == b"--role");
        let holds_a_file_in_dir = || {
            let fds = std::fs::read_dir(entry.path().join("fd")).into_iter().flatten().flatten();
            fds.filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|target| names_dir(target.as_os_str().as_encoded_bytes()))
        };
        if is_cm && (names_dir(&cmdline) || holds_a_file_in_dir()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
    }
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Compute nodes that are Up in a `cminfo --json` document.
pub fn up_computes(info: &Value) -> usize {
    info["nodes"]
        .as_array()
        .map(|nodes| nodes.iter().filter(|n| n["role"] == "Compute" && n["health"]["health"] == "Up").count())
        .unwrap_or(0)
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}
