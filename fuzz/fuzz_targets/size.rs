//! Sizes as users write them (`--size`, spec files): a parsed size displays as a size that
//! parses again (below 1 EiB), a percentage to the same value, and resolving never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::size::SizeSpec;

fuzz_target!(|text: &str| {
    let Ok(size) = SizeSpec::parse(text) else {
        return;
    };
    let shown = size.to_string();
    match size {
        SizeSpec::Percent(_) => assert_eq!(SizeSpec::parse(&shown), Ok(size), "{shown:?}"),
        // The display rounds to one decimal: near u64::MAX it names a size past it
        // ("16777216.0 TiB"), so the round trip holds below 1 EiB only.
        SizeSpec::Bytes(b) if b < 1 << 60 => {
            let again = SizeSpec::parse(&shown);
            assert!(again.is_ok(), "{shown:?}: {again:?}");
        }
        SizeSpec::Bytes(_) => {}
    }
    for limit in [None, Some(1), Some(4096), Some(u64::MAX)] {
        let _ = size.resolve(limit);
    }
});
