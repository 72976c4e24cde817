//! `oomlab explain` on any bytes: a saved kernel log is a file anyone may have edited. The text
//! check refuses binary input with an offset; whatever passes it is detected, framed and
//! assembled into episodes without a panic, and a log with a format has a line count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::explain::{explain, text, Node};

fuzz_target!(|bytes: &[u8]| {
    let Ok(log) = text(bytes, "fuzz input") else {
        return;
    };
    let node = Node {
        total_swap_pages: 0,
        totalpages: None,
    };
    if let Ok(e) = explain(&log, None, node) {
        assert!(
            e.format.is_none() || e.lines > 0,
            "a format was detected in no line"
        );
    }
});
