//! No product function is longer than about 100 lines without a reason
//! written next to it (issue 14, item 4; docs/architecture.md, "Function
//! length").
//!
//! Product code is every `crates/*/src/**.rs` file, less `#[cfg(test)]`
//! modules and functions and `#[test]` functions (tests are long lists of
//! cases, and that is fine). A function is measured from the line of its
//! `fn` keyword to its closing brace, nested closures and functions
//! included. One longer than [`MAX_LINES`] must carry a comment
//!
//! ```text
//! // long: <why it is better in one piece>
//! ```
//!
//! among the comment and attribute lines right above its `fn` line (above
//! or below its doc comment). The test lists every offender at once, so
//! that work in parallel on several crates sees all of them.
//!
//! Files are parsed with `syn` (with span locations), so the rule sees
//! functions, not text that looks like them.

use std::path::{Path, PathBuf};

use syn::spanned::Spanned;
use syn::visit::{self, Visit};
use syn::{Attribute, Block};

/// Lines a product function may have without a `// long:` reason.
const MAX_LINES: usize = 100;

/// The comment that allows a longer function; a reason must follow.
const MARKER: &str = "// long:";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

fn is_cfg_test(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string().trim() == "test")
    })
}

fn is_test_fn(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        let segs: Vec<String> = a
            .path()
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        matches!(segs.last().map(String::as_str), Some("test")) || is_cfg_test(attrs)
    })
}

struct LongFns<'s> {
    file: &'s str,
    lines: Vec<&'s str>,
    offenders: Vec<String>,
}

impl LongFns<'_> {
    /// Whether the comment and attribute lines right above line `fn_line`
    /// (1-based; from the item's first attribute upward over comments)
    /// hold a `// long: <reason>`.
    fn has_reason(&self, item_start: usize, fn_line: usize) -> bool {
        let says = |l: &str| {
            l.trim()
                .strip_prefix(MARKER)
                .is_some_and(|why| !why.trim().is_empty())
        };
        // Between the item's first attribute (or doc line) and its `fn`.
        if (item_start..fn_line).any(|n| says(self.lines[n - 1])) {
            return true;
        }
        // Plain comments directly above the item.
        let mut n = item_start;
        while n > 1 {
            n -= 1;
            let l = self.lines[n - 1].trim();
            if !l.starts_with("//") {
                break;
            }
            if says(l) {
                return true;
            }
        }
        false
    }

    fn check(
        &mut self,
        name: &str,
        attrs: &[Attribute],
        item_span: proc_macro2::Span,
        fn_token: proc_macro2::Span,
        block: &Block,
    ) {
        if is_test_fn(attrs) {
            return;
        }
        let fn_line = fn_token.start().line;
        let end = block.span().end().line;
        let len = end + 1 - fn_line;
        if len > MAX_LINES && !self.has_reason(item_span.start().line, fn_line) {
            self.offenders.push(format!(
                "{}:{fn_line}: fn {name} has {len} lines (more than {MAX_LINES}, \
                 and no `{MARKER} <reason>` above it)",
                self.file
            ));
        }
    }
}

impl<'ast> Visit<'ast> for LongFns<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !is_cfg_test(&m.attrs) {
            visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if !is_cfg_test(&i.attrs) {
            visit::visit_item_impl(self, i);
        }
    }
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if is_test_fn(&f.attrs) {
            return;
        }
        let name = f.sig.ident.to_string();
        self.check(&name, &f.attrs, f.span(), f.sig.fn_token.span, &f.block);
        visit::visit_item_fn(self, f);
    }
    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if is_test_fn(&f.attrs) {
            return;
        }
        let name = f.sig.ident.to_string();
        self.check(&name, &f.attrs, f.span(), f.sig.fn_token.span, &f.block);
        visit::visit_impl_item_fn(self, f);
    }
    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            if !is_test_fn(&f.attrs) {
                let name = f.sig.ident.to_string();
                self.check(&name, &f.attrs, f.span(), f.sig.fn_token.span, block);
            }
        }
        visit::visit_trait_item_fn(self, f);
    }
}

/// The offenders of one file's source; `file` is its path relative to the
/// workspace (for the messages).
fn offenders(file: &str, src: &str) -> Vec<String> {
    let parsed = match syn::parse_file(src) {
        Ok(f) => f,
        Err(e) => return vec![format!("{file}: does not parse: {e}")],
    };
    let mut v = LongFns {
        file,
        lines: src.lines().collect(),
        offenders: Vec::new(),
    };
    v.visit_file(&parsed);
    v.offenders
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_product_function_is_long_without_a_reason() {
    let root = workspace();
    let mut crates: Vec<_> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("src").is_dir())
        .collect();
    crates.sort();
    let mut files = Vec::new();
    for c in &crates {
        rust_files(&c.join("src"), &mut files);
    }
    assert!(files.len() > 50, "found only {} product files", files.len());
    let mut all = Vec::new();
    for p in &files {
        let rel = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let src = std::fs::read_to_string(p).unwrap();
        all.extend(offenders(&rel, &src));
    }
    assert!(
        all.is_empty(),
        "{} product functions are longer than {MAX_LINES} lines without a reason \
         (split them, or write `{MARKER} <reason>` right above the fn):\n{}",
        all.len(),
        all.join("\n")
    );
}

/// A function of `body` lines between its signature and closing brace.
fn function(body: usize) -> String {
    let mut s = String::from("fn big() {\n");
    for i in 0..body {
        s.push_str(&format!("    let _x{i} = {i};\n"));
    }
    s.push_str("}\n");
    s
}

#[test]
fn the_checker_counts_from_fn_to_the_closing_brace() {
    // 98 body lines + 2 = 100: allowed; 99 + 2 = 101: not.
    assert!(offenders("f.rs", &function(98)).is_empty());
    let got = offenders("f.rs", &function(99));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("f.rs:1: fn big has 101 lines"),
        "{got:?}"
    );
}

#[test]
fn a_reason_above_the_fn_allows_it() {
    let long = function(150);
    let with = |above: &str| format!("{above}\n{long}");
    assert!(offenders("f.rs", &with("// long: one match over the table")).is_empty());
    assert!(offenders(
        "f.rs",
        &with("// long: one match over the table\n/// Docs.\n#[inline]")
    )
    .is_empty());
    assert!(offenders("f.rs", &with("/// Docs.\n// long: a table\n#[inline]")).is_empty());
    // No reason, an empty reason, or a marker separated from the fn: refused.
    assert_eq!(offenders("f.rs", &with("// long:")).len(), 1);
    assert_eq!(offenders("f.rs", &with("/// Docs.")).len(), 1);
    assert_eq!(
        offenders("f.rs", &with("// long: x\nconst A: u8 = 1;")).len(),
        1
    );
}

#[test]
fn methods_trait_defaults_and_nested_fns_are_measured_and_tests_are_not() {
    let body = function(120);
    let in_impl = format!("struct S;\nimpl S {{\n{body}}}\n");
    assert_eq!(offenders("f.rs", &in_impl).len(), 1);
    let in_trait = format!("trait T {{\n{body}}}\n");
    assert_eq!(offenders("f.rs", &in_trait).len(), 1);
    let nested = format!("fn outer() {{\n{body}}}\n");
    assert_eq!(offenders("f.rs", &nested).len(), 2, "outer and big");
    let tests = format!("#[cfg(test)]\nmod tests {{\n{body}}}\n#[test]\n{body}");
    assert!(offenders("f.rs", &tests).is_empty());
    let tokio = format!("#[tokio::test]\nasync {body}");
    assert!(offenders("f.rs", &tokio).is_empty());
}
