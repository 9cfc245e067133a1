//! Starting one replica: `sh -c COMMAND` as the submitting user, in the job's directory, with its
//! environment plus CM_* variables, stdout and stderr to files, in a process group of its own.
//!
//! The switch to the user happens in the child between fork and exec, before the working
//! directory is entered and the output files are created, so the user's own permissions apply
//! (a root daemon never follows a user's symlink to write somewhere the user could not).

use cm_common::job::Job;
use cm_common::NodeId;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, close, dup2, mkdir, setgid, setgroups, setuid, Gid, Uid};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Which replica to start.
pub struct ReplicaPlan<'a> {
    pub job: &'a Job,
    pub node: &'a NodeId,
    pub node_rank: usize,
    pub local_rank: u32,
    /// Switch to the job's uid/gid/groups (the daemon runs as root).
    pub switch_user: bool,
}

impl ReplicaPlan<'_> {
    pub fn rank(&self) -> u64 {
        self.node_rank as u64 * u64::from(self.job.spec.procs_per_node) + u64::from(self.local_rank)
    }

    /// The CM_* variables a replica sees.
    pub fn cm_env(&self) -> Vec<(String, String)> {
        let spec = &self.job.spec;
        let nodelist: Vec<&str> = self.job.nodes.iter().map(|n| n.node.as_str()).collect();
        vec![
            ("CM_JOB_ID".into(), self.job.id.to_string()),
            ("CM_JOB_NAME".into(), spec.name.clone()),
            ("CM_NNODES".into(), spec.nodes.to_string()),
            ("CM_NODE_RANK".into(), self.node_rank.to_string()),
            ("CM_NODENAME".into(), self.node.to_string()),
            ("CM_NPROCS_PER_NODE".into(), spec.procs_per_node.to_string()),
            ("CM_NPROCS".into(), spec.total_procs().to_string()),
            ("CM_PROC_RANK".into(), self.rank().to_string()),
            ("CM_LOCAL_RANK".into(), self.local_rank.to_string()),
            ("CM_NODELIST".into(), nodelist.join(",")),
            ("CM_SUBMIT_DIR".into(), spec.workdir.clone()),
            ("CM_RESTART_COUNT".into(), self.job.run.to_string()),
        ]
    }
}

/// Everything the child does between fork and exec, prepared before the fork.
struct ChildSetup {
    identity: Option<(Uid, Gid, Vec<Gid>)>,
    workdir: CString,
    /// Directories to create (in order) below the working directory for the output files.
    mkdirs: Vec<CString>,
    stdout: CString,
    stderr: CString,
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("the path {} contains a NUL byte", path.display()))
}

/// Parent directories of `file` strictly below `workdir`, outermost first. Files elsewhere must
/// have an existing parent, as with SLURM's -o.
fn dirs_below(workdir: &Path, file: &Path) -> Vec<PathBuf> {
    let Some(parent) = file.parent() else { return vec![] };
    let Ok(relative) = parent.strip_prefix(workdir) else { return vec![] };
    let mut dir = workdir.to_path_buf();
    relative
        .components()
        .map(|c| {
            dir.push(c);
            dir.clone()
        })
        .collect()
}

impl ChildSetup {
    /// Runs in the child after fork: only async-signal-safe system calls on prepared data.
    fn enter(&self) -> std::io::Result<()> {
        if let Some((uid, gid, groups)) = &self.identity {
            setgroups(groups)?;
            setgid(*gid)?;
            setuid(*uid)?;
        }
        chdir(self.workdir.as_c_str())?;
        for dir in &self.mkdirs {
            match mkdir(dir.as_c_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for (path, fd) in [(&self.stdout, 1), (&self.stderr, 2)] {
            let file = open(
                path.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
                Mode::from_bits_truncate(0o644),
            )?;
            dup2(file, fd)?;
            close(file)?;
        }
        Ok(())
    }
}

/// Starts the replica; the error says what could not be done, for the job's failure reason.
pub fn spawn_replica(plan: &ReplicaPlan<'_>) -> Result<Child, String> {
    let spec = &plan.job.spec;
    let (stdout, stderr) = plan.job.spec.output_paths(plan.job.id, plan.node, plan.rank());
    let workdir = Path::new(&spec.workdir);
    let mut mkdirs = dirs_below(workdir, &stdout);
    for dir in dirs_below(workdir, &stderr) {
        if !mkdirs.contains(&dir) {
            mkdirs.push(dir);
        }
    }
    let identity = plan.switch_user.then(|| {
        let mut groups: Vec<Gid> = spec.user.groups.iter().map(|&g| Gid::from_raw(g)).collect();
        if !groups.contains(&Gid::from_raw(spec.user.gid)) {
            groups.push(Gid::from_raw(spec.user.gid));
        }
        (Uid::from_raw(spec.user.uid), Gid::from_raw(spec.user.gid), groups)
    });
    let setup = ChildSetup {
        identity,
        workdir: c_path(workdir)?,
        mkdirs: mkdirs.iter().map(|d| c_path(d)).collect::<Result<_, _>>()?,
        stdout: c_path(&stdout)?,
        stderr: c_path(&stderr)?,
    };
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&spec.command)
        .env_clear()
        .envs(&spec.env)
        .envs(plan.cm_env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    spawn_with_setup(&mut command, setup).map_err(|e| {
        format!(
            "cannot start rank {} as uid {} in {} (output to {}): {e}",
            plan.rank(),
            spec.user.uid,
            spec.workdir,
            stdout.display()
        )
    })
}

#[allow(unsafe_code)]
fn spawn_with_setup(command: &mut Command, setup: ChildSetup) -> std::io::Result<Child> {
    // SAFETY: the closure runs in the forked child of a multi-threaded process, where only
    // async-signal-safe functions may be called. `ChildSetup::enter` makes only raw system calls
    // (setgroups, setgid, setuid, chdir, mkdir, open, dup2, close) on buffers allocated before
    // the fork, and allocates nothing: nix passes the prepared C strings and slices through.
    unsafe {
        command.pre_exec(move || setup.enter());
    }
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_below_the_workdir_are_created() {
        let w = Path::new("/home/a");
        assert_eq!(
            dirs_below(w, Path::new("/home/a/cmlogs/7/n.0.out")),
            vec![PathBuf::from("/home/a/cmlogs"), PathBuf::from("/home/a/cmlogs/7")]
        );
        assert!(dirs_below(w, Path::new("/home/a/out.txt")).is_empty());
        assert!(dirs_below(w, Path::new("/tmp/x/out.txt")).is_empty());
    }
}
