//! The head against a MongoDB server that goes away and comes back.

use cm_testkit::mongo_server::{self, MongoServer};
use cm_testkit::{wait_until, Cluster, StoreKind};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn the_head_rides_out_a_database_outage_and_loses_nothing_acknowledged() {
    // A server of its own, since this test stops it.
    let mut server = match MongoServer::start() {
        Ok(server) => server,
        Err(why) => {
            mongo_server::unavailable(&why);
            return;
        }
    };
    let mut cluster = Cluster::start_on(&StoreKind::Mongo(server.uri("outage")), 1, 2, 512);
    let running = cluster.submit(&["sleep 2"]);
    cluster.wait_status(running, "Running", LONG);
    let queued = cluster.submit(&["-c", "2", "echo done > queued.txt"]);

    server.stop();
    // A write fails with a clear reason, promptly.
    let started = Instant::now();
    let out = cluster.tool("cmrun", &["true"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("job store is unreachable") && err.contains("try again"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    // Reads served from the head's memory still work.
    let info = cluster.tool("cminfo", &[]);
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    // The running job ends during the outage; its report must wait, not vanish.
    std::thread::sleep(Duration::from_secs(3));

    server.restart().expect("restart the database");
    // Acknowledged work resumes: the running job's end is recorded, the queued one runs.
    cluster.wait_status(running, "Completed", LONG);
    cluster.wait_status(queued, "Completed", LONG);
    assert_eq!(std::fs::read_to_string(cluster.workdir.join("queued.txt")).expect("output").trim(), "done");
    // New submissions work again, with ids that continue the sequence.
    let mut next = None;
    assert!(wait_until(LONG, || {
        let out = cluster.tool("cmrun", &["true"]);
        next = String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().ok();
        next.is_some()
    }));
    let next = next.expect("id");
    assert!(next > queued, "ids continue: {next} after {queued}");
    cluster.wait_status(next, "Completed", LONG);
    cluster.assert_alive();
}
