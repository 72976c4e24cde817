//! Sizes as users write them (`--size`, spec files): a parsed size displays as a size that
//! parses again, a percentage to the same value, and resolving never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::size::SizeSpec;

fuzz_target!(|text: &str| {
    let Ok(size) = SizeSpec::parse(text) else {
        return;
    };
    let shown = size.to_string();
    let again = SizeSpec::parse(&shown).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
    if let SizeSpec::Percent(_) = size {
        assert_eq!(again, size, "{shown:?}");
    }
    for limit in [None, Some(1), Some(4096), Some(u64::MAX)] {
        let _ = size.resolve(limit);
    }
});
