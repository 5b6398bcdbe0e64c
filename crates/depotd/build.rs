// The test tier as a cfg: see crates/depot-testkit/tier-build.rs.
include!("../depot-testkit/tier-build.rs");
