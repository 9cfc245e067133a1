//! The PMI-1 server for one job run's ranks on this node, so MPI programs built with MPICH find
//! each other without `mpiexec` or ssh.
//!
//! Each rank gets one end of a socket pair as `PMI_FD` (with `PMI_RANK` and `PMI_SIZE`), which is
//! how MPICH's process manager hands out PMI too; no port is opened, so only the rank itself can
//! speak for it. The supervisor answers on the other ends from its own loop ([`Pmi::pump`]): the
//! ranks' puts go into the run's key-value space, and a fence (`barrier_in`) completes once every
//! local rank has reached it and, for a job on several nodes, once every node has: the
//! supervisor sends its node's puts to the compute daemon ([`relay`]), the head gathers all
//! nodes' and sends every node the whole set. A rank that calls `MPI_Abort`, or that ends its PMI
//! connection after `init` and before `finalize` (it crashed), ends the job, as `mpiexec` does.

pub mod relay;
pub mod wire;

use cm_common::job::JobRun;
use nix::poll::PollFlags;
use relay::{FenceIn, FenceOut};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use wire::{reply, Command};

/// The most a run's key-value space may hold, on each node, counted by [`pair_bytes`]; all of it
/// crosses the network in one message at a fence, well within `max_message_size`.
pub const MAX_KVS_BYTES: usize = 4 << 20;

/// What a key and value cost against [`MAX_KVS_BYTES`]: their bytes and their encoding's.
pub fn pair_bytes(key: &str, value: &str) -> usize {
    key.len() + value.len() + 16
}
/// The most replies a rank may leave unread: a client reads each before its next command.
const MAX_UNREAD: usize = 64 << 10;
/// The most one rank's bytes are read in one turn, so one rank cannot hold up the others.
const READ_TURN: usize = 64 << 10;
/// How long a fence waits before asking the daemon again after losing it (it restarted).
const RELAY_RETRY: Duration = Duration::from_secs(1);

/// Where one node's ranks stand in the job.
#[derive(Debug, Clone)]
pub struct PmiSetup {
    pub run: JobRun,
    pub node_rank: usize,
    pub nodes: usize,
    pub procs_per_node: u32,
    /// The daemon's socket, for fences across nodes.
    pub relay: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Has not said `init` (yet): a program that does not use MPI stays here.
    New,
    Active,
    /// In a fence, waiting for `barrier_out`.
    Waiting,
    Finalized,
}

struct Rank {
    rank: u64,
    /// `None` once the rank has closed its end.
    stream: Option<UnixStream>,
    input: Vec<u8>,
    output: Vec<u8>,
    state: State,
    /// Inside a multi-line `mcmd=spawn` request, which is skipped up to `endcmd`.
    in_spawn: bool,
}

/// A fence being relayed to the daemon.
struct Exchange {
    stream: UnixStream,
    output: Vec<u8>,
    input: Vec<u8>,
}

/// The PMI server of one run on this node.
pub struct Pmi {
    setup: PmiSetup,
    kvsname: String,
    ranks: Vec<Rank>,
    kvs: HashMap<String, String>,
    kvs_bytes: usize,
    /// This node's puts since the last fence, for the other nodes.
    fresh: Vec<(String, String)>,
    epoch: u32,
    exchange: Option<Exchange>,
    retry_at: Option<Instant>,
    /// Why the job must end; set once.
    abort: Option<String>,
}

impl Pmi {
    /// A server for this node's ranks and, for each local rank in order, the end of its socket
    /// pair that the rank inherits (close-on-exec until the rank's child clears it).
    pub fn new(setup: PmiSetup) -> std::io::Result<(Pmi, Vec<OwnedFd>)> {
        let first = setup.node_rank as u64 * u64::from(setup.procs_per_node);
        let mut ranks = Vec::new();
        let mut theirs = Vec::new();
        for local in 0..setup.procs_per_node {
            let (ours, their) = UnixStream::pair()?;
            ours.set_nonblocking(true)?;
            ranks.push(Rank {
                rank: first + u64::from(local),
                stream: Some(ours),
                input: Vec::new(),
                output: Vec::new(),
                state: State::New,
                in_spawn: false,
            });
            theirs.push(OwnedFd::from(their));
        }
        let kvsname = format!("kvs_{}_{}", setup.run.job, setup.run.run);
        let pmi = Pmi {
            setup,
            kvsname,
            ranks,
            kvs: HashMap::new(),
            kvs_bytes: 0,
            fresh: Vec::new(),
            epoch: 0,
            exchange: None,
            retry_at: None,
            abort: None,
        };
        Ok((pmi, theirs))
    }

    /// The ranks in the job, for `PMI_SIZE`.
    pub fn size(&self) -> u64 {
        self.setup.nodes as u64 * u64::from(self.setup.procs_per_node)
    }

    /// What to wait for: each open connection, readable (and writable while replies are queued).
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut fds = Vec::new();
        for rank in &self.ranks {
            if let Some(stream) = &rank.stream {
                let out = if rank.output.is_empty() { PollFlags::empty() } else { PollFlags::POLLOUT };
                fds.push((stream.as_fd(), PollFlags::POLLIN | out));
            }
        }
        if let Some(exchange) = &self.exchange {
            let out = if exchange.output.is_empty() { PollFlags::empty() } else { PollFlags::POLLOUT };
            fds.push((exchange.stream.as_fd(), PollFlags::POLLIN | out));
        }
        fds
    }

    /// When [`Pmi::pump`] must run even if no connection stirs: a fence to retry.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Reads and answers whatever the ranks and the daemon have sent, without blocking. Returns
    /// why the job must end, once: a rank aborted, broke the protocol or crashed mid-MPI, or a
    /// fence was refused.
    pub fn pump(&mut self, now: Instant) -> Option<String> {
        if self.abort.is_some() {
            return None;
        }
        for index in 0..self.ranks.len() {
            self.serve_rank(index);
        }
        self.relay(now);
        if self.exchange.is_none() && self.retry_at.is_none() && self.all_waiting() {
            self.begin_fence(now);
        }
        self.abort.clone()
    }

    fn fail(&mut self, reason: String) {
        if self.abort.is_none() {
            tracing::warn!(%reason, "MPI job ends");
            self.abort = Some(reason);
        }
    }

    fn all_waiting(&self) -> bool {
        !self.ranks.is_empty() && self.ranks.iter().all(|r| r.state == State::Waiting)
    }

    fn serve_rank(&mut self, index: usize) {
        let mut buffer = [0u8; 4096];
        let mut read = 0;
        let mut closed = false;
        {
            let rank = &mut self.ranks[index];
            let Some(stream) = &mut rank.stream else { return };
            flush(stream, &mut rank.output);
            while read < READ_TURN {
                match stream.read(&mut buffer) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        rank.input.extend_from_slice(&buffer[..n]);
                        read += n;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        while let Some(end) = self.ranks[index].input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.ranks[index].input.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            self.command(index, &line);
            if self.abort.is_some() {
                return;
            }
        }
        let rank = &mut self.ranks[index];
        if rank.input.len() > wire::MAX_LINE {
            let reason = format!("rank {} sent PMI a line over {} bytes", rank.rank, wire::MAX_LINE);
            return self.fail(reason);
        }
        if rank.output.len() > MAX_UNREAD {
            let reason = format!("rank {} does not read PMI's replies", rank.rank);
            return self.fail(reason);
        }
        if let Some(stream) = &mut rank.stream {
            flush(stream, &mut rank.output);
        }
        if closed {
            rank.stream = None;
            if matches!(rank.state, State::Active | State::Waiting) {
                let reason =
                    format!("rank {} ended before MPI_Finalize (it exited or crashed; see its output)", rank.rank);
                self.fail(reason);
            }
        }
    }

    fn command(&mut self, index: usize, line: &str) {
        let rank = self.ranks[index].rank;
        if self.ranks[index].in_spawn {
            if line.trim() == "endcmd" {
                self.ranks[index].in_spawn = false;
                self.ranks[index].output.extend_from_slice(reply::unsupported("spawn_result").as_bytes());
            }
            return;
        }
        let command = match wire::parse(line) {
            Ok(command) => command,
            Err(bad) => return self.fail(format!("rank {rank} sent PMI a bad line: {bad}")),
        };
        let answer = match command {
            Command::Init { version, subversion } => {
                if (version, subversion) == (1, 1) {
                    self.ranks[index].state = State::Active;
                }
                reply::init(version, subversion)
            }
            Command::GetMaxes => reply::maxes(),
            Command::GetAppnum => reply::appnum(),
            Command::GetMyKvsname => reply::kvsname(&self.kvsname),
            Command::GetUniverseSize => reply::universe_size(self.size()),
            Command::Put { kvsname, key, value } => {
                let result = if kvsname != self.kvsname {
                    Err("no such kvs")
                } else if self.store(key.clone(), value.clone()) {
                    self.fresh.push((key, value));
                    Ok(())
                } else {
                    Err("the job's key-value space is full")
                };
                reply::put(result)
            }
            Command::Get { kvsname, key } => {
                if kvsname != self.kvsname {
                    reply::get(None)
                } else if key == "PMI_process_mapping" {
                    reply::get(Some(&self.process_mapping()))
                } else {
                    reply::get(self.kvs.get(&key).map(String::as_str))
                }
            }
            Command::BarrierIn => {
                self.ranks[index].state = State::Waiting;
                return;
            }
            Command::Finalize => {
                self.ranks[index].state = State::Finalized;
                reply::finalize_ack()
            }
            Command::Abort { exit_code } => {
                return self.fail(format!("rank {rank} called MPI_Abort (error code {exit_code})"));
            }
            Command::Unsupported { response: "spawn_result" } => {
                self.ranks[index].in_spawn = true;
                return;
            }
            Command::Unsupported { response } => reply::unsupported(response),
        };
        self.ranks[index].output.extend_from_slice(answer.as_bytes());
    }

    /// Keeps a pair within the budget; false if it would go over.
    fn store(&mut self, key: String, value: String) -> bool {
        let old = self.kvs.get(&key).map_or(0, |v| pair_bytes(&key, v));
        let new = pair_bytes(&key, &value);
        if self.kvs_bytes - old + new > MAX_KVS_BYTES {
            return false;
        }
        self.kvs_bytes = self.kvs_bytes - old + new;
        self.kvs.insert(key, value);
        true
    }

    /// Which ranks share a node, as MPICH reads it: ranks are laid out node by node, the same
    /// number on each.
    fn process_mapping(&self) -> String {
        format!("(vector,(0,{},{}))", self.setup.nodes, self.setup.procs_per_node)
    }

    fn begin_fence(&mut self, now: Instant) {
        if self.setup.nodes <= 1 {
            return self.end_fence();
        }
        let Some(path) = self.setup.relay.clone() else {
            return self.fail("this node cannot relay MPI fences to the other nodes".into());
        };
        match UnixStream::connect(&path).and_then(|stream| stream.set_nonblocking(true).map(|()| stream)) {
            Ok(stream) => {
                let request = FenceIn { run: self.setup.run, epoch: self.epoch, puts: self.fresh.clone() };
                self.exchange = Some(Exchange { stream, output: relay::frame(&request), input: Vec::new() });
            }
            Err(e) => {
                tracing::warn!(socket = %path.display(), error = %e, "cannot reach the compute daemon for an MPI fence; retrying");
                self.retry_at = Some(now + RELAY_RETRY);
            }
        }
    }

    /// Moves the fence in flight along; on the daemon's answer, completes it.
    fn relay(&mut self, now: Instant) {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry_at = None;
        }
        let Some(exchange) = &mut self.exchange else { return };
        flush(&mut exchange.stream, &mut exchange.output);
        let mut buffer = [0u8; 16384];
        let lost = loop {
            match exchange.stream.read(&mut buffer) {
                Ok(0) => break true,
                Ok(n) => exchange.input.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        match relay::unframe::<FenceOut>(&exchange.input) {
            Ok(Some((FenceOut::Done { epoch, kvs }, _))) if epoch == self.epoch => {
                self.exchange = None;
                for (key, value) in kvs {
                    if !self.store(key, value) {
                        return self.fail("the job's PMI key-value space is over its limit".into());
                    }
                }
                self.end_fence();
            }
            Ok(Some((FenceOut::Done { epoch, .. }, _))) => {
                self.fail(format!("the fence of epoch {} was answered for epoch {epoch}", self.epoch))
            }
            Ok(Some((FenceOut::Refused { reason }, _))) => self.fail(reason),
            Err(reason) => self.fail(format!("the compute daemon's answer to a fence: {reason}")),
            Ok(None) if lost => {
                // The daemon restarted: ask the next one (the head answers a repeat too).
                tracing::warn!("lost the compute daemon during an MPI fence; retrying");
                self.exchange = None;
                self.retry_at = Some(now + RELAY_RETRY);
            }
            Ok(None) => {}
        }
    }

    fn end_fence(&mut self) {
        for rank in &mut self.ranks {
            rank.state = State::Active;
            rank.output.extend_from_slice(reply::barrier_out().as_bytes());
            if let Some(stream) = &mut rank.stream {
                flush(stream, &mut rank.output);
            }
        }
        self.fresh.clear();
        self.epoch += 1;
    }
}

/// Writes what the peer will take now; the rest stays queued.
fn flush(stream: &mut UnixStream, output: &mut Vec<u8>) {
    while !output.is_empty() {
        match stream.write(output) {
            Ok(0) => return,
            Ok(n) => {
                output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Would block: later. Broken: the read side notices the close.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests;
