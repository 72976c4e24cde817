//! The episode builder fed with parsed kmsg records (any facility, any timestamps) and polled
//! as time passes: it must not panic, and every episode it emits has a distinct id.
#![no_main]

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use libfuzzer_sys::fuzz_target;
use stress_user::trace::{
    episode::{EpisodeBuilder, QUIET},
    kmsg::parse_dump,
};

fuzz_target!(|text: &str| {
    // Odd numbers from the log itself size the node, as `show_mem` would.
    let swap = text.len() as u64 * 4093;
    let mut builder = EpisodeBuilder::new(swap, Some(u64::MAX - swap));
    let start = Instant::now();
    let mut ids = HashSet::new();
    let mut check = |episodes: Vec<stress_user::trace::episode::Episode>| {
        for e in episodes {
            assert!(ids.insert(e.id), "episode id {} emitted twice", e.id);
        }
    };
    let mut now = start;
    for rec in parse_dump(text) {
        // Wall time moves on (never back) at a pace the records choose, so polls land both
        // inside and after the quiet period.
        now += Duration::from_millis(rec.seq % 1500);
        builder.push_record(&rec, now);
        if rec.seq % 3 == 0 {
            check(builder.poll(now));
        }
    }
    check(builder.poll(now + QUIET * 100));
    check(builder.flush());
});
