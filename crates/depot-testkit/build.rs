// The test tier as a cfg: see tier-build.rs (this crate's own root-tier
// tests use it too).
include!("tier-build.rs");
