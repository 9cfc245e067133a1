//! Tools waiting for a job to end or start (`cmrun --wait`): their requests are left unanswered
//! until then, and answered at the end of the loop's turn that made the change durable, so a
//! job's end reaches its waiter within the turn, with no polling interval in between. A wait
//! lasts at most [`MAX_WAIT_MS`]; then the job is sent as it stands and the tool asks again.

use super::core::HeadCore;
use crate::service::{body_bytes, Inbox, Later};
use cm_common::protocol::{ClientRequest, ClientResponse, GetJob, HeadRequest, Reply, WaitJob, MAX_WAIT_MS};
use cm_common::Timestamp;
use std::time::{Duration, Instant};

/// More waiters than this and a new one is answered at once, as if its time were up: what a
/// user can make the head hold is bounded.
const MAX_WAITERS: usize = 10_000;

struct Waiter {
    uid: u32,
    wait: WaitJob,
    later: Later,
    until: Instant,
}

#[derive(Default)]
pub struct Waiters {
    waiting: Vec<Waiter>,
}

impl Waiters {
    /// Holds the request `inbox` handed out last, a `wait` from `uid`.
    pub fn add<E>(&mut self, inbox: &mut Inbox<HeadRequest, E>, uid: u32, wait: WaitJob) {
        let Some(later) = inbox.defer() else { return };
        let ms = if self.waiting.len() >= MAX_WAITERS { 0 } else { wait.timeout_ms.min(MAX_WAIT_MS) };
        self.waiting.push(Waiter { uid, wait, later, until: Instant::now() + Duration::from_millis(u64::from(ms)) });
    }

    /// Answers the waiters whose job has changed as they wait for, or whose time is up.
    pub fn answer<E>(&mut self, inbox: &mut Inbox<HeadRequest, E>, core: &mut HeadCore, now: Timestamp) {
        if self.waiting.is_empty() {
            return;
        }
        let clock = Instant::now();
        let mut still = Vec::with_capacity(self.waiting.len());
        for waiter in self.waiting.drain(..) {
            if !inbox.still_waiting(&waiter.later) {
                continue;
            }
            let reply: Reply<ClientResponse> = match core.wait_answer(waiter.uid, &waiter.wait, now) {
                Some(reply) => reply,
                None if clock >= waiter.until => {
                    core.handle_client(waiter.uid, ClientRequest::GetJob(GetJob { id: waiter.wait.id }), now)
                }
                None => {
                    still.push(waiter);
                    continue;
                }
            };
            inbox.reply_later(waiter.later, &body_bytes(&reply));
        }
        self.waiting = still;
    }
}
