//! Renders docs/api.md from the catalogue, so the reference cannot drift
//! from the code. A test compares the file with this output; run
//! `DEPOT_UPDATE_DOCS=1 cargo test -p depot-api` to rewrite it.

use std::fmt::Write;

use crate::{methods, Code};

pub fn render_api_md() -> String {
    let mut s = String::new();
    s.push_str("# depot API reference\n\n");
    s.push_str(
        "<!-- Generated from crates/depot-api/src/catalogue.rs and error.rs. \
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
