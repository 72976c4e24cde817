//! The arithmetic of injection, kept pure so it is tested without root: splitting a total among
//! workers, pacing (`--ramp`, `--rate`) and the working-set feedback step.

use std::time::Duration;

/// How fast the total may grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the kernel allows.
    Fast,
    /// Linearly from 0 to the total over this long.
    Ramp(Duration),
    /// This many bytes per second.
    Rate(u64),
}

impl Pace {
    /// The most that may be held `elapsed` after the start, for a goal of `total`.
    pub fn allowed(&self, total: u64, elapsed: Duration) -> u64 {
        match *self {
            Pace::Fast => total,
            Pace::Ramp(d) if d.is_zero() => total,
            Pace::Ramp(d) => {
                let f = (elapsed.as_secs_f64() / d.as_secs_f64()).min(1.0);
                (total as f64 * f) as u64
            }
            Pace::Rate(r) => ((r as f64 * elapsed.as_secs_f64()) as u64).min(total),
        }
    }
}

/// `total` split into `n` shares that differ by at most one byte and add up to `total`.
pub fn split(total: u64, n: usize) -> Vec<u64> {
    if n == 0 {
        return Vec::new();
    }
    let base = total / n as u64;
    let extra = (total % n as u64) as usize;
    (0..n).map(|i| base + u64::from(i < extra)).collect()
}

/// One step of the working-set loop: what the injector should hold so that the cgroup's working
/// set lands on `goal`, given what it holds now and the working set measured now. Everything
/// that is not the injector (the app) is `ws - held`; the injector fills the rest. Changes
/// smaller than `deadband` are ignored so the workers do not chase noise.
pub fn working_set_step(goal: u64, ws: u64, held: u64, deadband: u64) -> u64 {
    let others = ws.saturating_sub(held);
    let want = goal.saturating_sub(others);
    if want.abs_diff(held) <= deadband {
        held
    } else {
        want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_adds_up() {
        assert_eq!(split(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(split(200 << 20, 4), vec![50 << 20; 4]);
        assert_eq!(split(5, 0), Vec::<u64>::new());
        for n in 1..9 {
            assert_eq!(split(1_000_003, n).iter().sum::<u64>(), 1_000_003);
        }
    }

    #[test]
    fn pacing() {
        let s = Duration::from_secs;
        assert_eq!(Pace::Fast.allowed(100, s(0)), 100);
        assert_eq!(Pace::Ramp(s(10)).allowed(100, s(5)), 50);
        assert_eq!(Pace::Ramp(s(10)).allowed(100, s(20)), 100);
        assert_eq!(Pace::Rate(10).allowed(100, s(3)), 30);
        assert_eq!(Pace::Rate(10).allowed(100, s(30)), 100);
    }

    #[test]
    fn working_set_backs_off_and_grows_back() {
        let mib = 1 << 20;
        // Holding 200 MiB alone: on target.
        assert_eq!(
            working_set_step(200 * mib, 200 * mib, 200 * mib, mib),
            200 * mib
        );
        // The app grew by 50 MiB: give 50 MiB back.
        assert_eq!(
            working_set_step(200 * mib, 250 * mib, 200 * mib, mib),
            150 * mib
        );
        // The app freed it again: take it back.
        assert_eq!(
            working_set_step(200 * mib, 150 * mib, 150 * mib, mib),
            200 * mib
        );
        // Noise inside the deadband is ignored.
        assert_eq!(
            working_set_step(200 * mib, 200 * mib + 1000, 200 * mib, mib),
            200 * mib
        );
        // The app alone is over the goal: hold nothing.
        assert_eq!(working_set_step(200 * mib, 300 * mib, 10 * mib, mib), 0);
    }
}
