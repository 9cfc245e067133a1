//! Attacks on real daemons by an ordinary local user (`nobody`), each refused with nothing done:
//! a forged identity in a submission, forged groups, requests straight to a compute node, a
//! stranger registering or taking over a node, forged reports and kills, reading another user's
//! environment over the wire or from disk, relaying an MPI fence for another's job. The forged
//! messages are made here and sent by a process running as `nobody` (a pyzmq REQ socket, as any
//! libzmq client could), so what the daemons learn of the sender comes from the kernel or from
//! `munged`, as for a real attacker.
//!
//! These need root (to run as `nobody`), `munged`, Debian's python3-zmq and `setpriv`; outside CI
//! they are skipped without them, under CI they fail.

use cm_auth::credentials::Opened;
use cm_auth::credentials::{body_digest, node_recipient, HEAD};
use cm_auth::{ClusterKey, Credentials, ReplyCheck};
use cm_common::job::{JobNode, JobSpec, NodeEnd, NodeEndCause};
use cm_common::protocol::*;
use cm_common::{JobId, NodeId, Resources, Timestamp};
use cm_testkit::{wait_until, Cluster, StoreKind, TEST_CONFIG};
use serde::de::IgnoredAny;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const NOBODY: u32 = 65534;
const LONG: Duration = Duration::from_secs(30);

/// The system's Python (Debian's `python3-zmq`): one that `nobody` may run.
const PYTHON: &str = "/usr/bin/python3";

/// Sends a file's bytes as one ZeroMQ request and writes the reply to another file.
const SEND: &str = "import sys, zmq
s = zmq.Context().socket(zmq.REQ)
s.setsockopt(zmq.LINGER, 0)
s.setsockopt(zmq.RCVTIMEO, 10000)
s.connect(sys.argv[1])
s.send(open(sys.argv[2], 'rb').read())
open(sys.argv[3], 'wb').write(s.recv())
";

/// Whether this machine can run the attacks; under CI it must.
fn can_attack() -> bool {
    let python = Command::new(PYTHON).args(["-c", "import zmq"]).output().is_ok_and(|o| o.status.success());
    let munge = cm_auth::munge::encode(b"probe").is_ok();
    let missing = [
        (!nix::unistd::getuid().is_root(), "root"),
        (!python, "/usr/bin/python3 with zmq (python3-zmq)"),
        (!munge, "a running munged"),
        (!Path::new("/usr/bin/setpriv").exists(), "setpriv"),
    ];
    let missing: Vec<&str> = missing.iter().filter(|(miss, _)| *miss).map(|(_, what)| *what).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "the attack tests need {missing:?} under CI (.ci/run provides them)");
    eprintln!("SKIPPED: the attack tests need {missing:?}");
    false
}

/// `nobody`'s corner of a cluster: a home it owns (the work directory of its jobs), copies of
/// the tools it can run, and the cluster's directory opened so that it reaches the head's socket.
struct Attacker {
    home: PathBuf,
    bin: PathBuf,
}

impl Attacker {
    fn new(cluster: &Cluster) -> Attacker {
        std::fs::set_permissions(cluster.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let home = cluster.dir.path().join("nobody");
        let bin = cluster.dir.path().join("bin");
        std::fs::create_dir(&home).expect("home");
        std::fs::create_dir(&bin).expect("bin");
        let nobody = Some(nix::unistd::Uid::from_raw(NOBODY));
        nix::unistd::chown(&home, nobody, Some(nix::unistd::Gid::from_raw(NOBODY))).expect("chown");
        // The build directory may not be reachable for nobody (CI keeps it under /root).
        for tool in ["cmrun", "cminfo", "cmkill", "cmctl"] {
            std::fs::copy(cm_testkit::bin(tool), bin.join(tool)).expect("copy tool");
        }
        Attacker { home, bin }
    }

    /// `program args` run as nobody, with no supplementary groups.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("setpriv");
        command
            .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "--", program])
            .args(args)
            .current_dir(&self.home);
        command
    }

    /// A tool run as nobody against `cluster`'s head over its Unix socket.
    fn tool(&self, cluster: &Cluster, name: &str, args: &[&str]) -> std::process::Output {
        let tool = self.bin.join(name);
        let mut command = self.command(tool.to_str().expect("utf-8"), args);
        command.env("CM_HEAD", &cluster.head_socket).env("CM_CONFIG", &cluster.config);
        command.output().expect("run the tool")
    }

    /// Sends `bytes` to `endpoint` from a process running as nobody; the reply's body.
    fn send(&self, endpoint: &str, bytes: &[u8]) -> Reply<IgnoredAny> {
        let (_, body) = decode::<Reply<IgnoredAny>>(&self.exchange(endpoint, bytes)).expect("a reply envelope");
        body
    }

    /// Sends a sealed request as nobody, and opens its reply as the sealer would.
    fn send_sealed(&self, endpoint: &str, (bytes, check): (Vec<u8>, ReplyCheck)) -> Reply<IgnoredAny> {
        let envelope = decode_envelope(&self.exchange(endpoint, &bytes)).expect("a reply envelope");
        let body = match check.open(envelope).expect("a reply from this cluster") {
            Opened::Trusted(body) | Opened::ErrorOnly(body) => body,
        };
        decode_body(&body).expect("a reply")
    }

    /// The reply's bytes to `bytes` sent to `endpoint` by a process running as nobody.
    fn exchange(&self, endpoint: &str, bytes: &[u8]) -> Vec<u8> {
        let request = self.home.join("request");
        let reply = self.home.join("reply");
        std::fs::write(&request, bytes).expect("request");
        std::fs::set_permissions(&request, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _ = std::fs::remove_file(&reply);
        let out = self.command(PYTHON, &["-c", SEND, endpoint, "request", "reply"]).output().expect("python3");
        assert!(out.status.success(), "the sender failed: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(&reply).expect("reply")
    }

    /// A MUNGE credential for `body` made by nobody, as nobody's tool would make one.
    fn munge(&self, body: &[u8]) -> String {
        let digest = self.home.join("digest");
        std::fs::write(&digest, body_digest(body)).expect("digest");
        std::fs::set_permissions(&digest, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = self.command("munge", &["--input", "digest"]).output().expect("munge");
        assert!(out.status.success(), "munge: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
    }
}

/// The code of an error reply; panics if the request was taken.
fn refused(reply: Reply<IgnoredAny>, what: &str) -> ErrorCode {
    match reply {
        Err(e) => {
            eprintln!("{what}: refused, {:?}: {}", e.code, e.message);
            e.code
        }
        Ok(_) => panic!("{what} was taken"),
    }
}

fn plain(body: &impl serde::Serialize) -> Vec<u8> {
    encode("attacker", body).expect("encode")
}

/// The body of a submission as the tools make it, with `spec` edited as JSON first: fields a
/// tool never sends (a gid, groups) reach the head exactly as an attacker writes them.
fn submission(spec: &JobSpec, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let real = encode_body(&HeadRequest::Client(ClientRequest::AssignJobId(AssignJobId {
        spec: spec.clone(),
        token: format!("forged-{}", std::process::id()),
    })))
    .expect("encode");
    let mut value: serde_json::Value = rmp_serde::from_slice(&real).expect("as JSON");
    edit(&mut value["Client"]["AssignJobId"]["spec"]);
    rmp_serde::to_vec_named(&value).expect("re-encode")
}

fn spec(workdir: &Path, uid: u32, command: &str) -> JobSpec {
    let mut spec = JobSpec {
        command: command.into(),
        workdir: workdir.to_str().expect("utf-8").into(),
        env: [("PATH".to_string(), "/usr/bin:/bin".to_string())].into(),
        ..JobSpec::example()
    };
    spec.user.uid = uid;
    spec
}

fn job_count(cluster: &Cluster) -> usize {
    let info = cluster.info().expect("cminfo");
    info["jobs"].as_array().map_or(0, Vec::len)
}

#[test]
fn nobody_cannot_submit_as_root_or_as_another_user_over_the_socket_or_tcp() {
    if !can_attack() {
        return;
    }
    let cluster = Cluster::start(1, 2, 512);
    let attacker = Attacker::new(&cluster);
    let marker = attacker.home.join("pwned");
    for uid in [0, 1000] {
        let forged = spec(&attacker.home, uid, &format!("id > {}", marker.display()));
        let raw = submission(&forged, |_| {});
        let body = encode_envelope("attacker", &Auth::None, &raw).expect("envelope");
        // Over the head's socket the kernel says nobody is asking.
        let code = refused(attacker.send(&cluster.head_socket, &body), &format!("a claim of uid {uid} on the socket"));
        assert_eq!(code, ErrorCode::PermissionDenied);
        // Over TCP a claim without a credential is nobody's word.
        let tcp = refused(attacker.send(&cluster.head_endpoint, &body), "a claim without a credential");
        assert_eq!(tcp, ErrorCode::Unauthenticated);
        // With nobody's own MUNGE credential, MUNGE says nobody.
        let credential = attacker.munge(&raw);
        let with_munge = encode_envelope("attacker", &Auth::Munge { credential: credential.clone() }, &raw).expect("e");
        let code = refused(attacker.send(&cluster.head_endpoint, &with_munge), "a claim with nobody's credential");
        assert_eq!(code, ErrorCode::PermissionDenied);
        // The same credential on another body, or again: refused by MUNGE.
        let other = encode_body(&HeadRequest::Client(ClientRequest::FetchJobs(FetchJobs {
            include_finished: true,
            limit: None,
            filter: Default::default(),
        })))
        .expect("body");
        let moved = encode_envelope("attacker", &Auth::Munge { credential: credential.clone() }, &other).expect("e");
        assert_eq!(
            refused(attacker.send(&cluster.head_endpoint, &moved), "a credential moved"),
            ErrorCode::Unauthenticated
        );
        let again = encode_envelope("attacker", &Auth::Munge { credential }, &raw).expect("e");
        assert_eq!(
            refused(attacker.send(&cluster.head_endpoint, &again), "a credential replayed"),
            ErrorCode::Unauthenticated
        );
    }
    assert_eq!(job_count(&cluster), 0, "no job was created");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "nothing ran");
    // nobody's own jobs are welcome, over the socket and over TCP (MUNGE).
    let out = attacker.tool(&cluster, "cmrun", &["--wait", "true"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_job_runs_with_the_groups_the_node_gives_its_user_not_those_it_claims() {
    if !can_attack() {
        return;
    }
    let cluster = Cluster::start(1, 2, 512);
    let attacker = Attacker::new(&cluster);
    let command = "id -u > ids; id -G >> ids; cat /etc/shadow > shadow";
    let forged = spec(&attacker.home, NOBODY, command);
    let raw = submission(&forged, |spec| {
        spec["user"]["gid"] = 0.into();
        spec["user"]["groups"] = serde_json::json!([0, 42]);
    });
    let body = encode_envelope("attacker", &Auth::None, &raw).expect("envelope");
    match attacker.send(&cluster.head_socket, &body) {
        Ok(_) => {}
        Err(e) => panic!("nobody's own job was refused: {}", e.message),
    }
    let ids = attacker.home.join("ids");
    assert!(wait_until(LONG, || std::fs::read_to_string(&ids).is_ok_and(|t| t.lines().count() == 2)));
    let text = std::fs::read_to_string(&ids).expect("ids");
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["65534", "65534"], "uid, then its only group");
    let info = cluster.info().expect("cminfo");
    let id = info["jobs"][0]["id"].as_u64().expect("the job");
    cluster.wait_status(id, "Failed", LONG);
    assert_eq!(std::fs::metadata(attacker.home.join("shadow")).map(|m| m.len()).unwrap_or(0), 0, "shadow unread");
}

/// A job of root's that keeps running on c1 for the length of a test.
fn victim(cluster: &Cluster) -> u64 {
    let id = cluster.submit(&["-a", "victim", "sleep 60"]);
    cluster.wait_status(id, "Running", LONG);
    id
}

#[test]
fn only_the_head_may_start_or_free_jobs_on_a_compute_node() {
    if !can_attack() {
        return;
    }
    let cluster = Cluster::start(1, 4, 1024);
    let attacker = Attacker::new(&cluster);
    let victim = victim(&cluster);
    let compute = std::fs::read_to_string(cluster.dir.path().join("c1/compute.endpoint")).expect("endpoint");
    let marker = attacker.home.join("pwned");
    let mut job = cm_common::job::Job::new(
        JobId(4242),
        spec(&attacker.home, 0, &format!("id > {}", marker.display())),
        Timestamp::now(),
        "t".into(),
    );
    job.nodes = vec![JobNode { node: NodeId::new("c1"), started_at: None, end: None }];
    let start = NodeRequest::StartJob(StartJob { job });
    let free = NodeRequest::FreeResources(FreeResources { job: JobId(victim), run: 0 });
    for request in [&start, &free] {
        assert_eq!(
            refused(attacker.send(&compute, &plain(request)), "a plain request to c1"),
            ErrorCode::Unauthenticated
        );
        // Sealed, but with a key of nobody's own making.
        let own_key = Arc::new(ClusterKey::ephemeral().expect("key"));
        let sealed = Credentials::Sealed { key: own_key, recipient: node_recipient("c1") };
        let request = sealed.request("head", &encode_body(request).expect("body")).expect("seal");
        let reply = attacker.send_sealed(&compute, request);
        assert_eq!(refused(reply, "a request sealed with another key"), ErrorCode::Unauthenticated);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(!marker.exists(), "nothing ran");
    assert_eq!(cluster.job_status(victim), "Running");
}

#[test]
fn a_stranger_cannot_register_a_node_nor_take_over_a_live_one() {
    if !can_attack() {
        return;
    }
    let cluster = Cluster::start(1, 4, 1024);
    let attacker = Attacker::new(&cluster);
    let victim = victim(&cluster);
    let register = |node: &str, address: &str| {
        HeadRequest::Compute(ComputeRequest::RegisterNode(RegisterNode {
            node: NodeId::new(node),
            address: address.into(),
            capacity: Resources::new(64, 65536),
            only_uid: None,
            running: vec![],
            containment: String::new(),
        }))
    };
    for node in ["evil", "c1"] {
        let request = plain(&register(node, "tcp://127.0.0.2:1"));
        for endpoint in [&cluster.head_endpoint, &cluster.head_socket] {
            let code = refused(attacker.send(endpoint, &request), &format!("a plain registration of {node}"));
            assert_eq!(code, ErrorCode::Unauthenticated);
        }
    }
    // Even a holder of the key (a daemon elsewhere) cannot take a live node's id from another host.
    let sealed = Credentials::Sealed { key: cluster.key(), recipient: HEAD.into() };
    let takeover =
        sealed.request("c1", &encode_body(&register("c1", "tcp://127.0.0.2:1")).expect("body")).expect("seal");
    let reply = attacker.send_sealed(&cluster.head_endpoint, takeover);
    assert_eq!(refused(reply, "a takeover of c1"), ErrorCode::PermissionDenied);
    // Nor speak for a node other than the one it sealed as.
    let beat = HeadRequest::Compute(ComputeRequest::Heartbeat(Heartbeat { node: NodeId::new("c1"), running: vec![] }));
    let impersonation = sealed.request("c2", &encode_body(&beat).expect("body")).expect("seal");
    let reply = attacker.send_sealed(&cluster.head_endpoint, impersonation);
    assert_eq!(refused(reply, "c2 speaking for c1"), ErrorCode::PermissionDenied);

    let info = cluster.info().expect("cminfo");
    let nodes: Vec<&str> = info["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(nodes, ["head", "c1"], "no node joined");
    let c1 = &info["nodes"][1];
    assert!(!c1["address"].as_str().expect("address").contains("127.0.0.2"), "c1 kept its address: {c1}");
    assert_eq!(cluster.job_status(victim), "Running");
    let next = cluster.submit(&["true"]);
    cluster.wait_status(next, "Completed", LONG);
}

#[test]
fn forged_reports_and_kills_change_nothing() {
    if !can_attack() {
        return;
    }
    let cluster = Cluster::start(1, 4, 1024);
    let attacker = Attacker::new(&cluster);
    let victim = victim(&cluster);
    let end = NodeEnd { ended_at: Timestamp::now(), cause: NodeEndCause::Exited, replicas: vec![], usage: None };
    let report = HeadRequest::Compute(ComputeRequest::ReportJobs(ReportJobs {
        reports: vec![JobReport::End(ReportJobEnd {
            node: NodeId::new("c1"),
            job: JobId(victim),
            run: 0,
            end,
            started_at: None,
        })],
    }));
    let kill = HeadRequest::Client(ClientRequest::KillJob(KillJob { id: JobId(victim) }));
    for endpoint in [&cluster.head_endpoint, &cluster.head_socket] {
        assert_eq!(refused(attacker.send(endpoint, &plain(&report)), "a forged report"), ErrorCode::Unauthenticated);
    }
    assert_eq!(
        refused(attacker.send(&cluster.head_endpoint, &plain(&kill)), "a kill over TCP"),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        refused(attacker.send(&cluster.head_socket, &plain(&kill)), "a kill on the socket"),
        ErrorCode::PermissionDenied
    );
    let out = attacker.tool(&cluster, "cmkill", &[&victim.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only its owner"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(cluster.job_status(victim), "Running");
}

#[test]
fn nobody_cannot_jump_the_queue_nor_hold_or_reorder_anothers_jobs() {
    if !can_attack() {
        return;
    }
    let cluster = Cluster::start(1, 1, 1024);
    let attacker = Attacker::new(&cluster);
    let _busy = victim(&cluster); // holds the node's one CPU: what follows stays pending
    let roots = cluster.submit(&["-a", "roots", "true"]);
    let said = |out: std::process::Output| {
        (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    };
    for flags in [["--priority", "4000000000"], ["--nice", "-10000"]] {
        let (code, text) = said(attacker.tool(&cluster, "cmrun", &[flags[0], flags[1], "true"]));
        assert!(code == Some(1) && text.contains("only root and the operators"), "cmrun {flags:?}: {text}");
    }
    let (code, text) = said(attacker.tool(&cluster, "cmctl", &["update", "job", &roots.to_string(), "priority=0"]));
    assert!(code == Some(1) && text.contains("only its owner, root or an operator"), "{text}");
    let mine = said(attacker.tool(&cluster, "cmrun", &["true"])).1.trim().parse::<u64>().expect("nobody's job");
    for change in ["priority=4000000000", "nice=-10000"] {
        let (code, text) = said(attacker.tool(&cluster, "cmctl", &["update", "job", &mine.to_string(), change]));
        assert!(code == Some(1) && text.contains("only root and the operators"), "{change}: {text}");
    }
    let (code, text) = said(attacker.tool(&cluster, "cmctl", &["update", "job", &mine.to_string(), "nice=50"]));
    assert!(code == Some(0) && text.contains("Nice"), "lowering one's own job is allowed: {text}");
    // Nor hold, nor cancel in bulk, root's job: by id, by range, or by filters that name root.
    let (code, text) = said(attacker.tool(&cluster, "cmctl", &["hold", &roots.to_string()]));
    assert!(code == Some(1) && text.contains("only its owner, root or an operator"), "{text}");
    let range = format!("{roots}-{roots}");
    let (code, text) = said(attacker.tool(&cluster, "cmkill", &[&range]));
    assert!(code == Some(1) && text.contains("only its owner, root or an operator"), "{text}");
    let (code, text) = said(attacker.tool(&cluster, "cmkill", &["--user", "root", "--state", "Pending"]));
    assert!(code == Some(0) && text.contains("no pending or running job matched"), "{text}");
    assert_eq!(cluster.job_status(roots), "Pending");
    assert_eq!(cluster.job(roots)["spec"]["hold"], false);
    let job = cluster.job(roots);
    assert_eq!(
        (job["spec"]["priority"].clone(), job["priority"].as_u64().map(|p| p >= 10_000)),
        (serde_json::Value::Null, Some(true))
    );
    let job = cluster.job(mine);
    assert_eq!((job["spec"]["priority"].clone(), job["spec"]["nice"].as_i64()), (serde_json::Value::Null, Some(50)));
}

#[test]
fn another_users_environment_stays_private_on_the_wire_and_on_disk() {
    if !can_attack() {
        return;
    }
    let cluster = Cluster::start(1, 4, 1024);
    let attacker = Attacker::new(&cluster);
    let mut command = cluster.tool_command("cmrun", &["sleep 60"]);
    let out = command.env("API_TOKEN", "hunter2-secret").output().expect("cmrun");
    assert!(out.status.success());
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("id");
    cluster.wait_status(id, "Running", LONG);
    assert_eq!(cluster.job(id)["spec"]["env"]["API_TOKEN"], "hunter2-secret", "its owner sees it");
    let out = attacker.tool(&cluster, "cminfo", &["--json", &id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("sleep 60"), "the job is shown: {seen}");
    assert!(!seen.contains("hunter2"), "nobody sees root's environment: {seen}");
    // On disk: the state is private to the daemons' user.
    let private = |path: &Path, mode: u32| {
        let actual = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode();
        assert_eq!(actual & 0o777, mode, "{}", path.display());
    };
    private(&cluster.dir.path().join("head"), 0o700);
    private(&cluster.dir.path().join("head/cm.redb"), 0o600);
    private(&cluster.dir.path().join("c1"), 0o700);
    private(&cluster.dir.path().join("c1/cmstep.log"), 0o600);
    private(&cluster.cluster_key, 0o600);
    let steps: Vec<PathBuf> =
        std::fs::read_dir(cluster.dir.path().join("c1/jobs")).expect("jobs").flatten().map(|e| e.path()).collect();
    assert!(!steps.is_empty());
    for step in &steps {
        private(step, 0o600);
    }
    for secret in [cluster.dir.path().join("head/cm.redb"), steps[0].clone(), cluster.cluster_key.clone()] {
        let out = attacker.command("cat", &[secret.to_str().expect("utf-8")]).output().expect("cat");
        assert!(!out.status.success(), "nobody read {}", secret.display());
    }
}

#[test]
fn with_private_data_users_see_only_their_own_jobs() {
    if !can_attack() {
        return;
    }
    let config = format!("{TEST_CONFIG}private_data: true\n");
    let cluster = Cluster::start_with(&StoreKind::Embedded, 1, 4, 1024, &config, "info");
    let attacker = Attacker::new(&cluster);
    let roots = victim(&cluster);
    let out = attacker.tool(&cluster, "cmrun", &["sleep 60"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mine: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("id");
    let out = attacker.tool(&cluster, "cminfo", &["--json", "--all"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let ids: Vec<u64> = listed["jobs"].as_array().expect("jobs").iter().filter_map(|j| j["id"].as_u64()).collect();
    assert_eq!(ids, [mine], "nobody sees its own job only");
    let out = attacker.tool(&cluster, "cminfo", &[&roots.to_string()]);
    assert!(!out.status.success(), "root's job is hidden from nobody");
    let all = cluster.info().expect("root's cminfo");
    assert_eq!(all["jobs"].as_array().map_or(0, Vec::len), 2, "root sees every job");
}

/// Connects to a Unix socket, sends a file's bytes and says how the other side answered.
const RELAY: &str = "import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print('refused', e.errno); sys.exit()
try:
    s.sendall(open(sys.argv[2], 'rb').read())
    print('closed' if s.recv(1) == b'' else 'answered')
except (BrokenPipeError, ConnectionResetError):
    print('closed')
except socket.timeout:
    print('waiting')
";

#[test]
fn nobody_cannot_relay_an_mpi_fence_for_anothers_job() {
    use cm_step::pmi::relay::{frame, FenceIn, SOCKET};
    use std::os::unix::fs::PermissionsExt;
    if !can_attack() {
        return;
    }
    let cluster = Cluster::start(1, 4, 1024);
    let attacker = Attacker::new(&cluster);
    let victim = victim(&cluster);
    let fence = FenceIn {
        run: cm_common::job::JobRun { job: JobId(victim), run: 0 },
        epoch: 0,
        puts: vec![("card-0".into(), "evil".into())],
    };
    let request = attacker.home.join("fence");
    std::fs::write(&request, frame(&fence)).expect("fence");
    std::fs::set_permissions(&request, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let state = cluster.dir.path().join("c1");
    let socket = state.join(SOCKET);
    let relay = |expected: &str| {
        let out = attacker.command(PYTHON, &["-c", RELAY, socket.to_str().expect("utf-8"), "fence"]).output();
        let out = out.expect("python3");
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(said.starts_with(expected), "{said} {}", String::from_utf8_lossy(&out.stderr));
    };
    // The socket is in the node's private state directory.
    relay("refused 13");
    // Were the directory and the socket opened to all by mistake, the daemon still hangs up on a
    // peer whose uid is not its own, before reading what it sent.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    relay("closed");
    assert_eq!(cluster.job_status(victim), "Running");
}
