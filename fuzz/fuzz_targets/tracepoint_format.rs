//! Tracepoint `format` files: whatever tracefs returns. A parsed format fills the eBPF layout
//! without panicking, keeps `common_*` fields apart, and has the same layout as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_common::Field;
use stress_user::trace::{format::Format, same_layout};

fuzz_target!(|text: &str| {
    let Ok(fmt) = Format::parse(text) else {
        return;
    };
    assert!(fmt.common.iter().all(|f| f.name.starts_with("common_")));
    assert!(fmt.fields.iter().all(|f| !f.name.starts_with("common_")));
    let names: Vec<&str> = fmt.fields.iter().map(|f| f.name.as_str()).collect();
    let layout: [Field; 8] = fmt.layout(&names);
    for (slot, f) in layout.iter().zip(&fmt.fields) {
        assert_eq!(
            (slot.offset, slot.size),
            (fmt.field(&f.name).map_or((0, 0), |d| (d.offset, d.size)))
        );
    }
    assert!(same_layout(&fmt, &fmt));
});
