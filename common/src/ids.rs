//! Identifiers: job ids are sequential integers from 1, node ids are host names.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A job's id: sequential from 1, never reused, assigned by the head when it accepts a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(JobId(n)),
            _ => Err(format!("{s:?} is not a job id (job ids are positive integers)")),
        }
    }
}

/// A node's id: its host name unless configured otherwise. Unique within a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_parses_positive_integers_only() {
        assert_eq!("42".parse::<JobId>(), Ok(JobId(42)));
        assert!("0".parse::<JobId>().is_err());
        assert!("-3".parse::<JobId>().is_err());
        assert!("abc".parse::<JobId>().is_err());
    }
}
