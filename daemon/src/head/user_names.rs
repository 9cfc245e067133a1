//! The names the head gives the users whose jobs it takes: looked up by uid in the head host's
//! account database, as slurmctld does, rather than taken from the submitting tool. The uid is
//! what counts (a job runs as its uid, gid and groups); the name is for people reading `cminfo`
//! and the logs. The tool's own guess (its `$USER`) is kept only for a uid the head has no
//! account for.
//!
//! Why here: an account lookup costs a process about 0.1 ms of CPU on the benchmark machine
//! (glibc reads nsswitch.conf, tries nscd, reads /etc/passwd), a tenth of a `cmrun` run, and
//! every run paid it. The head pays it once per user per [`KEEP`], so a slow directory (LDAP,
//! say) holds its loop up that rarely, not once per submission.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a lookup, found or not, is trusted: a user added, renamed or removed meanwhile is
/// named anew after this.
pub const KEEP: Duration = Duration::from_secs(600);

/// The longest name the head takes from a tool for a uid it cannot look up.
const MAX_HINT: usize = 64;

/// Account names by uid, as recently looked up, each with when it goes stale.
#[derive(Default)]
pub struct UserNames {
    known: HashMap<u32, (Instant, Option<String>)>,
}

impl UserNames {
    /// The name of `uid`: the account's, if the head has one for it; else `hint` (what the tool
    /// said) when it is a plausible name; else the uid itself.
    pub fn name(&mut self, uid: u32, hint: &str) -> String {
        let now = Instant::now();
        let fresh = self.known.get(&uid).is_some_and(|(stale_at, _)| now < *stale_at);
        if !fresh {
            let account = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name);
            self.known.insert(uid, (now + KEEP, account));
        }
        match self.known.get(&uid) {
            Some((_, Some(name))) => name.clone(),
            _ if plausible(hint) => hint.to_string(),
            _ => uid.to_string(),
        }
    }
}

/// The groups (names and gids) the head's account database puts `uid` in, its primary group
/// first, for partitions open to groups (`allow_groups`); none for a uid it has no account for.
pub fn groups_of(uid: u32) -> Vec<(String, u32)> {
    use nix::unistd::{getgrouplist, Group, Uid, User};
    let Some(user) = User::from_uid(Uid::from_raw(uid)).ok().flatten() else { return Vec::new() };
    let Ok(name) = std::ffi::CString::new(user.name) else { return Vec::new() };
    let gids = getgrouplist(&name, user.gid).unwrap_or_else(|_| vec![user.gid]);
    gids.into_iter()
        .map(|gid| {
            let name = Group::from_gid(gid).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name);
            (name, gid.as_raw())
        })
        .collect()
}

/// A name a tool sent that is fit to print: not empty, not too long, no control characters
/// (which could drive the terminal of whoever runs `cminfo`).
fn plausible(hint: &str) -> bool {
    !hint.is_empty() && hint.len() <= MAX_HINT && !hint.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uid no account database here has (above what Linux distributions hand out, and outside
    /// systemd's dynamic-user and `nobody` ranges).
    const NO_ACCOUNT: u32 = 3_999_999_999;

    #[test]
    fn a_known_uid_is_named_by_its_account_not_by_the_tool() {
        let mut names = UserNames::default();
        assert_eq!(names.name(0, "mallory"), "root");
        assert_eq!(names.name(0, ""), "root", "from the cache as well");
    }

    #[test]
    fn an_unknown_uid_keeps_a_printable_hint_or_is_named_by_its_number() {
        let mut names = UserNames::default();
        assert_eq!(names.name(NO_ACCOUNT, "alice"), "alice");
        assert_eq!(names.name(NO_ACCOUNT, ""), NO_ACCOUNT.to_string());
        assert_eq!(names.name(NO_ACCOUNT, "al\u{1b}[2Jice"), NO_ACCOUNT.to_string());
        assert_eq!(names.name(NO_ACCOUNT, &"a".repeat(65)), NO_ACCOUNT.to_string());
    }

    #[test]
    fn groups_come_from_the_account_database() {
        assert_eq!(groups_of(0).first(), Some(&("root".to_string(), 0)));
        assert_eq!(groups_of(NO_ACCOUNT), vec![]);
    }

    #[test]
    fn a_lookup_is_kept_for_a_while_then_made_again() {
        let mut names = UserNames::default();
        names.name(NO_ACCOUNT, "alice");
        // Pretend the account was found under another name and that answer has gone stale: it is
        // looked up again.
        names.known.insert(NO_ACCOUNT, (Instant::now(), Some("old".into())));
        assert_eq!(names.name(NO_ACCOUNT, "alice"), "alice");
        // An answer still fresh stands.
        names.known.insert(NO_ACCOUNT, (Instant::now() + KEEP, Some("kept".into())));
        assert_eq!(names.name(NO_ACCOUNT, "alice"), "kept");
    }
}
