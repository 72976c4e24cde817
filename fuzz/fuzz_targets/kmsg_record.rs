//! `/dev/kmsg` record framing: any text a read may return. A parsed record keeps the message
//! exactly as framed, and unescaping never grows a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::trace::kmsg::{parse_dump, unescape, Record};

fuzz_target!(|text: &str| {
    if let Some(r) = Record::parse(text) {
        let first = text.lines().next().expect("a record has a first line");
        let (_, message) = first.split_once(';').expect("a record has a prefix");
        assert_eq!(r.message, message, "the message is kept as framed");
        assert!(r.level <= 7, "a level is three bits: {r:?}");
        assert_eq!(r.from_kernel(), r.facility == 0);
        assert!(!r.line().contains('\n'), "a record is one line");
    }
    let records = parse_dump(text);
    assert!(records.len() <= text.lines().count());
    let plain = unescape(text);
    // Each `\xNN` (4 bytes) becomes one byte, at most three after lossy UTF-8 repair.
    assert!(
        plain.len() <= text.len() * 3,
        "{} -> {}",
        text.len(),
        plain.len()
    );
});
