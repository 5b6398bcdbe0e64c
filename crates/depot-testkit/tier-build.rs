// The test tier of a build, as a cfg (docs/testing.md, "Tiers").
//
// Included by the build.rs of every crate that has root-tier tests:
//
//     include!("../depot-testkit/tier-build.rs");
//
// `DEPOT_TEST_TIER=root` (or `vm`: the guest runs binaries built for the
// root tier) sets `cfg(depot_root_tier)`, so the tests marked
//
//     #[cfg_attr(not(depot_root_tier), ignore = "needs the root tier")]
//
// run; in any other build they are reported as ignored, never as passed.
// tests/run exports the variable before its first cargo call, so lint,
// build and test share one build.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(depot_root_tier)");
    println!("cargo::rerun-if-env-changed=DEPOT_TEST_TIER");
    match std::env::var("DEPOT_TEST_TIER").as_deref() {
        Ok("root") | Ok("vm") => println!("cargo::rustc-cfg=depot_root_tier"),
        Ok("unprivileged") | Ok("") | Err(_) => {}
        Ok(other) => panic!(
            "DEPOT_TEST_TIER={other:?}: expected unprivileged, root or vm (docs/testing.md)"
        ),
    }
}
