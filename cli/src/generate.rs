//! Shell completions and man pages, made from each tool's own definition (clap_complete,
//! clap_mangen) so that they never drift from what the tool takes:
//! `CM_GENERATE=man cmrun > cmrun.1`, `CM_GENERATE=bash cmrun > completions/cmrun`. The docker
//! image installs them.

use clap::Parser;

/// The tool's arguments, unless `CM_GENERATE` asks for its man page or completions: then those
/// go to stdout and the tool exits.
pub fn parse<A: Parser>() -> A {
    if let Some(what) = std::env::var_os("CM_GENERATE") {
        generate::<A>(&what.to_string_lossy());
    }
    A::parse()
}

fn generate<A: Parser>(what: &str) -> ! {
    let mut command = A::command();
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    if what == "man" {
        if let Err(e) = clap_mangen::Man::new(command).render(&mut out) {
            eprintln!("{name}: cannot make the man page: {e}");
            std::process::exit(1);
        }
    } else {
        let Ok(shell) = what.parse::<clap_complete::Shell>() else {
            eprintln!("{name}: CM_GENERATE={what}: give man, bash, zsh, fish, elvish or powershell");
            std::process::exit(2);
        };
        clap_complete::generate(shell, &mut command, name, &mut out);
    }
    crate::startup::write_stdout(&String::from_utf8_lossy(&out));
    std::process::exit(0)
}
