//! The file-system helper process (see `depot_os::fsproc`), for
//! depot-storage's own tests: an integration test can only name a binary
//! of its own package (`CARGO_BIN_EXE_*`). depotd runs the same code as
//! `depotd fsproc`.

fn main() {
    std::process::exit(depot_os::fsproc::serve_stdio());
}
