//! How a tool process starts: lean, because a tool is one process per request and its start-up
//! is most of its cost (`cmrun` runs once per job; see docs/benchmarks.md).
//!
//! Each tool's binary is `#![no_main]` (except under `cargo test`) and declares its C `main` with
//! [`tool_main!`], which calls [`run`]. That skips Rust's runtime set-up, whose dearest step on
//! Linux is glibc reading `/proc/self/maps` to find the main thread's stack for the stack-overflow
//! handler; [`run`] keeps the two parts a tool relies on (SIGPIPE ignored, the standard
//! descriptors open). A stack overflow thus ends a tool with a plain SIGSEGV instead of a message;
//! the tools recurse nowhere.
//!
//! The tools also carry the unwinder (`libgcc_eh`) in their own image instead of loading
//! `libgcc_s.so`, one shared library fewer for the loader to map, relocate and initialise at every
//! start. Together the two spare a `cmrun` start about 0.15 ms of CPU here, a sixth of it.

// Linked in whole so that it defines every `_Unwind_*` symbol before std's `-lgcc_s` is met, which
// the linker (`--as-needed`) then leaves out. Only where the unwinder is glibc's companion.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[link(name = "gcc_eh", kind = "static", modifiers = "+whole-archive,-bundle")]
extern "C" {}

/// Declares the C `main` of a tool binary, which runs the tool's `fn main()` through [`run`]. The
/// binary starts with `#![cfg_attr(not(test), no_main)]`: under `cargo test` it is built as a
/// test harness, whose own `main` must run instead.
#[macro_export]
macro_rules! tool_main {
    ($main:path) => {
        /// The process's entry, called by the C runtime; std reads the arguments itself.
        // Exporting a symbol counts as unsafe code: this is the one the C runtime calls.
        #[cfg(not(test))]
        #[allow(unsafe_code)]
        #[export_name = "main"]
        pub extern "C" fn c_main(
            _argc: ::std::ffi::c_int,
            _argv: *const *const ::std::ffi::c_char,
        ) -> ::std::ffi::c_int {
            $crate::startup::run($main)
        }
    };
}

/// `print!` for the tools: what they print goes through [`write_stdout`], so a closed pipe
/// (`cminfo --json | head`) ends the tool quietly instead of panicking.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::startup::write_stdout(&format!($($arg)*)) };
}

/// `println!` for the tools, as [`out!`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::startup::write_stdout(&format!("{}\n", format!($($arg)*))) };
}

/// Writes `text` to stdout and flushes it. A reader that has gone (a closed pipe) ends the tool
/// at once with 141, what a shell reports for a process SIGPIPE killed, and no message: the
/// reader wanted no more. Any other failure ends it with 1 and a one-line reason.
pub fn write_stdout(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        let _ = writeln!(std::io::stderr(), "cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// Runs a tool's `main` and exits: 0 when it returns, 101 (Rust's code) when it panics; a tool
/// that fails exits through `std::process::exit` itself. Exiting through std flushes stdout.
pub fn run(main: fn()) -> ! {
    ignore_sigpipe();
    open_standard_descriptors();
    let code = match std::panic::catch_unwind(main) {
        Ok(()) => 0,
        Err(_) => 101,
    };
    std::process::exit(code)
}

/// As Rust's runtime does: a write to a closed pipe or socket fails with EPIPE instead of
/// killing the process unseen.
fn ignore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: ignoring a signal installs no handler code; no other thread exists yet.
    #[allow(unsafe_code)]
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// As Rust's runtime does: a standard descriptor the caller left closed is opened on /dev/null,
/// so that the tool's own socket never takes its number and receives what the tool prints.
fn open_standard_descriptors() {
    use nix::errno::Errno;
    use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
    for fd in 0..=2 {
        if fcntl(fd, FcntlArg::F_GETFD) == Err(Errno::EBADF) {
            // Descriptors are numbered lowest first, so this takes `fd`; it stays open for good.
            let _ = open("/dev/null", OFlag::O_RDWR, nix::sys::stat::Mode::empty());
        }
    }
}
