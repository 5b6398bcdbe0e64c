//! Renders docs/api.md from the catalogue and the list of differences from
//! VDSM's schema, so the reference cannot drift from the code. A test compares the file with this output; run
//! `DEPOT_UPDATE_DOCS=1 cargo test -p depot-api` to rewrite it.

use std::fmt::Write;

use crate::conformance::{DIFFERENCES, EVERY_VERB};
use crate::{methods, Code};

pub fn render_api_md() -> String {
    let mut s = String::new();
    s.push_str("# depot API reference\n\n");
    s.push_str(
        "<!-- Generated from crates/depot-api/src/catalogue.rs, conformance.rs and error.rs. \
         Do not edit: run `DEPOT_UPDATE_DOCS=1 cargo test -p depot-api`. -->\n\n",
    );
    s.push_str(
        "JSON-RPC 2.0 with named parameters, over HTTP `POST /` or a WebSocket \
         on the TLS port (default 54321) and on the local socket. See \
         docs/protocol.md for transports, limits and events.\n\n",
    );
    s.push_str("## Verbs\n\n");
    for m in methods() {
        let _ = writeln!(s, "### `{}`\n\n{}\n", m.name, m.doc);
        if m.params.is_empty() {
            s.push_str("Parameters: none.\n\n");
        } else {
            s.push_str("| parameter | type | required | meaning |\n|---|---|---|---|\n");
            for p in &m.params {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {} | {} |",
                    p.name,
                    p.ty,
                    if p.required { "yes" } else { "no" },
                    p.doc.replace('|', "\\|")
                );
            }
            s.push('\n');
        }
        let _ = writeln!(s, "Result: {}\n", m.result);
    }
    render_differences(&mut s);
    s.push_str("## Error codes\n\n");
    s.push_str(
        "Errors are `{\"code\": N, \"message\": \"<text>: <detail>\"}`. Codes \
         below 9000 are VDSM's where VDSM has the error; 9000-9999 are depot's \
         own; -326xx are JSON-RPC protocol errors.\n\n",
    );
    s.push_str("| code | name | text |\n|---|---|---|\n");
    for c in Code::ALL {
        let _ = writeln!(s, "| {} | {} | {} |", c.number(), c.name(), c.text());
    }
    s
}

/// The differences from VDSM's schema that the conformance test allows.
fn render_differences(s: &mut String) {
    s.push_str("## Differences from VDSM's schema\n\n");
    s.push_str(
        "crates/depotd/tests/conformance.rs checks every verb that VDSM also has \
         against VDSM's schema (vdsm-api.yml; the names and types are copied in \
         crates/depotd/tests/data/vdsm-api-storage.json): without a daemon, the \
         parameters' names, optionality and the values of their types; on a real \
         depotd, each verb's result (property names, JSON types, enum values), the \
         SAN verbs' in the VM tier. A verb whose schema returns nothing answers \
         `true`, as VDSM's JSON-RPC server does. These are the differences it \
         allows, each on purpose. Where VDSM itself departs from its schema \
         (\"as VDSM sends it\", \"VDSM sends it too\"), depot follows VDSM: the \
         engine reads what VDSM sends.\n\n",
    );
    s.push_str("| verb | difference | why |\n|---|---|---|\n");
    for d in DIFFERENCES {
        let verb = if d.verb == EVERY_VERB {
            "every verb with it".to_string()
        } else {
            format!("`{}`", d.verb)
        };
        let _ = writeln!(
            s,
            "| {verb} | {} | {} |",
            d.item.describe().replace('|', "\\|"),
            d.why.replace('|', "\\|")
        );
    }
    s.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_api_md_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md");
        let want = render_api_md();
        if std::env::var_os("DEPOT_UPDATE_DOCS").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/api.md is stale: run `DEPOT_UPDATE_DOCS=1 cargo test -p depot-api`"
        );
    }
}
