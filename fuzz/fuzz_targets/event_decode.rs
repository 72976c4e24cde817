//! Ring-buffer records: any bytes the eBPF side (or a mismatched object) could hand over. A
//! decoded event renders as JSON, as the trace sink writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::trace::Event;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(ev) = Event::decode(bytes) {
        let _ = (ev.kind.class(), ev.kind.tag());
        serde_json::to_string(&ev).expect("an event serializes");
    }
});
