//! The file-system helper process (see `depot_os::fsproc`), as a binary
//! of its own for depot-os's tests and benchmarks; depotd runs the same
//! code as `depotd fsproc`.

fn main() {
    std::process::exit(depot_os::fsproc::serve_stdio());
}
