//! The `rbdfs` command.

fn main() {
    eprintln!("rbdfs: the command-line interface is not built yet");
    std::process::exit(2);
}
