//! The `rbdfs` command: see `rbdfs --help` and README.md.

/// The daemon allocates and frees a few small buffers per request on every
/// OSD worker thread; glibc's allocator spent about a tenth of the CPU of a
/// 4K random-write run on that, mimalloc's thread-local heaps far less.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(rbdfs::cli::main_with(std::env::args_os()));
}
