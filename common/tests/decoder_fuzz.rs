//! Property tests of the message decoder: whatever bytes a peer sends, decoding returns an
//! error or a message, and never panics. A bounded fuzz run, part of every test run.

use cm_common::job::{Job, JobSpec, UserIdentity};
use cm_common::protocol::*;
use cm_common::{JobId, Resources, Timestamp};
use proptest::prelude::*;

fn valid_messages() -> Vec<Vec<u8>> {
    let spec = JobSpec {
        name: "fuzz".into(),
        user: UserIdentity { uid: 1000, name: "alice".into() },
        command: "echo $CM_PROC_RANK".into(),
        workdir: "/home/alice".into(),
        env: [("PATH".to_string(), "/usr/bin".to_string())].into(),
        nodes: 2,
        procs_per_node: 2,
        per_node: Resources::new(1, 100),
        time_limit_secs: Some(60),
        stdout: Some("out-%j".into()),
        stderr: None,
        requeue: true,
        max_user_processes: None,
        partition: "main".into(),
        nice: 0,
        priority: None,
        mpi: cm_common::job::Mpi::Pmi1,
        array: Some(cm_common::array::ArraySpec::parse("0-99:3,200%4", 1000).expect("array")),
        dependency: cm_common::dependency::parse("afterok:3:4,singleton").expect("dependency"),
        hold: true,
    };
    let job = Job::new(JobId(7), spec.clone(), Timestamp(1), "token".into());
    let submit = HeadRequest::Client(ClientRequest::AssignJobId(AssignJobId { spec, token: "t".into() }));
    let start = NodeRequest::StartJob(StartJob { job });
    vec![
        encode("fuzz", &submit).expect("encode"),
        encode("fuzz", &start).expect("encode"),
        encode("fuzz", &HeadRequest::Client(ClientRequest::FetchNodes(FetchNodes {}))).expect("encode"),
        encode(
            "fuzz",
            &HeadRequest::Client(ClientRequest::KillJobs(KillJobs {
                selection: JobSelection {
                    jobs: vec![JobRef::Job(JobId(3)), JobRef::Task(JobId(4), 7), JobRef::Range(JobId(5), JobId(9))],
                    users: vec![1000],
                    states: vec!["Pending".into()],
                    names: vec!["x".into()],
                },
            })),
        )
        .expect("encode"),
        encode_envelope("fuzz", &Auth::Sealed { at_ms: 1, nonce: vec![7; 24] }, &[1, 2, 3]).expect("encode"),
        encode_envelope("fuzz", &Auth::Munge { credential: "MUNGE:AwQ:".into() }, &[1]).expect("encode"),
    ]
}

/// Tries every decoder a daemon or tool uses.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<HeadRequest>(bytes);
    let _ = decode::<NodeRequest>(bytes);
    let _ = decode::<Reply<ClientResponse>>(bytes);
    let _ = decode::<Reply<ComputeResponse>>(bytes);
    let _ = decode::<Reply<NodeResponse>>(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn corrupted_valid_messages_never_panic(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_messages().swap_remove(which);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        decode_all(&bytes);
        // Truncated anywhere.
        let keep = cut.index(bytes.len() + 1);
        decode_all(&bytes[..keep]);
    }
}

#[test]
fn valid_messages_still_decode() {
    for bytes in valid_messages() {
        assert!(decode_envelope(&bytes).is_ok());
    }
}
