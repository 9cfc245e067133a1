//! Links libmunge statically (Debian's `libmunge-dev`), found through pkg-config.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let libdir = std::process::Command::new("pkg-config")
        .args(["--variable=libdir", "munge"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
    let Some(libdir) = libdir else {
        panic!("libmunge was not found: install it (Debian: apt-get install libmunge-dev pkg-config)");
    };
    println!("cargo:rustc-link-search=native={libdir}");
    println!("cargo:rustc-link-lib=static=munge");
}
