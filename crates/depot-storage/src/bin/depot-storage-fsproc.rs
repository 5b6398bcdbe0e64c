//! The helper processes of depot-storage (see `depot_os::fsproc` and
//! `depot_storage::copy::child`), for depot-storage's own tests: an
//! integration test can only name a binary of its own package
//! (`CARGO_BIN_EXE_*`). depotd runs the same code as `depotd fsproc` and
//! `depotd copy-raw`.

use depot_storage::copy::child::{child_main, CHILD_ARG};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let code = match args.next() {
        Some(first) if first == CHILD_ARG => child_main(args.collect()),
        // The file-system helper takes no arguments.
        None => depot_os::fsproc::serve_stdio(),
        Some(other) => {
            eprintln!("depot-storage-fsproc: unknown helper {other:?}");
            2
        }
    };
    std::process::exit(code);
}
