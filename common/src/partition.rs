//! Partitions: named groups of nodes with limits of their own, as SLURM's. A job runs in one
//! partition, on its nodes only; a node may be in several. Defined in `config.yaml`; without
//! any, one partition `main` holds every node and limits nothing.

use crate::timelimit::{format_time_limit, parse_time_limit};
use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The most a nice value may lower (or an operator's raise) a job's priority.
pub const MAX_NICE: i32 = 10_000;

/// One partition, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Partition {
    /// What `cmrun -P NAME` asks for.
    pub name: String,
    /// Its nodes: ids or shell patterns (`c*`, `gpu[0-3]`, `node-?`).
    pub nodes: Vec<String>,
    /// Jobs that name no partition go to the default one: the one marked so, else the first.
    pub default: bool,
    /// Added to the priority of every job in it, so a partition's jobs go before another's.
    pub priority: u32,
    /// The longest time limit a job may have (`[D-]HH:MM:SS`, minutes, ...); "0": none.
    pub max_time: String,
    /// The time limit of a job that gives none; "0": `max_time`. The job is killed when it
    /// runs out, as with a limit it gave, and backfill plans with it.
    pub default_time: String,
    /// The most nodes one job may ask for; null: as many as the partition has.
    pub max_nodes: Option<u32>,
    /// The most jobs one user may have running in it at once; the rest wait (QueueLimit).
    pub max_running_per_user: Option<u32>,
    /// Users (names or uids) who may submit to it; empty: everyone. Root always may.
    pub allow_users: Vec<String>,
    /// Groups (names or gids) whose members may submit to it; empty: no group restriction.
    /// With both lists set, being in either is enough.
    pub allow_groups: Vec<String>,
}

impl Default for Partition {
    fn default() -> Self {
        Partition {
            name: "main".to_string(),
            nodes: vec!["*".to_string()],
            default: false,
            priority: 0,
            max_time: "0".to_string(),
            default_time: "0".to_string(),
            max_nodes: None,
            max_running_per_user: None,
            allow_users: Vec::new(),
            allow_groups: Vec::new(),
        }
    }
}

impl Partition {
    /// The partition a cluster has when none is configured: every node, no limit.
    pub fn everything() -> Partition {
        Partition { default: true, ..Partition::default() }
    }

    pub fn max_time(&self) -> Option<Duration> {
        parse_time_limit(&self.max_time).ok().flatten()
    }

    /// The time limit a job without one gets here.
    pub fn default_time(&self) -> Option<Duration> {
        parse_time_limit(&self.default_time).ok().flatten().or_else(|| self.max_time())
    }

    /// Whether the user (`uid`, named `name`, in groups `groups` by name and gid) may submit here.
    pub fn allows(&self, uid: u32, name: &str, groups: &[(String, u32)]) -> bool {
        if uid == 0 || (self.allow_users.is_empty() && self.allow_groups.is_empty()) {
            return true;
        }
        let user = self.allow_users.iter().any(|u| u == name || *u == uid.to_string());
        let group =
            self.allow_groups.iter().any(|g| groups.iter().any(|(group, gid)| g == group || *g == gid.to_string()));
        user || group
    }

    fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("partition name {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"));
        }
        if self.nodes.is_empty() {
            return Err(format!("partition {name} has no nodes: give ids or patterns, e.g. nodes: [\"c*\"]"));
        }
        for pattern in &self.nodes {
            glob::Pattern::new(pattern).map_err(|e| format!("partition {name}: node pattern {pattern:?}: {e}"))?;
        }
        for (field, value) in [("max_time", &self.max_time), ("default_time", &self.default_time)] {
            parse_time_limit(value).map_err(|e| format!("partition {name}: {field}: {e}"))?;
        }
        if let (Some(default), Some(max)) = (parse_time_limit(&self.default_time).ok().flatten(), self.max_time()) {
            if default > max {
                return Err(format!("partition {name}: default_time is longer than max_time"));
            }
        }
        if self.max_nodes == Some(0) || self.max_running_per_user == Some(0) {
            return Err(format!("partition {name}: max_nodes and max_running_per_user must be more than zero"));
        }
        if let Some(blank) = self
            .allow_users
            .iter()
            .chain(&self.allow_groups)
            .find(|v| v.trim().is_empty() || v.contains(char::is_whitespace))
        {
            return Err(format!("partition {name}: allow_users and allow_groups take names or ids, not {blank:?}"));
        }
        Ok(())
    }
}

/// A partition made ready to be checked many times a second: its node patterns compiled and
/// its times parsed.
#[derive(Debug, Clone)]
pub struct Rules {
    pub partition: Partition,
    patterns: Vec<glob::Pattern>,
    max_time: Option<Duration>,
    default_time: Option<Duration>,
}

impl Rules {
    pub fn new(partition: Partition) -> Rules {
        Rules {
            patterns: partition.nodes.iter().filter_map(|p| glob::Pattern::new(p).ok()).collect(),
            max_time: partition.max_time(),
            default_time: partition.default_time(),
            partition,
        }
    }

    /// Whether node `id` is in this partition.
    pub fn has_node(&self, id: &NodeId) -> bool {
        self.patterns.iter().any(|p| p.matches(id.as_str()))
    }

    /// The time limit a job without one gets here.
    pub fn default_time(&self) -> Option<Duration> {
        self.default_time
    }

    /// Why a job of `nodes` nodes and limit `time_limit` may not run here, if it may not.
    pub fn refuses(&self, nodes: u32, time_limit: Option<Duration>) -> Option<String> {
        if let Some(max) = self.partition.max_nodes.filter(|&max| nodes > max) {
            return Some(format!(
                "partition {} takes jobs of at most {max} node(s); this one asks for {nodes}",
                self.partition.name
            ));
        }
        let max = self.max_time?;
        match time_limit {
            Some(limit) if limit <= max => None,
            limit => Some(format!(
                "partition {} takes jobs with a time limit of at most {}; this one has {} (cmrun -t)",
                self.partition.name,
                format_time_limit(Some(max)),
                format_time_limit(limit)
            )),
        }
    }
}

/// Checks a configuration's partitions: at least one, valid, distinct names, at most one default.
pub fn validate(partitions: &[Partition]) -> Result<(), String> {
    if partitions.is_empty() {
        return Err("partitions: give at least one (or leave the setting out: one partition of every node)".into());
    }
    for (i, p) in partitions.iter().enumerate() {
        p.validate()?;
        if partitions[..i].iter().any(|q| q.name == p.name) {
            return Err(format!("partition {} is defined twice", p.name));
        }
    }
    if partitions.iter().filter(|p| p.default).count() > 1 {
        return Err("more than one partition says default: true".into());
    }
    Ok(())
}

/// The default partition: the one marked so, else the first.
pub fn default_partition(partitions: &[Partition]) -> Option<&Partition> {
    partitions.iter().find(|p| p.default).or_else(|| partitions.first())
}

/// A partition as the tools see it: its settings, and the nodes of the cluster now in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub partition: Partition,
    /// Whether jobs that name no partition go here.
    pub is_default: bool,
    pub nodes: Vec<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(yaml: &str) -> Partition {
        serde_yaml_ng::from_str(yaml).expect("partition")
    }

    #[test]
    fn nodes_match_by_id_or_pattern() {
        let p = Rules::new(partition("name: gpu\nnodes: [\"g[0-3]\", big, \"c?\"]\n"));
        for (id, member) in [("g0", true), ("g3", true), ("g4", false), ("big", true), ("c1", true), ("c12", false)] {
            assert_eq!(p.has_node(&NodeId::new(id)), member, "{id}");
        }
        assert!(Rules::new(Partition::everything()).has_node(&NodeId::new("anything-at-all")));
    }

    #[test]
    fn limits_say_which_and_by_how_much() {
        let p = Rules::new(partition("name: short\nnodes: [\"*\"]\nmax_time: \"1:00:00\"\nmax_nodes: 2\n"));
        assert_eq!(p.refuses(2, Some(Duration::from_secs(3600))), None);
        let err = p.refuses(3, None).expect("too many nodes");
        assert!(err.contains("at most 2 node(s)") && err.contains("asks for 3"), "{err}");
        let err = p.refuses(1, Some(Duration::from_secs(3601))).expect("too long");
        assert!(err.contains("at most 01:00:00") && err.contains("01:00:01"), "{err}");
        assert!(p.refuses(1, None).expect("no limit is over the max").contains("UNLIMITED"));
        assert_eq!(p.default_time(), Some(Duration::from_secs(3600)), "no default_time: max_time");
        let p = partition("name: s\nmax_time: 60\ndefault_time: 10\n");
        assert_eq!(p.default_time(), Some(Duration::from_secs(600)), "minutes, as cmrun -t");
        assert_eq!(Rules::new(Partition::everything()).refuses(1000, None), None);
    }

    #[test]
    fn access_by_user_or_group_and_root_always() {
        let p = partition("name: p\nallow_users: [alice, \"1002\"]\nallow_groups: [physics]\n");
        assert!(p.allows(1000, "alice", &[]));
        assert!(p.allows(1002, "carol", &[]), "by uid");
        assert!(p.allows(1001, "bob", &[("physics".into(), 50)]), "by group");
        assert!(!p.allows(1001, "bob", &[("chemistry".into(), 51)]));
        assert!(p.allows(0, "root", &[]));
        assert!(Partition::everything().allows(1001, "bob", &[]));
    }

    #[test]
    fn bad_partitions_are_refused_with_a_reason() {
        let check = |yaml: &str| validate(&serde_yaml_ng::from_str::<Vec<Partition>>(yaml).expect("yaml"));
        assert!(check("[{name: a}, {name: b, default: true}]").is_ok());
        assert!(check("[]").unwrap_err().contains("at least one"));
        assert!(check("[{name: a}, {name: a}]").unwrap_err().contains("twice"));
        assert!(check("[{name: a, default: true}, {name: b, default: true}]").unwrap_err().contains("more than one"));
        assert!(check("[{name: \"a b\"}]").unwrap_err().contains("letters"));
        assert!(check("[{name: a, nodes: [\"[\"]}]").unwrap_err().contains("pattern"));
        assert!(check("[{name: a, max_time: soon}]").unwrap_err().contains("max_time"));
        assert!(check("[{name: a, max_time: 10, default_time: 20}]").unwrap_err().contains("longer"));
        assert!(check("[{name: a, max_nodes: 0}]").unwrap_err().contains("more than zero"));
        assert!(check("[{name: a, allow_users: [\" \"]}]").unwrap_err().contains("names or ids"));
        let two: Vec<Partition> = serde_yaml_ng::from_str("[{name: a}, {name: b}]").expect("yaml");
        assert_eq!(default_partition(&two).map(|p| p.name.as_str()), Some("a"), "the first, when none says");
    }
}
