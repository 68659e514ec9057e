//! The `rbdfs` command: see `rbdfs --help` and README.md.

fn main() {
    std::process::exit(rbdfs::cli::main_with(std::env::args_os()));
}
