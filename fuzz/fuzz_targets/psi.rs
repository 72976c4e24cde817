//! PSI files (`memory.pressure`, `/proc/pressure/memory`): totals from any text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::cgroup::{pressure::parse_psi, PsiScope};

fuzz_target!(|text: &str| {
    if let Some(t) = parse_psi(text, PsiScope::Cgroup) {
        let some = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some("some"));
        assert!(
            some.is_some_and(|l| l.contains("total=")),
            "{t:?} from {text:?}"
        );
    }
});
