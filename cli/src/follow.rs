//! `cmrun --wait` shows the job's output as it is written: it reads each rank's stdout and
//! stderr files as they grow and prints their complete lines (prefixed with the rank, with
//! `--label`). The replicas write to their files, never to cmrun, so a slow terminal cannot hold
//! a job up; cmrun reads at most [`CHUNK`] bytes of a file per look, so what it holds is
//! bounded. The files must be visible where cmrun runs: the working directory shared with the
//! nodes, as home directories are on a cluster.

use crate::startup::write_stdout;
use cm_common::job::Job;
use std::io::{Read, Write};
use std::path::PathBuf;

/// The most read from one file at one look.
const CHUNK: usize = 64 * 1024;

/// One output file followed.
struct Followed {
    path: PathBuf,
    rank: u64,
    stderr: bool,
    /// Open once it has appeared; read on from where the last look stopped.
    handle: Option<std::fs::File>,
    offset: u64,
    /// The start of a line not yet ended.
    partial: Vec<u8>,
}

/// The output files of one job run, and how far each has been shown.
pub struct Follower {
    label: bool,
    run: Option<u32>,
    files: Vec<Followed>,
}

impl Follower {
    pub fn new(label: bool) -> Follower {
        Follower { label, run: None, files: Vec::new() }
    }

    /// Learns the job's files once it is placed (again after a requeue).
    pub fn track(&mut self, job: &Job) {
        if job.nodes.is_empty() || self.run == Some(job.run) {
            return;
        }
        self.run = Some(job.run);
        self.files.clear();
        let per_node = u64::from(job.spec.procs_per_node);
        for (node_rank, node) in job.nodes.iter().enumerate() {
            for local in 0..per_node {
                let rank = node_rank as u64 * per_node + local;
                let (out, err) = job.output_paths(&node.node, rank);
                for (path, stderr) in [(out, false), (err, true)] {
                    // A file that several ranks share (a pattern without %r) is shown once.
                    if path.starts_with("/dev") || self.files.iter().any(|f| f.path == path) {
                        continue;
                    }
                    self.files.push(Followed { path, rank, stderr, handle: None, offset: 0, partial: Vec::new() });
                }
            }
        }
    }

    /// Prints the lines written since the last look; with `last`, also the end of a last line
    /// left without a newline.
    pub fn show(&mut self, last: bool) {
        for file in &mut self.files {
            if file.handle.is_none() {
                file.handle = std::fs::File::open(&file.path).ok();
            }
            let Some(handle) = &mut file.handle else { continue };
            let mut chunk = Vec::with_capacity(CHUNK);
            if handle.take(CHUNK as u64).read_to_end(&mut chunk).is_err() {
                continue;
            }
            file.offset += chunk.len() as u64;
            file.partial.extend_from_slice(&chunk);
            let end = if last {
                file.partial.len()
            } else {
                file.partial.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
            };
            let lines: Vec<u8> = file.partial.drain(..end).collect();
            if lines.is_empty() {
                continue;
            }
            let mut text = String::new();
            for line in String::from_utf8_lossy(&lines).lines() {
                if self.label {
                    text.push_str(&format!("{}: ", file.rank));
                }
                text.push_str(line);
                text.push('\n');
            }
            if file.stderr {
                let _ = std::io::stderr().write_all(text.as_bytes());
            } else {
                write_stdout(&text);
            }
        }
    }

    /// The first of the job's files, if none of them could be read here though the job ran:
    /// its working directory is not shared with its nodes.
    pub fn none_visible(&self, job: &Job) -> Option<&PathBuf> {
        let ran = job.nodes.iter().any(|n| n.started_at.is_some());
        (ran && self.files.iter().all(|f| f.handle.is_none())).then(|| self.files.first().map(|f| &f.path)).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cm_common::job::{JobNode, JobSpec};
    use cm_common::{JobId, NodeId, Timestamp};

    #[test]
    fn files_of_every_rank_are_found_once_and_read_as_they_grow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = JobSpec {
            workdir: dir.path().to_str().expect("utf-8").into(),
            procs_per_node: 2,
            nodes: 2,
            stderr: Some("/dev/null".into()),
            ..JobSpec::example()
        };
        let mut job = Job::new(JobId(9), spec, Timestamp(0), String::new());
        let mut follower = Follower::new(true);
        follower.track(&job);
        assert!(follower.files.is_empty(), "nothing before it is placed");
        job.nodes = ["a", "b"].iter().map(|n| JobNode { node: NodeId::new(*n), started_at: None, end: None }).collect();
        follower.track(&job);
        let ranks: Vec<u64> = follower.files.iter().map(|f| f.rank).collect();
        assert_eq!(ranks, [0, 1, 2, 3], "stdout of each rank; stderr to /dev/null is left out");
        std::fs::create_dir_all(dir.path().join("cmlogs/9")).expect("dir");
        let rank3 = dir.path().join("cmlogs/9/b.3.out");
        std::fs::write(&rank3, "one\ntw").expect("write");
        follower.show(false);
        assert_eq!(follower.files[3].offset, 6);
        assert_eq!(follower.files[3].partial, b"tw", "half a line waits for its end");
        assert_eq!(follower.none_visible(&job), None, "not yet started");
        job.nodes[0].started_at = Some(Timestamp(1));
        assert_eq!(follower.none_visible(&job), None, "one file is visible");
        let mut elsewhere = Follower::new(false);
        job.spec.workdir = "/nonexistent".into();
        elsewhere.track(&job);
        elsewhere.show(true);
        assert_eq!(elsewhere.none_visible(&job), Some(&PathBuf::from("/nonexistent/cmlogs/9/a.0.out")));
    }
}
