//! The checked-in C header must equal what cbindgen generates from the current source.

#[test]
fn checked_in_header_matches_the_generated_one() {
    let generated = std::fs::read_to_string(env!("SMALLMIND_GENERATED_HEADER"))
        .expect("build.rs wrote the header");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/smallmind.h");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "include/smallmind.h is stale: run scripts/update-header and commit the result"
    );
}
