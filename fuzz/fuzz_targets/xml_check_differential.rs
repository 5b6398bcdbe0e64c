//! `xml_check` (the upload-time check of each OVF, ovf/xml_check.rs)
//! against the quick-xml based parser that lists stores
//! (`parse_ovf`, ovf/entities.rs), on the same bytes.
//!
//! "Neither rejects for the same reason what the other accepts" means,
//! precisely:
//!
//! 1. Whatever `xml_check` accepts, `parse_ovf` accepts. The check must
//!    refuse everything the parser refuses: an upload depot took must be
//!    listable. There is no rule only the parser enforces.
//! 2. Whatever `parse_ovf` accepts, `xml_check` refuses only for one of
//!    the rules only it enforces (docs/formats.md, "Reading OVFs"; the
//!    parser does not look at them, for speed or because depot reads
//!    nothing there): the syntax of names (quick-xml takes any bytes up to
//!    a space or `>` as a name), the syntax, number and uniqueness of
//!    attributes (the parser parses an element's attributes only when
//!    their text holds `&`), anything outside the root element, an XML declaration that is
//!    not at the start, unterminated comments, CDATA sections and
//!    processing instructions, and character references to characters XML
//!    does not allow. [`check_only`] lists these rules by the words of
//!    `xml_check`'s messages; any other refusal is a rule both enforce,
//!    and the two disagree on it.
#![no_main]

use depot_storage::ovf::{parse_ovf, xml_check};
use libfuzzer_sys::fuzz_target;

/// Whether `xml_check`'s reason is one of the rules only it enforces.
fn check_only(reason: &str) -> bool {
    const RULES: &[&str] = &[
        // The syntax of names (of elements, attributes, processing
        // instructions): quick-xml takes any bytes up to a space or '>'.
        "expected a name",
        "in an element name",
        // Attributes: syntax, duplicates, the cap.
        "attribute",
        "in a tag",
        "expected '='",
        // Outside the root element.
        "outside the root element",
        // The XML declaration.
        "XML declaration",
        // Markup the parser skips: comments, CDATA sections, processing
        // instructions (unterminated, or without a target).
        "unterminated comment",
        "unterminated CDATA section",
        "processing instruction",
        // Character references.
        "character XML does not allow",
    ];
    RULES.iter().any(|r| reason.contains(r))
}

fuzz_target!(|xml: &[u8]| {
    let id = "3c1e5b7a-8f0d-4e6b-a1c2-9d8e7f6a5b40".parse().unwrap();
    let checked = xml_check::check(xml);
    let parsed = parse_ovf(id, xml);
    match (&checked, &parsed) {
        (Ok(()), Err(e)) => panic!("xml_check accepts what the parser refuses: {e}"),
        (Err(reason), Ok(_)) => assert!(
            check_only(reason),
            "the parser accepts what xml_check refuses for a rule both enforce: {reason}"
        ),
        _ => {}
    }
});
