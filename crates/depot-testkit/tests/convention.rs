//! The tier convention (docs/testing.md, "Tiers"), checked over every Rust
//! file of the workspace, so that no test can again pass in a tier it
//! cannot run in:
//!
//! - a test that calls `require_root()` carries
//!   `#[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]`,
//!   and the call is its first statement; a test with that attribute makes
//!   the call;
//! - the same for `require_vm()` and `#[ignore = "needs the vm tier
//!   (tests/vm/run)"]`, which only the `crates/*/tests/vm_*.rs` binaries
//!   may use (tests/vm/run runs those with `--include-ignored`);
//! - every other `#[ignore]` says why;
//! - no old gate is left: no `SKIP` message, no `is_root`/`root_tier`/
//!   `vm_tier` helper, no `require_root!` macro, no `geteuid` or
//!   `DEPOT_TEST_TIER` in tests (depot-testkit alone reads the tier);
//! - a crate that uses `cfg(depot_root_tier)` has the build script that
//!   sets it and depot-testkit as a dev-dependency;
//! - tests/run never runs ignored tests (they are ignored for a reason:
//!   another tier, a child-process helper, a speed self-check).
//!
//! The files are parsed with `syn`, so the rules see attributes and calls,
//! not text that happens to look like them.

use std::path::{Path, PathBuf};

use syn::visit::{self, Visit};
use syn::{Attribute, Block, Expr, Stmt};

const ROOT_ATTR: &str = r#"cfg_attr(not(depot_root_tier), ignore = "needs the root tier")"#;
const VM_ATTR: &str = r#"ignore = "needs the vm tier (tests/vm/run)""#;
/// Helpers of the old gates, by name.
const OLD_HELPERS: &[&str] = &["is_root", "root_tier", "vm_tier"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fn attr_text(a: &Attribute) -> String {
    let meta = &a.meta;
    let text = match meta {
        syn::Meta::Path(p) => path_text(p),
        syn::Meta::List(l) => format!("{}({})", path_text(&l.path), l.tokens),
        syn::Meta::NameValue(nv) => {
            let value = match &nv.value {
                Expr::Lit(l) => match &l.lit {
                    syn::Lit::Str(s) => format!("{:?}", s.value()),
                    _ => "?".into(),
                },
                _ => "?".into(),
            };
            format!("{} = {value}", path_text(&nv.path))
        }
    };
    squash(&text)
}

fn path_text(p: &syn::Path) -> String {
    p.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

fn is_test_attr(a: &Attribute) -> bool {
    matches!(path_text(a.path()).as_str(), "test" | "tokio::test")
}

fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| attr_text(a) == "cfg(test)")
}

/// `name()` as a statement, through any path (`depot_testkit::name()`).
fn is_call_to(stmt: &Stmt, name: &str) -> bool {
    match stmt {
        Stmt::Expr(Expr::Call(c), Some(_)) => call_name(&c.func).as_deref() == Some(name),
        _ => false,
    }
}

fn call_name(func: &Expr) -> Option<String> {
    match func {
        Expr::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// The `return`s of a test's own body (not of closures, async blocks or
/// nested functions in it): a test that returns early passes without
/// testing the rest, which is how the old gates skipped.
#[derive(Default)]
struct Returns(usize);

impl<'ast> Visit<'ast> for Returns {
    fn visit_expr_return(&mut self, r: &'ast syn::ExprReturn) {
        self.0 += 1;
        visit::visit_expr_return(self, r);
    }
    fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
    fn visit_expr_async(&mut self, _: &'ast syn::ExprAsync) {}
    fn visit_item_fn(&mut self, _: &'ast syn::ItemFn) {}
}

/// The calls a function body makes by name, not looking into nested
/// functions.
#[derive(Default)]
struct Calls(Vec<String>);

impl<'ast> Visit<'ast> for Calls {
    fn visit_expr_call(&mut self, c: &'ast syn::ExprCall) {
        if let Some(n) = call_name(&c.func) {
            self.0.push(n);
        }
        visit::visit_expr_call(self, c);
    }
    fn visit_item_fn(&mut self, _: &'ast syn::ItemFn) {}
}

#[derive(Default, Debug)]
struct Report {
    violations: Vec<String>,
    files: usize,
    root_tests: usize,
    vm_tests: usize,
}

struct FileCheck<'r> {
    /// Relative to the workspace, `/`-separated.
    file: String,
    report: &'r mut Report,
    /// Inside `#[cfg(test)]` (or a file under `tests/`).
    test_code: usize,
}

impl FileCheck<'_> {
    fn in_testkit(&self) -> bool {
        self.file.starts_with("crates/depot-testkit/")
    }

    fn in_vm_binary(&self) -> bool {
        let parts: Vec<&str> = self.file.split('/').collect();
        matches!(parts.as_slice(), ["crates", _, "tests", name] if name.starts_with("vm_"))
    }

    fn flag(&mut self, what: String) {
        self.report
            .violations
            .push(format!("{}: {what}", self.file));
    }

    fn check_fn(&mut self, name: &str, attrs: &[Attribute], block: &Block, is_item: bool) {
        let texts: Vec<String> = attrs.iter().map(attr_text).collect();
        let is_test = attrs.iter().any(is_test_attr);
        let root_attr = texts.iter().any(|t| *t == squash(ROOT_ATTR));
        let vm_attr = texts.iter().any(|t| *t == squash(VM_ATTR));
        let mut calls = Calls::default();
        for s in &block.stmts {
            calls.visit_stmt(s);
        }
        let first = block.stmts.first();
        for (gate, has_attr, attr) in [
            ("require_root", root_attr, ROOT_ATTR),
            ("require_vm", vm_attr, VM_ATTR),
        ] {
            let calls_it = calls.0.iter().any(|c| c == gate);
            let starts_with_it = first.is_some_and(|s| is_call_to(s, gate));
            if calls_it && !is_test {
                self.flag(format!(
                    "fn {name} calls {gate}() but is not a test: the gate is the first \
                     line of the test itself, next to its ignore attribute"
                ));
            }
            if (calls_it || has_attr) && is_test {
                if !has_attr {
                    self.flag(format!("test {name} calls {gate}() without #[{attr}]"));
                }
                if !starts_with_it {
                    self.flag(format!(
                        "test {name} has #[{attr}]: its first statement must be {gate}()"
                    ));
                }
            }
            if has_attr && !is_test {
                self.flag(format!("fn {name} has #[{attr}] but is not a test"));
            }
        }
        if (vm_attr || calls.0.iter().any(|c| c == "require_vm")) && !self.in_vm_binary() {
            self.flag(format!(
                "VM-tier test {name} outside a crates/*/tests/vm_*.rs binary (only those \
                 run in the guest)"
            ));
        }
        if root_attr && is_test {
            self.report.root_tests += 1;
        }
        if vm_attr && is_test {
            self.report.vm_tests += 1;
        }
        if is_test {
            for t in &texts {
                if t == "ignore" {
                    self.flag(format!("test {name}: #[ignore] without a reason"));
                }
            }
            let mut returns = Returns::default();
            returns.visit_block(block);
            if returns.0 > 0 {
                self.flag(format!(
                    "test {name} returns early: a test that cannot go on fails (or is \
                     ignored in a tier that cannot run it), it does not pass"
                ));
            }
        }
        if is_item && !self.in_testkit() && OLD_HELPERS.contains(&name) {
            self.flag(format!(
                "fn {name}: an old tier gate; use depot_testkit (docs/testing.md)"
            ));
        }
    }

    fn check_literal(&mut self, value: &str) {
        if value.trim_start().starts_with("SKIP") {
            self.flag(format!(
                "a SKIP message ({value:?}): a test that cannot run here is ignored, \
                 one whose tier was asked for fails"
            ));
        }
        if value == "DEPOT_TEST_TIER" && !self.in_testkit() {
            self.flag("reads DEPOT_TEST_TIER: only depot-testkit decides the tier".into());
        }
    }

    fn check_tokens(&mut self, tokens: proc_macro2::TokenStream) {
        for tt in tokens {
            match tt {
                proc_macro2::TokenTree::Group(g) => self.check_tokens(g.stream()),
                proc_macro2::TokenTree::Literal(l) => {
                    if let Ok(syn::Lit::Str(s)) = syn::parse_str::<syn::Lit>(&l.to_string()) {
                        self.check_literal(&s.value());
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for FileCheck<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        let t = is_cfg_test(&m.attrs);
        self.test_code += usize::from(t);
        visit::visit_item_mod(self, m);
        self.test_code -= usize::from(t);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.check_fn(&f.sig.ident.to_string(), &f.attrs, &f.block, true);
        visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.check_fn(&f.sig.ident.to_string(), &f.attrs, &f.block, false);
        visit::visit_impl_item_fn(self, f);
    }

    fn visit_expr_call(&mut self, c: &'ast syn::ExprCall) {
        if self.test_code > 0 && call_name(&c.func).as_deref() == Some("geteuid") {
            self.flag("calls geteuid in a test: use depot_testkit::require_root()".into());
        }
        visit::visit_expr_call(self, c);
    }

    fn visit_lit_str(&mut self, s: &'ast syn::LitStr) {
        self.check_literal(&s.value());
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        if m.path
            .segments
            .last()
            .is_some_and(|s| s.ident == "require_root")
        {
            self.flag("the require_root! macro: use depot_testkit::require_root()".into());
        }
        self.check_tokens(m.tokens.clone());
        visit::visit_macro(self, m);
    }

    fn visit_item_macro(&mut self, m: &'ast syn::ItemMacro) {
        if m.ident.as_ref().is_some_and(|i| i == "require_root") {
            self.flag("defines a require_root! macro: use depot_testkit".into());
        }
        visit::visit_item_macro(self, m);
    }
}

/// Checks one file's source; `file` is its path relative to the workspace.
fn check_source(file: &str, src: &str, report: &mut Report) {
    let parsed = match syn::parse_file(src) {
        Ok(f) => f,
        Err(e) => {
            report
                .violations
                .push(format!("{file}: does not parse: {e}"));
            return;
        }
    };
    report.files += 1;
    let under_tests = file.split('/').nth(2) == Some("tests");
    let mut c = FileCheck {
        file: file.to_owned(),
        report,
        test_code: usize::from(under_tests),
    };
    c.visit_file(&parsed);
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// This file: its rules and its examples of what they refuse.
const SELF: &str = "crates/depot-testkit/tests/convention.rs";

fn check_workspace() -> Report {
    let root = workspace();
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    let mut report = Report::default();
    for p in &files {
        let rel = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel == SELF {
            continue;
        }
        let src = std::fs::read_to_string(p).unwrap();
        check_source(&rel, &src, &mut report);
    }
    check_crates(&root, &mut report);
    check_tests_run(&root, &mut report);
    report
}

/// A crate that uses the cfg has the build script that sets it.
fn check_crates(root: &Path, report: &mut Report) {
    let mut crates: Vec<_> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    crates.sort();
    for dir in crates {
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        let uses_cfg = files.iter().any(|f| {
            !f.ends_with("tests/convention.rs")
                && std::fs::read_to_string(f)
                    .unwrap()
                    .contains("cfg_attr(not(depot_root_tier)")
        });
        if !uses_cfg {
            continue;
        }
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let build = std::fs::read_to_string(dir.join("build.rs")).unwrap_or_default();
        if !build.contains("tier-build.rs\")") {
            report.violations.push(format!(
                "crates/{name}: has root-tier tests but no build.rs with \
                 include!(\"../depot-testkit/tier-build.rs\"): they would never run"
            ));
        }
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let dev = manifest
            .split("[dev-dependencies]")
            .nth(1)
            .map(|s| s.split("\n[").next().unwrap_or(""))
            .unwrap_or("");
        if name != "depot-testkit" && !dev.contains("depot-testkit") {
            report.violations.push(format!(
                "crates/{name}: has root-tier tests but no depot-testkit dev-dependency"
            ));
        }
    }
}

/// tests/run runs no ignored test.
fn check_tests_run(root: &Path, report: &mut Report) {
    let run = std::fs::read_to_string(root.join("tests/run")).expect("tests/run");
    check_runner_script("tests/run", &run, report);
}

fn check_runner_script(name: &str, text: &str, report: &mut Report) {
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or("");
        // Listing the ignored tests (to name them) runs nothing.
        if !(code.contains("nextest run") || code.contains("cargo test")) {
            continue;
        }
        for flag in ["--include-ignored", "--run-ignored", "--ignored"] {
            if code.contains(flag) {
                report.violations.push(format!(
                    "{name}: {flag} would run ignored tests (other tiers, child-process \
                     helpers, speed self-checks): {}",
                    line.trim()
                ));
            }
        }
    }
}

#[test]
fn the_workspace_follows_the_tier_convention() {
    let r = check_workspace();
    assert!(
        r.violations.is_empty(),
        "the tier convention (docs/testing.md) is broken:\n  {}",
        r.violations.join("\n  ")
    );
    // The scan found the workspace: a checker that reads nothing passes
    // everything.
    assert!(r.files > 100, "only {} Rust files found", r.files);
    assert!(
        r.root_tests >= 20,
        "only {} root-tier tests found",
        r.root_tests
    );
    assert!(r.vm_tests >= 15, "only {} VM-tier tests found", r.vm_tests);
}

// ---------------------------------------------------------------------------
// The checker refuses what it should
// ---------------------------------------------------------------------------

fn violations(file: &str, src: &str) -> Vec<String> {
    let mut r = Report::default();
    check_source(file, src, &mut r);
    r.violations
}

fn assert_refused(file: &str, src: &str, expect: &str) {
    let v = violations(file, src);
    assert!(
        v.iter().any(|m| m.contains(expect)),
        "expected a violation containing {expect:?} in {file}, got {v:?}\n{src}"
    );
}

#[test]
fn good_tests_pass_the_checker() {
    let src = r#"
        #[test]
        #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
        fn mounts() {
            depot_testkit::require_root();
            depot_testkit::require_program("glusterd");
        }
        #[tokio::test]
        #[ignore = "speed self-check; run with --ignored --nocapture"]
        async fn speed() {}
        fn helper() -> u32 { 4 }
    "#;
    assert_eq!(violations("crates/x/tests/a.rs", src), Vec::<String>::new());
    let vm = r#"
        #[tokio::test(flavor = "multi_thread")]
        #[ignore = "needs the vm tier (tests/vm/run)"]
        async fn logs_in() {
            depot_testkit::require_vm();
        }
    "#;
    assert_eq!(
        violations("crates/x/tests/vm_a.rs", vm),
        Vec::<String>::new()
    );
}

#[test]
fn the_checker_refuses_each_broken_rule() {
    let f = "crates/x/tests/a.rs";
    // A gate without the attribute: it would fail in the unprivileged tier.
    assert_refused(
        f,
        "#[test] fn t() { depot_testkit::require_root(); }",
        "without #[cfg_attr",
    );
    // The attribute without the gate: run as non-root, it would pass empty.
    assert_refused(
        f,
        r#"#[test] #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")] fn t() { work(); }"#,
        "first statement must be require_root()",
    );
    // The gate after other work.
    assert_refused(
        f,
        r#"#[test] #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
           fn t() { let x = 1; depot_testkit::require_root(); }"#,
        "first statement must be require_root()",
    );
    // The gate in a helper.
    assert_refused(
        f,
        "fn scenario() { depot_testkit::require_root(); }",
        "is not a test",
    );
    // A VM gate outside a vm_* binary.
    assert_refused(
        f,
        r#"#[test] #[ignore = "needs the vm tier (tests/vm/run)"] fn t() { depot_testkit::require_vm(); }"#,
        "outside a crates/*/tests/vm_*.rs binary",
    );
    assert_refused(
        "crates/x/src/lib.rs",
        r#"#[cfg(test)] mod tests { #[test] #[ignore = "needs the vm tier (tests/vm/run)"] fn t() { require_vm(); } }"#,
        "outside a crates/*/tests/vm_*.rs binary",
    );
    // An ignore without a reason.
    assert_refused(f, "#[test] #[ignore] fn t() {}", "without a reason");
    // Skips in disguise: an early return, also through let-else.
    assert_refused(
        f,
        r#"#[test] fn t() { if !have("qemu-io") { eprintln!("qemu-io missing"); return; } }"#,
        "returns early",
    );
    assert_refused(
        f,
        r#"#[test] fn t() { let Ok(d) = std::env::var("DIR") else { return; }; use_it(d); }"#,
        "returns early",
    );
    // A return inside a closure or an async block is not the test's.
    assert_eq!(
        violations(
            f,
            "#[tokio::test] async fn t() { let f = || { return 1; }; eventually(|| async { return None; }).await; }"
        ),
        Vec::<String>::new()
    );
    // The old gates, in every shape they had.
    assert_refused(
        f,
        r#"#[test] fn t() { if !is_root() { eprintln!("SKIP: needs root"); return; } }"#,
        "a SKIP message",
    );
    assert_refused(f, "fn vm_tier() -> bool { false }", "an old tier gate");
    assert_refused(
        f,
        "#[test] fn t() { require_root!(); }",
        "require_root! macro",
    );
    assert_refused(
        f,
        "macro_rules! require_root { () => {} }",
        "defines a require_root! macro",
    );
    assert_refused(
        "crates/x/src/a.rs",
        "#[cfg(test)] mod tests { #[test] fn t() { if unsafe { libc::geteuid() } != 0 { return; } } }",
        "calls geteuid",
    );
    assert_refused(
        f,
        r#"#[test] fn t() { if std::env::var("DEPOT_TEST_TIER").is_err() { return; } }"#,
        "reads DEPOT_TEST_TIER",
    );
    // geteuid in product code is not a test's business.
    assert_eq!(
        violations(
            "crates/x/src/a.rs",
            "fn f() -> bool { nix::unistd::geteuid().is_root() }"
        ),
        Vec::<String>::new()
    );
}

#[test]
fn the_runner_script_may_not_run_ignored_tests() {
    let mut r = Report::default();
    check_runner_script(
        "tests/run",
        "cargo nextest run --workspace\n# never --ignored here\n\
         cargo nextest list --workspace --run-ignored only\n",
        &mut r,
    );
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    check_runner_script("tests/run", "cargo nextest run --run-ignored all\n", &mut r);
    check_runner_script("tests/run", "cargo test -- --include-ignored\n", &mut r);
    assert_eq!(r.violations.len(), 2, "{:?}", r.violations);
}
