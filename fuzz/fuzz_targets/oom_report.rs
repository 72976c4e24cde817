//! The OOM-report line parser fed with arbitrary kernel-log lines, in order, as the tracer
//! feeds it (the task table's columns carry over from its header line).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::trace::kmsg::{OomLine, OomParser, Record};

fuzz_target!(|text: &str| {
    let mut parser = OomParser::new();
    for raw in text.lines() {
        // Fixtures are kmsg dumps; bare lines (dmesg) are fed as they are.
        let line = Record::parse(raw).map_or_else(|| raw.to_string(), |r| r.message);
        if let Some(OomLine::Task(row)) = parser.parse(&line) {
            assert!(
                line.starts_with('['),
                "a task row starts with its pid: {line:?}"
            );
            assert!(row.name.len() <= line.len() * 3);
        }
    }
});
