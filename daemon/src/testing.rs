//! Builders for unit tests: jobs and nodes with sensible defaults, changed one field at a time.

use cm_common::job::{Job, JobSpec};
use cm_common::node::{Node, Role};
use cm_common::{JobId, NodeId, Resources, Timestamp};

/// Builds a pending job: 1 node, 1 process, 1 CPU, 100 MB, run by alice (uid 1000).
pub struct JobBuilder {
    job: Job,
}

impl JobBuilder {
    pub fn new(id: u64) -> Self {
        let spec = JobSpec { name: format!("job{id}"), workdir: "/tmp".into(), ..JobSpec::example() };
        JobBuilder { job: Job::new(JobId(id), spec, Timestamp(id), format!("token{id}")) }
    }
    pub fn nodes(mut self, n: u32) -> Self {
        self.job.spec.nodes = n;
        self
    }
    pub fn procs(mut self, n: u32) -> Self {
        self.job.spec.procs_per_node = n;
        self
    }
    pub fn cpus(mut self, n: u32) -> Self {
        self.job.spec.per_node.cpus = n;
        self
    }
    pub fn mem(mut self, mb: u64) -> Self {
        self.job.spec.per_node.memory_mb = mb;
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.job.spec.env.insert(key.into(), value.into());
        self
    }
    pub fn requeue(mut self) -> Self {
        self.job.spec.requeue = true;
        self
    }
    pub fn uid(mut self, uid: u32) -> Self {
        self.job.spec.user.uid = uid;
        self
    }
    pub fn partition(mut self, name: &str) -> Self {
        self.job.spec.partition = name.into();
        self
    }
    pub fn time_limit(mut self, secs: u64) -> Self {
        self.job.spec.time_limit_secs = Some(secs);
        self
    }
    pub fn nice(mut self, nice: i32) -> Self {
        self.job.spec.nice = nice;
        self
    }
    pub fn priority(mut self, priority: u32) -> Self {
        self.job.spec.priority = Some(priority);
        self
    }
    /// An array: `--array` as cmrun takes it.
    pub fn array(mut self, tasks: &str) -> Self {
        self.job.spec.array = Some(cm_common::array::ArraySpec::parse(tasks, 1_000_000).expect("array"));
        self
    }
    /// Dependencies: `--dependency` as cmrun takes it.
    pub fn dependency(mut self, text: &str) -> Self {
        self.job.spec.dependency = cm_common::dependency::parse(text).expect("dependency");
        self
    }
    pub fn hold(mut self) -> Self {
        self.job.spec.hold = true;
        self
    }
    pub fn name(mut self, name: &str) -> Self {
        self.job.spec.name = name.into();
        self
    }
    pub fn spec(&self) -> JobSpec {
        self.job.spec.clone()
    }
    pub fn build(self) -> Job {
        self.job
    }
}

/// Builds an Up compute node with 2 CPUs and 512 MB, as the original design's nodes.
pub struct NodeBuilder {
    node: Node,
}

impl NodeBuilder {
    pub fn new(id: &str) -> Self {
        NodeBuilder {
            node: Node::new(
                NodeId::new(id),
                Role::Compute,
                format!("tcp://{id}:5002"),
                Resources::new(2, 512),
                Timestamp(0),
            ),
        }
    }
    pub fn cpus(mut self, n: u32) -> Self {
        self.node.capacity.cpus = n;
        self
    }
    pub fn build(self) -> Node {
        self.node
    }
}
