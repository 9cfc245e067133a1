//! Starting one replica: `sh -c COMMAND` as the submitting user, in the job's directory, with its
//! environment plus CM_* variables, stdout and stderr to files, in a process group of its own.
//!
//! The child reaches the working directory and the output files as the user (its file-system ids
//! and groups are the user's), so the user's own permissions apply: a root daemon never follows a
//! user's symlink to write somewhere the user could not. It takes the user's real and effective
//! ids last, right before the exec. It borrows the supervisor's memory until then, as
//! `posix_spawn` does, rather than copying it as a `fork` would.

use crate::record::RunAs;
use cm_common::job::Job;
use cm_common::NodeId;
use nix::errno::Errno;
use nix::sched::{clone, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Which replica to start.
pub struct ReplicaPlan<'a> {
    pub job: &'a Job,
    pub node: &'a NodeId,
    pub node_rank: usize,
    pub local_rank: u32,
    /// Switch to this uid, gid and groups (the daemon runs as root).
    pub run_as: Option<&'a RunAs>,
    /// The GPUs the run may use, on a node that has any.
    pub gpus: Option<&'a [u32]>,
    /// The host CPUs the run may use (empty: not chosen by the node).
    pub cpus: &'a [u32],
    /// The `cgroup.procs` files of the run's cgroup, which the replica joins before it executes
    /// the job; empty: no containment. Without a cgroup the replica is bound to `cpus` by its
    /// affinity instead.
    pub cgroup_procs: &'a [PathBuf],
    /// The replica's end of its PMI connection, and the number of ranks in the job.
    pub pmi: Option<(RawFd, u64)>,
}

impl ReplicaPlan<'_> {
    pub fn rank(&self) -> u64 {
        self.node_rank as u64 * u64::from(self.job.spec.procs_per_node) + u64::from(self.local_rank)
    }

    /// The CM_* variables a replica sees.
    pub fn cm_env(&self) -> Vec<(String, String)> {
        let spec = &self.job.spec;
        let nodelist: Vec<&str> = self.job.nodes.iter().map(|n| n.node.as_str()).collect();
        let mut env: Vec<(String, String)> = vec![
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
            ("CM_CPUS".into(), self.job.spec.per_node.cpus.to_string()),
        ];
        if let (Some(task), Some(array)) = (&self.job.array, &spec.array) {
            env.push(("CM_ARRAY_JOB_ID".into(), task.array.to_string()));
            env.push(("CM_ARRAY_TASK_ID".into(), task.task.to_string()));
            env.push(("CM_ARRAY_TASK_COUNT".into(), array.tasks.count().to_string()));
            env.push(("CM_ARRAY_TASK_MIN".into(), array.tasks.first().unwrap_or(0).to_string()));
            env.push(("CM_ARRAY_TASK_MAX".into(), array.tasks.last().unwrap_or(0).to_string()));
        }
        if !self.cpus.is_empty() {
            env.push(("CM_JOB_CPUS".into(), crate::cgroup::cpu_list(self.cpus)));
        }
        if let Some((fd, size)) = self.pmi {
            env.push(("PMI_FD".into(), fd.to_string()));
            env.push(("PMI_RANK".into(), self.rank().to_string()));
            env.push(("PMI_SIZE".into(), size.to_string()));
        }
        if let Some(gpus) = self.gpus {
            // Empty when the job reserved none: it must not use the node's others.
            let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
            env.push(("CUDA_VISIBLE_DEVICES".into(), list.join(",")));
            env.push(("CM_JOB_GPUS".into(), list.join(",")));
        }
        env
    }
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

/// The steps of [`ChildSetup::enter`] that can fail, each with the job's failure reason.
#[derive(Clone, Copy, Debug)]
enum Step {
    Cgroup,
    Affinity,
    ProcessGroup,
    Groups,
    WorkingDirectory,
    OutputDirectory,
    OutputFiles,
    ProcessLimit,
    Identity,
    Inherit,
    Exec,
}

impl Step {
    fn reason(self) -> &'static str {
        match self {
            Step::Cgroup => "cannot join the job's cgroup",
            Step::Affinity => "cannot bind to the job's CPUs",
            Step::ProcessGroup => "cannot start a process group",
            Step::Groups => "cannot take the job's groups",
            Step::WorkingDirectory => "cannot enter the working directory",
            Step::OutputDirectory => "cannot create the output directory",
            Step::OutputFiles => "cannot open the output files",
            Step::ProcessLimit => "cannot set the user's process limit",
            Step::Identity => "cannot take the job's uid and gid",
            Step::Inherit => "cannot pass the PMI connection",
            Step::Exec => "cannot execute /bin/sh",
        }
    }
}

/// Everything the child does between clone and exec, prepared before the clone so that the child
/// allocates nothing.
struct ChildSetup {
    /// `cgroup.procs` files to write `0` to (the writer joins), before anything else.
    cgroups: Vec<CString>,
    /// The CPUs to bind to when there is no cgroup to do it.
    affinity: Option<libc::cpu_set_t>,
    identity: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    /// A descriptor the job inherits (its PMI connection): close-on-exec is cleared on it.
    inherit: Option<RawFd>,
    /// The user's limit on processes (`RLIMIT_NPROC`), set before taking the user's ids.
    max_processes: Option<libc::rlimit>,
    workdir: CString,
    /// Directories to create (in order) below the working directory for the output files.
    mkdirs: Vec<CString>,
    stdout: CString,
    stderr: CString,
    /// `execve`'s arguments: the C strings and the null-terminated pointer arrays into them.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

/// A null-terminated array of pointers into `strings`, for `execve`.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

fn c_string(what: &str, text: String) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("the job's {what} contains a NUL byte"))
}

impl ChildSetup {
    /// Runs in the child, which shares the supervisor's memory and runs on a stack of its own until
    /// it executes the job (`CLONE_VM | CLONE_VFORK`, as `posix_spawn` does): only system calls on
    /// data prepared before, no allocation, no unwinding. Returns only on failure, with the step
    /// that failed.
    fn enter(&self) -> (Step, Errno) {
        // `syscall` is variadic: each id goes as the full register width the kernel reads.
        fn long(id: u32) -> libc::c_long {
            libc::c_long::from(id)
        }
        fn check(step: Step, result: libc::c_long) -> Result<(), (Step, Errno)> {
            if result == -1 {
                Err((step, Errno::last()))
            } else {
                Ok(())
            }
        }
        let run = || -> Result<Infallible, (Step, Errno)> {
            // SAFETY (all calls below): plain system calls on C strings and arrays that outlive
            // the child, which the suspended parent does not touch meanwhile. Raw syscalls for the
            // credentials: glibc's wrappers would coordinate with the other threads of a
            // multi-threaded process, and this child is not one of them.
            #[allow(unsafe_code)]
            unsafe {
                // Into the job's cgroup first: everything the job starts is then counted,
                // capped and killed with it.
                for procs in &self.cgroups {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    check(Step::Cgroup, fd.into())?;
                    let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    check(Step::Cgroup, written as libc::c_long)?;
                }
                if let Some(set) = &self.affinity {
                    check(
                        Step::Affinity,
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set).into(),
                    )?;
                }
                // The process group of its own, which the supervisor signals as a whole.
                check(Step::ProcessGroup, libc::setpgid(0, 0).into())?;
                // The files are reached as the user (the file-system ids and groups are what the
                // kernel checks), but the user's real and effective ids come only right before
                // the exec: from then on the user may signal this child, and a stop signal before
                // the exec would hold the supervisor, which waits for it, past the job's time
                // limit and kill orders. `setfsuid` cannot fail for root, and says nothing.
                if let Some((uid, gid, groups)) = &self.identity {
                    check(
                        Step::Groups,
                        libc::syscall(libc::SYS_setgroups, groups.len() as libc::c_long, groups.as_ptr()),
                    )?;
                    libc::syscall(libc::SYS_setfsgid, long(*gid));
                    libc::syscall(libc::SYS_setfsuid, long(*uid));
                }
                check(Step::WorkingDirectory, libc::chdir(self.workdir.as_ptr()).into())?;
                for dir in &self.mkdirs {
                    if libc::mkdir(dir.as_ptr(), 0o755) == -1 && Errno::last() != Errno::EEXIST {
                        return Err((Step::OutputDirectory, Errno::last()));
                    }
                }
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                check(Step::OutputFiles, null.into())?;
                check(Step::OutputFiles, libc::dup2(null, 0).into())?;
                check(Step::OutputFiles, libc::close(null).into())?;
                // Opened without blocking: a FIFO with no reader (or a device that would wait)
                // fails the job now, instead of holding the supervisor past every stop order.
                // The job itself then writes as usual, blocking.
                for (path, fd) in [(&self.stdout, 1), (&self.stderr, 2)] {
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NONBLOCK | libc::O_CLOEXEC;
                    let file = libc::open(path.as_ptr(), flags, 0o644);
                    check(Step::OutputFiles, file.into())?;
                    check(Step::OutputFiles, libc::dup2(file, fd).into())?;
                    check(Step::OutputFiles, libc::close(file).into())?;
                    let status = libc::fcntl(fd, libc::F_GETFL);
                    check(Step::OutputFiles, status.into())?;
                    check(Step::OutputFiles, libc::fcntl(fd, libc::F_SETFL, status & !libc::O_NONBLOCK).into())?;
                }
                if let Some(fd) = self.inherit {
                    check(Step::Inherit, libc::fcntl(fd, libc::F_SETFD, 0).into())?;
                }
                // What the job inherits: SIGPIPE as the default (Rust ignores it), and no blocked
                // signal (the supervisor blocks those it reads from its signalfd). The handler
                // table is the child's own copy (no CLONE_SIGHAND).
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                // The kernel counts the user's processes against this at the exec below and at
                // every fork of the job: a job cannot start more than its user may have.
                if let Some(limit) = &self.max_processes {
                    check(Step::ProcessLimit, libc::setrlimit(libc::RLIMIT_NPROC, limit).into())?;
                }
                if let Some((uid, gid, _)) = &self.identity {
                    check(Step::Identity, libc::syscall(libc::SYS_setresgid, long(*gid), long(*gid), long(*gid)))?;
                    check(Step::Identity, libc::syscall(libc::SYS_setresuid, long(*uid), long(*uid), long(*uid)))?;
                }
                let program = self.argv.first().copied().unwrap_or(std::ptr::null());
                libc::execve(program, self.argv.as_ptr(), self.envp.as_ptr());
                Err((Step::Exec, Errno::last()))
            }
        };
        let Err(failed) = run();
        failed
    }
}

/// Starts the replica, its child running on `stack` (see [`CHILD_STACK`]; one serves every
/// replica, as each child is done with it before this returns). The error says what could not be
/// done, for the job's failure reason.
pub fn spawn_replica(plan: &ReplicaPlan<'_>, stack: &mut [u8]) -> Result<Pid, String> {
    let spec = &plan.job.spec;
    let (stdout, stderr) = plan.job.output_paths(plan.node, plan.rank());
    let workdir = Path::new(&spec.workdir);
    let mut mkdirs = dirs_below(workdir, &stdout);
    for dir in dirs_below(workdir, &stderr) {
        if !mkdirs.contains(&dir) {
            mkdirs.push(dir);
        }
    }
    let identity = plan.run_as.map(|who| {
        let mut groups: Vec<libc::gid_t> = who.groups.clone();
        if !groups.contains(&who.gid) {
            groups.push(who.gid);
        }
        (who.uid, who.gid, groups)
    });
    let args = ["/bin/sh".to_string(), "-c".to_string(), spec.command.clone()];
    let mut strings = args.into_iter().map(|a| c_string("command", a)).collect::<Result<Vec<_>, _>>()?;
    let argc = strings.len();
    // The job's environment, then the CM_* variables, which win over a submitted variable of the
    // same name.
    let cm_env = plan.cm_env();
    let env: BTreeMap<&str, &str> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(cm_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .collect();
    for (key, value) in env {
        strings.push(c_string("environment", format!("{key}={value}"))?);
    }
    let argv = pointers(&strings[..argc]);
    let envp = pointers(&strings[argc..]);
    let max_processes = identity.as_ref().and(spec.max_user_processes).map(|wanted| {
        // Never above the supervisor's own limit.
        let own =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NPROC).map_or(wanted, |(soft, _)| soft);
        let limit = wanted.min(own);
        libc::rlimit { rlim_cur: limit, rlim_max: limit }
    });
    let affinity = (plan.cgroup_procs.is_empty() && !plan.cpus.is_empty()).then(|| cpu_set(plan.cpus));
    let setup = ChildSetup {
        cgroups: plan.cgroup_procs.iter().map(|p| c_path(p)).collect::<Result<_, _>>()?,
        affinity,
        identity,
        inherit: plan.pmi.map(|(fd, _)| fd),
        max_processes,
        workdir: c_path(workdir)?,
        mkdirs: mkdirs.iter().map(|d| c_path(d)).collect::<Result<_, _>>()?,
        stdout: c_path(&stdout)?,
        stderr: c_path(&stderr)?,
        _strings: strings,
        argv,
        envp,
    };
    spawn(&setup, stack).map_err(|e| {
        format!(
            "cannot start rank {} as {} (uid {}) in {} (output to {}): {e}",
            plan.rank(),
            spec.user.name,
            spec.user.uid,
            spec.workdir,
            stdout.display()
        )
    })
}

/// The affinity mask of `cpus` (those beyond what a mask holds are left out).
fn cpu_set(cpus: &[u32]) -> libc::cpu_set_t {
    // SAFETY: `cpu_set_t` is a plain bit array, for which all zeroes is the empty set; CPU_SET
    // only sets a bit within it.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if (cpu as usize) < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(cpu as usize, &mut set);
            }
        }
        set
    }
}

/// The size of the stack the child runs on until its exec. Its frames are a few small ones; the
/// pages it does not touch are never backed (an allocation this large is a zeroed mapping of its
/// own).
pub const CHILD_STACK: usize = 256 * 1024;

/// Starts the child with `CLONE_VM | CLONE_VFORK`: it borrows the supervisor's memory instead of
/// copying it, and the supervisor waits until it has executed the job or failed. Against a
/// `fork`, this saves copying the supervisor's page tables and the copy-on-write faults on both
/// sides afterwards.
#[allow(unsafe_code)]
fn spawn(setup: &ChildSetup, stack: &mut [u8]) -> Result<Pid, String> {
    // Written by the child, which shares this memory, before it exits; read once it has.
    let failure: Cell<Option<(Step, Errno)>> = Cell::new(None);
    let child = Box::new(|| {
        failure.set(Some(setup.enter()));
        // SAFETY: ends the child at once, without running the parent's exit handlers.
        unsafe { libc::_exit(127) }
    });
    // SAFETY: the child runs on `stack`, which outlives it (the parent is suspended until it has
    // executed or exited), and does only what `ChildSetup::enter` allows. The supervisor is
    // single-threaded, and its only signal handlers are Rust's for SIGSEGV and SIGBUS, which
    // would run only on a fault.
    let pid = unsafe { clone(child, stack, CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK, Some(libc::SIGCHLD)) }
        .map_err(|e| format!("cannot create the process: {e}"))?;
    let Some((step, errno)) = failure.get() else { return Ok(pid) };
    // The child has exited: collect it here, so the supervisor never sees it as a replica.
    let _ = waitpid(pid, None);
    if let (Step::Exec, Errno::EAGAIN, Some(limit)) = (step, errno, &setup.max_processes) {
        // What the kernel says when the user already runs as many processes as they may.
        return Err(format!("the user already has {} processes, their limit (ulimit -u)", limit.rlim_cur));
    }
    Err(format!("{}: {}", step.reason(), std::io::Error::from(errno)))
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
