//! A MongoDB wire-protocol server for tests, started on demand.
//!
//! Which server: the one `CM_TEST_MONGO_URI` names; else a real `mongod` on PATH; else
//! SecantusDB's `secantusd-py` (installed from PyPI by `.ci/run`). Each server gets a free port
//! and its own data directory, and runs under a small shell "lifeline" that kills it (and
//! removes its data) as soon as the test process exits, however it exits. Where no server can
//! be had, tests skip with a printed reason, except under CI (`CI` set), where that fails.
//!

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A server process under its lifeline.
pub struct MongoServer {
    pub port: u16,
    data: PathBuf,
    program: Vec<String>,
    lifeline: Option<(Child, ChildStdin)>,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl MongoServer {
    /// Starts a fresh `mongod` or SecantusDB server; `Err` says why none could start.
    pub fn start() -> Result<MongoServer, String> {
        let port = free_port()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let data = std::env::temp_dir().join(format!("cm-test-mongo-{}-{n}", std::process::id()));
        let dir = data.to_string_lossy().to_string();
        let p = port.to_string();
        let program: Vec<String> = if on_path("mongod") {
            ["mongod", "--bind_ip", "127.0.0.1", "--port", &p, "--dbpath", &dir, "--quiet"].map(String::from).to_vec()
        } else if on_path("secantusd-py") {
            ["secantusd-py", "--host", "127.0.0.1", "--port", &p, "--storage-path", &dir, "--log-level", "WARNING"]
                .map(String::from)
                .to_vec()
        } else {
            return Err("neither mongod nor secantusd-py is on PATH (pip install SecantusDB)".into());
        };
        // Only now that a server will use it.
        std::fs::create_dir_all(&data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
        let mut server = MongoServer { port, data, program, lifeline: None };
        server.restart()?;
        Ok(server)
    }

    /// (Re)starts the server on the same port and data directory and waits until it accepts.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        // The lifeline reads one line: "term" stops the server gracefully and keeps its data (a
        // restart follows); end of file (the test process is gone) kills it and removes the data.
        let script = r#""$@" >"$CM_TEST_DATA.log" 2>&1 &
server=$!
if read line; then kill -TERM $server; (sleep 15; kill -9 $server 2>/dev/null) & else kill -9 $server; fi
wait $server 2>/dev/null
[ "$line" = term ] || rm -rf "$CM_TEST_DATA" "$CM_TEST_DATA.log"
exit 0"#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(&self.program)
            .env("CM_TEST_DATA", &self.data)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program[0]))?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        self.lifeline = Some((child, stdin));
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default();
        Err(format!("{} did not accept connections on port {} within 60 s: {log}", self.program[0], self.port))
    }

    /// Stops the server gracefully (SIGTERM, as an operator would), keeping its data.
    pub fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.lifeline.take() {
            let _ = stdin.write_all(b"term\n");
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// The URI of database `db` on this server.
    pub fn uri(&self, db: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(self.data.with_extension("log"));
    }
}

/// Where no server can be had: fail under CI, else say why the test is skipped.
pub fn unavailable(why: &str) -> Option<String> {
    if std::env::var_os("CI").is_some() {
        panic!("MongoDB tests must run in CI, but no server is available: {why}");
    }
    eprintln!("SKIPPED: no MongoDB-compatible server for this test: {why}");
    None
}

/// A fresh database on the shared server of this test process (or on `CM_TEST_MONGO_URI`'s).
pub fn database_uri(name: &str) -> Option<String> {
    // MongoDB database names have at most 63 characters.
    let short: String = name.chars().take(32).collect();
    let db = format!("cm_test_{}_{}_{short}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    if let Ok(base) = std::env::var("CM_TEST_MONGO_URI") {
        return Some(format!("{}/{db}", base.trim_end_matches('/')));
    }
    static SHARED: OnceLock<Result<MongoServer, String>> = OnceLock::new();
    match SHARED.get_or_init(MongoServer::start) {
        Ok(server) => Some(server.uri(&db)),
        Err(why) => unavailable(why),
    }
}
