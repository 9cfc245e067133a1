//! Finding where a compute daemon's job cgroups go, once at start-up: which cgroup version the
//! host gives the daemon, where each controller is mounted, and the daemon's own cgroup there.
//!
//! The node's job cgroups go in one directory below the daemon's own cgroup, named after the
//! node and its state directory (`cm.c1@var.lib.cm`), so several compute daemons on one host
//! (test clusters, even of the same node names) never share one.

use super::{write_file, Hierarchy, CONTROLLERS_V2};
use std::path::{Path, PathBuf};

/// One cgroup file system mount, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the hierarchy mounted here (not `/` inside some containers).
    pub root: String,
    pub mount_point: PathBuf,
    /// `true` for cgroup2.
    pub unified: bool,
    /// v1: the controllers of this hierarchy (`cpu`, `cpuacct`, ...).
    pub controllers: Vec<String>,
}

/// The cgroup mounts listed in `mountinfo` (the text of `/proc/self/mountinfo`).
pub fn mounts(mountinfo: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (left.get(3), left.get(4), right.first()) else { continue };
        let unified = match *fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if unified {
            vec![]
        } else {
            right.get(2).map_or_else(Vec::new, |options| {
                options.split(',').filter(|o| !matches!(*o, "rw" | "ro")).map(str::to_string).collect()
            })
        };
        out.push(Mount { root: unescape(root), mount_point: PathBuf::from(unescape(point)), unified, controllers });
    }
    out
}

/// mountinfo writes a space, tab, newline or backslash in a path as a three-digit octal escape.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4).and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// This process's cgroup in each hierarchy (`/proc/self/cgroup`): (controllers, path); the
/// unified hierarchy's line has no controllers.
pub fn own_cgroups(proc_cgroup: &str) -> Vec<(Vec<String>, String)> {
    proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let controllers = controllers.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some((controllers, path.to_string()))
        })
        .collect()
}

/// The directory of cgroup `path` under `mount`. A container may see its own cgroup as the
/// mount's root (its path then starts with the mount's root, which is not in the mount point).
/// `None` when the mount does not hold that cgroup: a mount made in another cgroup namespace
/// shows a root that is no prefix of the path (`/..`), and would lead somewhere else.
fn directory(mount: &Mount, path: &str) -> Option<PathBuf> {
    let relative = match mount.root.as_str() {
        "/" => path,
        root => path.strip_prefix(root).filter(|rest| rest.is_empty() || rest.starts_with('/'))?,
    };
    if relative.split('/').any(|part| part == "..") {
        return None;
    }
    Some(mount.mount_point.join(relative.trim_start_matches('/')))
}

/// The node's directory name below the daemon's cgroup, from its id and state directory (either
/// may hold any character); at most 200 bytes, the end of the state directory kept.
pub fn node_dir(node: &str, state_dir: &Path) -> String {
    let safe = |text: &str, separator: char| -> String {
        text.chars().map(|c| if c.is_ascii_alphanumeric() || "-_".contains(c) { c } else { separator }).collect()
    };
    let state = safe(state_dir.to_string_lossy().trim_start_matches('/'), '.');
    let name = format!("cm.{}@{state}", safe(node, '_'));
    match name.len().checked_sub(200) {
        Some(over) if over > 0 => format!("cm.{}", &name[over + 3..]),
        _ => name,
    }
}

/// What the host offers this process, read from `/proc/self`.
pub struct Host {
    pub mounts: Vec<Mount>,
    pub own: Vec<(Vec<String>, String)>,
}

impl Host {
    pub fn read() -> Result<Host, String> {
        let read = |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
        Ok(Host { mounts: mounts(&read("/proc/self/mountinfo")?), own: own_cgroups(&read("/proc/self/cgroup")?) })
    }

    /// This process's cgroup directory in the hierarchy of v1 `controller`.
    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        let mount = self.mounts.iter().find(|m| !m.unified && m.controllers.iter().any(|c| c == controller))?;
        let (_, path) = self.own.iter().find(|(cs, _)| cs.iter().any(|c| c == controller))?;
        directory(mount, path)
    }

    /// This process's cgroup directory in the unified hierarchy, if that hierarchy has every
    /// controller cm needs (on a hybrid host they are v1's, and it has none).
    fn v2_dir(&self) -> Option<PathBuf> {
        let mount = self.mounts.iter().find(|m| m.unified)?;
        let (_, path) = self.own.iter().find(|(cs, _)| cs.is_empty())?;
        let dir = directory(mount, path)?;
        let available = std::fs::read_to_string(mount.mount_point.join("cgroup.controllers")).ok()?;
        let available: Vec<&str> = available.split_whitespace().collect();
        CONTROLLERS_V2.iter().all(|c| available.contains(c)).then_some(dir)
    }

    /// The memory limit of this process's cgroup and its ancestors, the smallest, in bytes;
    /// `None` where there is none (or no memory controller). Read from the cgroup this process
    /// is in, wherever the file system is mounted (in a container given the host's, the host's
    /// root limit says nothing of the container's).
    pub fn memory_limit(&self) -> Option<u64> {
        let (mount_point, dir, files) = match self.v2_dir() {
            Some(dir) => (self.mounts.iter().find(|m| m.unified)?.mount_point.clone(), dir, ["memory.max"]),
            None => {
                let mount = self.mounts.iter().find(|m| !m.unified && m.controllers.iter().any(|c| c == "memory"))?;
                (mount.mount_point.clone(), self.v1_dir("memory")?, ["memory.limit_in_bytes"])
            }
        };
        let mut limit: Option<u64> = None;
        let mut at = Some(dir.as_path());
        while let Some(cgroup) = at.filter(|d| d.starts_with(&mount_point)) {
            for file in files {
                // "max" (v2) and v1's near-2^63 "unlimited" are no limit.
                let value = std::fs::read_to_string(cgroup.join(file)).ok().and_then(|v| v.trim().parse::<u64>().ok());
                if let Some(bytes) = value.filter(|b| *b < 1 << 62) {
                    limit = Some(limit.map_or(bytes, |l| l.min(bytes)));
                }
            }
            at = cgroup.parent();
        }
        limit
    }

    /// Makes the node's job cgroup directory and returns where job cgroups go; the error says
    /// why containment is not possible here.
    pub fn prepare(&self, node: &str, state_dir: &Path) -> Result<Hierarchy, String> {
        let node_dir = node_dir(node, state_dir);
        if let Some(own) = self.v2_dir() {
            return prepare_v2(&own, &node_dir);
        }
        let required = ["cpuset", "memory", "pids"];
        let missing: Vec<&str> = required.iter().copied().filter(|c| self.v1_dir(c).is_none()).collect();
        if !missing.is_empty() {
            return Err(format!(
                "neither a cgroup v2 hierarchy with the cpuset, memory and pids controllers nor v1 hierarchies of {} are mounted",
                missing.join(", ")
            ));
        }
        let made = |controller: &str| -> Result<PathBuf, String> {
            let dir = self.v1_dir(controller).unwrap_or_default().join(&node_dir);
            make_dir(&dir)?;
            Ok(dir)
        };
        let cpuset = made("cpuset")?;
        // A v1 cpuset takes no process until its CPUs and memory nodes are set: the parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = std::fs::read_to_string(cpuset.join(file)).unwrap_or_default();
            if own.trim().is_empty() {
                let parent = cpuset.parent().map(|p| p.join(file)).unwrap_or_default();
                let value =
                    std::fs::read_to_string(&parent).map_err(|e| format!("cannot read {}: {e}", parent.display()))?;
                write_file(&cpuset.join(file), value.trim())?;
            }
        }
        let optional = |controller: &str| self.v1_dir(controller).and_then(|_| made(controller).ok());
        Ok(Hierarchy::V1 {
            cpuset,
            memory: made("memory")?,
            pids: made("pids")?,
            cpuacct: optional("cpuacct"),
            devices: optional("devices"),
        })
    }
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create the cgroup {}: {e}", dir.display())),
    }
}

/// Delegates the controllers to `own/NODE_DIR`. Cgroup v2 lets a cgroup hand controllers to its
/// children only while it holds no process itself, so when the daemon's cgroup holds processes
/// (the daemon, its launcher), they move to a leaf beside the node's, `own/cm.daemons`, as
/// systemd advises for a service with `Delegate=yes`.
pub fn prepare_v2(own: &Path, node_dir: &str) -> Result<Hierarchy, String> {
    let enable: String = CONTROLLERS_V2.iter().map(|c| format!("+{c} ")).collect();
    let enable = enable.trim_end();
    if write_file(&own.join("cgroup.subtree_control"), enable).is_err() {
        let leaf = own.join("cm.daemons");
        make_dir(&leaf)?;
        let procs = std::fs::read_to_string(own.join("cgroup.procs"))
            .map_err(|e| format!("cannot read {}: {e}", own.join("cgroup.procs").display()))?;
        for pid in procs.split_whitespace() {
            // A process that has exited meanwhile cannot be moved, and need not be.
            let _ = write_file(&leaf.join("cgroup.procs"), pid);
        }
        write_file(&own.join("cgroup.subtree_control"), enable).map_err(|e| {
            format!("{e} (the daemon's cgroup must be its own: with systemd, Delegate=yes in the unit)")
        })?;
    }
    let parent = own.join(node_dir);
    make_dir(&parent)?;
    write_file(&parent.join("cgroup.subtree_control"), enable)?;
    Ok(Hierarchy::V2 { parent })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 /docker/abc /sys/fs/cgroup/cpu\\040acct rw,relatime - cgroup cgroup rw,cpuacct,cpu
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 23 0:38 / /proc rw - proc proc rw";

    #[test]
    fn mountinfo_gives_cgroup_mounts_with_their_controllers_and_roots() {
        let found = mounts(HYBRID);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].controllers, ["cpu"]);
        assert_eq!(found[1].mount_point, PathBuf::from("/sys/fs/cgroup/cpu acct"));
        assert_eq!(found[1].root, "/docker/abc");
        assert_eq!(found[1].controllers, ["cpuacct", "cpu"]);
        assert!(found[2].unified && found[2].controllers.is_empty());
    }

    #[test]
    fn a_containers_own_cgroup_is_found_below_its_mount_root() {
        let host = Host {
            mounts: mounts(HYBRID),
            own: own_cgroups("4:cpu,cpuacct:/docker/abc/x\n0::/user.slice\n1:name=systemd:/init.scope"),
        };
        assert_eq!(host.v1_dir("cpuacct"), Some(PathBuf::from("/sys/fs/cgroup/cpu acct/x")));
        assert_eq!(host.v1_dir("memory"), None);
        assert_eq!(host.own[1], (vec![], "/user.slice".to_string()));
        let elsewhere = Host { mounts: mounts(HYBRID), own: own_cgroups("4:cpu,cpuacct:/other/x") };
        assert_eq!(elsewhere.v1_dir("cpuacct"), None, "a mount of another cgroup is not ours");
        let outside =
            Mount { root: "/../..".into(), mount_point: "/sys/fs/cgroup".into(), unified: true, controllers: vec![] };
        assert_eq!(directory(&outside, "/"), None, "a mount from another cgroup namespace");
    }

    #[test]
    fn the_memory_limit_is_the_smallest_of_the_cgroup_and_its_ancestors() {
        let root = tempfile::tempdir().expect("tempdir");
        let inner = root.path().join("docker/abc");
        std::fs::create_dir_all(&inner).expect("dirs");
        std::fs::write(root.path().join("memory.limit_in_bytes"), "9223372036854771712\n").expect("write");
        std::fs::write(root.path().join("docker/memory.limit_in_bytes"), "1073741824\n").expect("write");
        std::fs::write(inner.join("memory.limit_in_bytes"), "536870912\n").expect("write");
        let mount = Mount {
            root: "/".into(),
            mount_point: root.path().into(),
            unified: false,
            controllers: vec!["memory".into()],
        };
        let host = Host { mounts: vec![mount.clone()], own: own_cgroups("5:memory:/docker/abc") };
        assert_eq!(host.memory_limit(), Some(512 << 20));
        let top = Host { mounts: vec![mount], own: own_cgroups("5:memory:/") };
        assert_eq!(top.memory_limit(), None, "the root's near-2^63 is no limit");
    }

    #[test]
    fn node_directories_hold_no_path_separator() {
        assert_eq!(node_dir("c1", Path::new("/var/lib/cm")), "cm.c1@var.lib.cm");
        assert_eq!(node_dir("../x/y z", Path::new("/tmp/a b")), "cm.___x_y_z@tmp.a.b");
        let long = node_dir("c1", Path::new(&format!("/{}/end", "d".repeat(300))));
        assert!(long.len() == 200 && long.starts_with("cm.") && long.ends_with("d.end"), "{long}");
    }

    #[test]
    fn v2_delegation_moves_the_daemons_processes_to_a_leaf_when_it_must() {
        // A directory standing in for the daemon's cgroup: here writing subtree_control works,
        // so nothing moves.
        let own = tempfile::tempdir().expect("tempdir");
        std::fs::write(own.path().join("cgroup.procs"), "1\n2\n").expect("write");
        let hierarchy = prepare_v2(own.path(), "cm.n1").expect("prepare");
        assert_eq!(hierarchy, Hierarchy::V2 { parent: own.path().join("cm.n1") });
        let enabled = std::fs::read_to_string(own.path().join("cm.n1/cgroup.subtree_control")).expect("read");
        assert_eq!(enabled, "+cpuset +memory +pids");
        assert!(!own.path().join("cm.daemons").exists());
    }
}
