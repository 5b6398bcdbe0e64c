//! `.config/nextest.toml` puts the tests that take the machine-wide
//! sanlock lock in their own test group (one at a time, without holding a
//! slot of the run while they wait for the lock). A test that takes the
//! lock but is missing from the group still works, only slower: this check
//! keeps the list whole, and free of names no test has any more.
//!
//! A test takes the lock when its body calls `SanlockDaemon::start`,
//! `NoDaemon::hold` or `SanlockHost::start` (depot_testkit::sanlock).
//! The VM tier's binaries (`crates/*/tests/vm_*.rs`) are left out: they
//! run one at a time in the guest under tests/vm/run, never under nextest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::{self, Visit};

/// The calls that take the lock, as the last two segments of their path.
const LOCK_CALLS: [[&str; 2]; 3] = [
    ["SanlockDaemon", "start"],
    ["NoDaemon", "hold"],
    ["SanlockHost", "start"],
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.ends_with("target") {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The test functions of a file whose bodies take the lock.
#[derive(Default)]
struct Finder {
    in_test: Option<String>,
    found: BTreeSet<String>,
}

impl<'ast> Visit<'ast> for Finder {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        let is_test = f.attrs.iter().any(|a| {
            let segs: Vec<String> = a
                .path()
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            segs == ["test"] || segs == ["tokio", "test"]
        });
        let outer = self.in_test.take();
        if is_test {
            self.in_test = Some(f.sig.ident.to_string());
        }
        visit::visit_item_fn(self, f);
        self.in_test = outer;
    }

    fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
        let segs: Vec<String> = p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        if let (Some(test), [.., a, b]) = (&self.in_test, segs.as_slice()) {
            if LOCK_CALLS.iter().any(|[x, y]| a == x && b == y) {
                self.found.insert(test.clone());
            }
        }
        visit::visit_expr_path(self, p);
    }
}

fn lock_taking_tests(root: &Path) -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    let mut finder = Finder::default();
    for f in files {
        let vm_tier = f.parent().is_some_and(|d| d.ends_with("tests"))
            && f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vm_"));
        if f.ends_with("tests/sanlock_group.rs") || vm_tier {
            continue;
        }
        let src = std::fs::read_to_string(&f).unwrap();
        let parsed = syn::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        finder.visit_file(&parsed);
    }
    finder.found
}

/// The names in the group's filter: each clause is `test(~NAME)`.
fn grouped(config: &str) -> BTreeSet<String> {
    config
        .split("test(~")
        .skip(1)
        .map(|rest| rest.split(')').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_sanlock_test_group_names_every_test_that_takes_the_lock() {
    let root = workspace();
    let found = lock_taking_tests(&root);
    // The scan sees the tests: an empty scan would pass any list.
    assert!(
        found.len() >= 20,
        "only {} lock-taking tests: {found:?}",
        found.len()
    );
    let config = std::fs::read_to_string(root.join(".config/nextest.toml")).unwrap();
    assert!(config.contains("sanlock = { max-threads = 1 }"), "{config}");
    let listed = grouped(&config);
    let missing: Vec<_> = found.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&found).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        ".config/nextest.toml's sanlock group: add test(~NAME) for {missing:?}, \
         remove {stale:?} (no test of that name takes the lock)"
    );
}

#[test]
fn a_test_that_takes_the_lock_is_found_and_a_helper_is_not() {
    let src = r#"
        #[tokio::test]
        async fn takes_it() { let _l = depot_testkit::sanlock::NoDaemon::hold(); }
        #[test]
        fn starts_one() { let d = SanlockDaemon::start().unwrap(); }
        #[test]
        fn does_not() { let d = Daemon::start(""); }
        fn helper() { let _l = NoDaemon::hold(); }
    "#;
    let mut finder = Finder::default();
    finder.visit_file(&syn::parse_file(src).unwrap());
    let want: BTreeSet<String> = ["takes_it", "starts_one"].map(String::from).into();
    assert_eq!(finder.found, want);
    assert_eq!(
        grouped("filter = \"\"\"\n test(~a_b) |\n test(~c)\n\"\"\""),
        ["a_b", "c"].map(String::from).into()
    );
}
