//! Whom a job runs as on this node: the job's uid, with the primary group and supplementary
//! groups that this node's account database gives it (`getpwuid`, `getgrouplist`), as slurmd
//! does. Nothing of it comes from the request. Answers are kept a minute, so a burst of one
//! user's jobs costs one lookup; a group change reaches new jobs within that minute.

use cm_step::record::RunAs;
use nix::unistd::{getgrouplist, Gid, Uid, User};
use std::collections::HashMap;
use std::ffi::CString;
use std::time::{Duration, Instant};

const KEEP: Duration = Duration::from_secs(60);

/// Recent lookups by uid, each with when it goes stale.
#[derive(Default)]
pub struct Accounts {
    known: HashMap<u32, (Instant, Result<RunAs, String>)>,
}

impl Accounts {
    /// `uid`'s identity here, or why a job cannot run as it on `node`.
    pub fn run_as(&mut self, uid: u32, node: &str) -> Result<RunAs, String> {
        let now = Instant::now();
        if let Some((stale_at, answer)) = self.known.get(&uid) {
            if now < *stale_at {
                return answer.clone();
            }
        }
        let answer = look_up(uid, node);
        self.known.insert(uid, (now + KEEP, answer.clone()));
        answer
    }
}

fn look_up(uid: u32, node: &str) -> Result<RunAs, String> {
    let user = match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user,
        Ok(None) => {
            return Err(format!("uid {uid} has no account on {node}; add the user there (same uid on every node)"))
        }
        Err(e) => return Err(format!("cannot look up uid {uid} on {node}: {e}")),
    };
    let name =
        CString::new(user.name.as_bytes()).map_err(|_| format!("the account name of uid {uid} holds a NUL byte"))?;
    let groups =
        getgrouplist(&name, user.gid).map_err(|e| format!("cannot list the groups of {} on {node}: {e}", user.name))?;
    Ok(RunAs { uid, gid: user.gid.as_raw(), groups: groups.into_iter().map(Gid::as_raw).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_its_groups_and_an_unknown_uid_is_refused_with_the_fix() {
        let mut accounts = Accounts::default();
        let root = accounts.run_as(0, "n1").expect("root");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.groups.contains(&0));
        let err = accounts.run_as(3_999_999_999, "n1").unwrap_err();
        assert!(err.contains("no account on n1"), "{err}");
    }
}
