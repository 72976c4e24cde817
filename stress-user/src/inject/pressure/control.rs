//! The arithmetic of `--pressure`, pure so it is tested without root: the PSI share over a
//! sliding window of `total=` readings, the controller that turns the error into the cycler's
//! pace, how much the squeeze may hold, and the run's score (time to pressure, error after
//! settling).

use std::collections::VecDeque;

use super::PsiKind;

/// `total=` readings (µs of stall since boot) and when they were taken (µs, monotonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsiReading {
    pub at_us: u64,
    pub some_us: u64,
    pub full_us: u64,
}

impl PsiReading {
    pub fn stall(&self, kind: PsiKind) -> u64 {
        match kind {
            PsiKind::Some => self.some_us,
            PsiKind::Full => self.full_us,
        }
    }
}

/// Share of wall time (percent) from `a` to `b`; `None` when no time passed.
pub fn share(a: &PsiReading, b: &PsiReading, kind: PsiKind) -> Option<f64> {
    let wall = b.at_us.saturating_sub(a.at_us);
    (wall > 0).then(|| {
        (b.stall(kind).saturating_sub(a.stall(kind)) as f64 / wall as f64 * 100.0).min(100.0)
    })
}

/// The readings of the last `window` µs (plus the one just before, so the window is covered).
#[derive(Debug, Clone)]
pub struct Window {
    span_us: u64,
    readings: VecDeque<PsiReading>,
}

impl Window {
    pub fn new(span_us: u64) -> Self {
        Window {
            span_us: span_us.max(1),
            readings: VecDeque::new(),
        }
    }

    pub fn push(&mut self, r: PsiReading) {
        self.readings.push_back(r);
        while self.readings.len() > 2 && self.readings[1].at_us + self.span_us <= r.at_us {
            self.readings.pop_front();
        }
    }

    /// The share over the window (shorter while the run is younger than it).
    pub fn share(&self, kind: PsiKind) -> Option<f64> {
        share(self.readings.front()?, self.readings.back()?, kind)
    }

    /// Seconds the window covers now.
    pub fn covered_s(&self) -> f64 {
        match (self.readings.front(), self.readings.back()) {
            (Some(a), Some(b)) => b.at_us.saturating_sub(a.at_us) as f64 / 1e6,
            _ => 0.0,
        }
    }
}

/// A PI controller on the stall share, with the plant's gain (share points per unit of pace)
/// learnt as it runs: the stall a page read causes differs by an order of magnitude between
/// machines, disks and kernels, so fixed gains either crawl or oscillate somewhere.
#[derive(Debug, Clone)]
pub struct Controller {
    target: f64,
    /// Share points per page/s, as measured (smoothed).
    gain: f64,
    integral: f64,
    pace: f64,
    max_pace: f64,
    /// The share measured with the pace at zero.
    base: f64,
}

/// Proportional and integral gains on the normalised loop (share points in, share points out).
const KP: f64 = 0.5;
const KI: f64 = 0.25;
/// The learnt gain moves this far towards each new measurement. The stall per page falls as the
/// pace rises (6.12 guest: 0.0013 points per page/s at 9,459, 0.0004 at 70,632), so a gain
/// learnt lower down always asks too little higher up; at 0.3 the 30 % ramp took 13 s.
const GAIN_SMOOTHING: f64 = 0.5;
/// What the target stalls on its own, learnt at zero pace, moves this far each second.
const BASE_SMOOTHING: f64 = 0.3;

impl Controller {
    /// `first_gain`: a guess of share points per page/s to start from.
    pub fn new(target: f64, first_gain: f64, max_pace: f64) -> Self {
        Controller {
            target,
            gain: first_gain.max(1e-9),
            integral: 0.0,
            pace: 0.0,
            max_pace,
            base: 0.0,
        }
    }

    pub fn pace(&self) -> f64 {
        self.pace
    }

    /// One second's measured share in, the next pace out. What the target stalls on its own
    /// (measured while the pace is zero) is not learnt as the pace's doing.
    pub fn step(&mut self, measured: f64, dt_s: f64) -> f64 {
        if self.pace == 0.0 {
            self.base += BASE_SMOOTHING * (measured - self.base);
        } else if self.pace > self.max_pace * 0.001 && measured - self.base > 0.2 {
            let g = (measured - self.base) / self.pace;
            if g > 2.0 * self.gain && measured > 1.5 * self.target {
                // An overshoot on a gain twice the learnt one: the plant changed. The stall per
                // page grows tenfold once the cycled pages count as thrashing (a pass round the
                // set after the start; 6.1 guest: 2.4 % at 1,736 pages a second, then 39 % at
                // 1,029). Take the new gain at once and drop the integral wound up against the
                // old one. Only upwards: one second's PSI is bursty (2.4 % then 16.5 % with 10 %
                // held), and a low second taken at once would triple the pace.
                self.gain = g;
                self.integral = 0.0;
            } else {
                self.gain += GAIN_SMOOTHING * (g - self.gain);
            }
        }
        let error = self.target - measured;
        let p = KP * error;
        // Anti-windup: the integral only moves while the output is not pinned in that
        // direction, and what it gathered on the way up is dropped once the stall passes the
        // target: wound up through a long ramp it would hold the overshoot for as long again
        // (6.12 guest: 34–35 % for 30 % asked, 15 s on end). Below the target it must still
        // gather: before the cycled pages thrash, the stall answers nothing and only the
        // integral raises the pace.
        let want_i = if error < 0.0 && self.integral > 0.0 {
            KI * error * dt_s
        } else {
            self.integral + KI * error * dt_s
        };
        let out = (self.target - self.base + p + want_i) / self.gain;
        let pinned_high = out >= self.max_pace && error > 0.0;
        let pinned_low = out <= 0.0 && error < 0.0;
        if !pinned_high && !pinned_low {
            self.integral = want_i;
        }
        self.pace =
            ((self.target - self.base + p + self.integral) / self.gain).clamp(0.0, self.max_pace);
        self.pace
    }

    /// Back off at once (an `oom` event moved): half the pace, and forget the integral.
    pub fn back_off(&mut self) {
        self.integral = self.integral.min(0.0);
        self.pace /= 2.0;
    }
}

/// What the squeeze should hold so that the unreclaimable memory in the target leaves `room`
/// under the limit: everything not page cache (`usage - file_lru`) that is not the squeeze's
/// own counts as the target's.
pub fn squeeze_size(limit: u64, usage: u64, file_lru: u64, squeeze_held: u64, room: u64) -> u64 {
    let unreclaimable = usage.saturating_sub(file_lru);
    let others = unreclaimable.saturating_sub(squeeze_held);
    limit.saturating_sub(room).saturating_sub(others)
}

/// How a run held its level: every second's share, scored at the end.
#[derive(Debug, Clone, Default)]
pub struct Score {
    /// (seconds since the start, window share, one-second share).
    pub seconds: Vec<(f64, f64, f64)>,
}

/// The score of a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scored {
    /// First time the last [`SETTLE_SPAN`] one-second shares averaged within ±20 % of the
    /// target (the end of that stretch).
    pub seconds_to_pressure: Option<f64>,
    /// Mean one-second share after settling (the share over that whole stretch).
    pub pressure_mean: Option<f64>,
    /// Mean and 95th percentile of |one-second share − target| after settling.
    pub pressure_abs_error_mean: Option<f64>,
    pub pressure_abs_error_p95: Option<f64>,
}

/// Seconds of one-second shares that must average within ±20 % of the target for the level to
/// count as reached. Not the steering window: from a cold start a 10 s window carries the ramp
/// from zero for 10 s, so "within ±20 % over the window" measured the window's memory, not the
/// controller (6.12 guest: 12.4 s by the window, with the last three seconds in band from 7 s).
/// `cargo xtask bench pressure` scores its own readings the same way.
pub const SETTLE_SPAN: usize = 3;

impl Score {
    pub fn push(&mut self, t: f64, window_share: f64, second_share: f64) {
        self.seconds.push((t, window_share, second_share));
    }

    pub fn score(&self, target: f64) -> Scored {
        let near = |s: f64| (s - target).abs() <= target * 0.2;
        let settled_at = (SETTLE_SPAN.saturating_sub(1)..self.seconds.len()).find(|&i| {
            let span = &self.seconds[i + 1 - SETTLE_SPAN..=i];
            near(span.iter().map(|&(_, _, s)| s).sum::<f64>() / SETTLE_SPAN as f64)
        });
        let after: Vec<f64> = settled_at
            .map(|i| self.seconds[i + 1..].iter().map(|&(_, _, s)| s).collect())
            .unwrap_or_default();
        let mean = (!after.is_empty()).then(|| after.iter().sum::<f64>() / after.len() as f64);
        let mut errs: Vec<f64> = after.iter().map(|s| (s - target).abs()).collect();
        errs.sort_by(f64::total_cmp);
        let p95 = (!errs.is_empty()).then(|| {
            let i = ((errs.len() as f64 * 0.95).ceil() as usize).clamp(1, errs.len()) - 1;
            errs[i]
        });
        Scored {
            seconds_to_pressure: settled_at.map(|i| self.seconds[i].0),
            pressure_mean: mean,
            pressure_abs_error_mean: (!errs.is_empty())
                .then(|| errs.iter().sum::<f64>() / errs.len() as f64),
            pressure_abs_error_p95: p95,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(at_s: f64, some_s: f64) -> PsiReading {
        PsiReading {
            at_us: (at_s * 1e6) as u64,
            some_us: (some_s * 1e6) as u64,
            full_us: (some_s * 5e5) as u64,
        }
    }

    #[test]
    fn window_share_slides() {
        let mut w = Window::new(10_000_000);
        assert_eq!(w.share(PsiKind::Some), None);
        // 20 % stall for 10 s, then none for 10 s.
        for t in 0..=10 {
            w.push(r(f64::from(t), f64::from(t) * 0.2));
        }
        assert!((w.share(PsiKind::Some).unwrap() - 20.0).abs() < 1e-6);
        assert!((w.share(PsiKind::Full).unwrap() - 10.0).abs() < 1e-6);
        for t in 11..=20 {
            w.push(r(f64::from(t), 2.0));
        }
        assert!(w.share(PsiKind::Some).unwrap().abs() < 1e-6);
        assert!((w.covered_s() - 10.0).abs() < 1e-6);
    }

    /// A plant whose stall is `k` points per page/s plus the app's own 1 point: the loop
    /// reaches the target from a first guess 10 times off, and stays there.
    #[test]
    fn controller_settles_on_a_linear_plant() {
        for (k, guess) in [(0.001, 0.01), (0.01, 0.0005), (0.0002, 0.0002)] {
            let mut c = Controller::new(10.0, guess, 1e6);
            // Two seconds at zero pace (the squeeze filling) show the app's own stall.
            c.base = 1.0;
            let mut measured = 1.0;
            let mut last = Vec::new();
            for _ in 0..40 {
                let pace = c.step(measured, 1.0);
                measured = (1.0 + k * pace).min(100.0);
                last.push(measured);
            }
            let tail = &last[30..];
            assert!(
                tail.iter().all(|m| (m - 10.0).abs() < 1.5),
                "k {k} guess {guess}: {last:?}"
            );
        }
    }

    /// The stall per page grows tenfold once the cycler has gone round its set and its pages
    /// count as thrashing (6.1 guest: 2.4 % at 1,736 pages a second, then 39 % at 1,029). A
    /// gain learnt slowly across that jump swung 100 % / 0 / 76 % / 0 / 50 % for ten seconds;
    /// taken at once, the loop is within 4 points of the target by the eighth second.
    #[test]
    fn controller_follows_the_onset_of_thrashing() {
        for k_high in [0.04, 0.01, 0.002] {
            let mut c = Controller::new(10.0, 0.01, 2e4);
            let (mut measured, mut cycled) = (0.0, 0.0);
            let mut seconds = Vec::new();
            for _ in 0..30 {
                let pace = c.step(measured, 1.0);
                let k = if cycled >= 3200.0 { k_high } else { 0.0013 };
                cycled += pace;
                measured = (k * pace).min(100.0);
                seconds.push(measured);
            }
            assert!(
                seconds[8..].iter().all(|m| (m - 10.0).abs() < 4.0),
                "k {k_high}: {seconds:?}"
            );
        }
    }

    /// A stall that saturates with the pace (its gain falls as the pace rises, as in the 6.12
    /// guest, where the old loop ramped to 30 % for 13 s on its integral and then sat at 35 %):
    /// within 2 points of the target from the tenth second on.
    #[test]
    fn controller_settles_on_a_saturating_plant() {
        for (target, top) in [(30.0, 48.0), (10.0, 45.0)] {
            let mut c = Controller::new(target, 0.01, 1e5);
            let mut measured = 0.0;
            let mut seconds = Vec::new();
            for _ in 0..30 {
                let pace = c.step(measured, 1.0);
                measured = top * (1.0 - (-pace.min(40_000.0) / 30_000.0).exp());
                seconds.push(measured);
            }
            assert!(
                seconds[10..].iter().all(|m| (m - target).abs() < 2.0),
                "{target}: {seconds:?}"
            );
        }
    }

    #[test]
    fn controller_stops_at_zero_and_at_max() {
        let mut c = Controller::new(5.0, 0.01, 100.0);
        // The target stalls more than asked on its own: nothing to add.
        for _ in 0..5 {
            assert_eq!(c.step(30.0, 1.0), 0.0);
        }
        // Out of reach: pinned at the maximum, the integral does not wind up.
        let mut c = Controller::new(50.0, 0.01, 100.0);
        for _ in 0..20 {
            c.step(0.0, 1.0);
        }
        assert_eq!(c.pace(), 100.0);
        assert!(c.integral < 100.0);
        c.back_off();
        assert_eq!(c.pace(), 50.0);
    }

    #[test]
    fn squeeze_leaves_the_room() {
        let mib = 1 << 20;
        // Limit 256 MiB, the app holds 40 MiB anon, 30 MiB of page cache, nothing squeezed yet.
        assert_eq!(
            squeeze_size(256 * mib, 70 * mib, 30 * mib, 0, 32 * mib),
            184 * mib
        );
        // Squeezing 184 MiB: same answer (its own memory is not the app's).
        assert_eq!(
            squeeze_size(256 * mib, 250 * mib, 26 * mib, 184 * mib, 32 * mib),
            184 * mib
        );
        // The app grew by 20 MiB: give it back.
        assert_eq!(
            squeeze_size(256 * mib, 250 * mib, 6 * mib, 184 * mib, 32 * mib),
            164 * mib
        );
        assert_eq!(squeeze_size(64 * mib, 100 * mib, 0, 0, 32 * mib), 0);
    }

    #[test]
    fn score_after_settling() {
        let mut s = Score::default();
        for (t, w, x) in [
            (1.0, 2.0, 2.0),
            (2.0, 7.0, 12.0),
            (3.0, 9.0, 12.0),
            (4.0, 10.0, 8.0),
            (5.0, 10.0, 10.0),
        ] {
            s.push(t, w, x);
        }
        // Seconds 1–3 average 8.7 %: in band at 3 s, and what follows is "after settling".
        let sc = s.score(10.0);
        assert_eq!(sc.seconds_to_pressure, Some(3.0));
        assert_eq!(sc.pressure_mean, Some(9.0));
        assert_eq!(sc.pressure_abs_error_mean, Some(1.0));
        assert_eq!(sc.pressure_abs_error_p95, Some(2.0));
        assert_eq!(Score::default().score(10.0).seconds_to_pressure, None);
        // Two seconds are no stretch, and a window that already holds the level (after an
        // overshoot) does not count while the last seconds are out of band.
        let mut short = Score::default();
        short.push(1.0, 10.0, 10.0);
        short.push(2.0, 10.0, 10.0);
        assert_eq!(short.score(10.0).seconds_to_pressure, None);
        let mut swing = Score::default();
        for (t, x) in [(1.0, 40.0), (2.0, 0.0), (3.0, 0.0), (4.0, 5.0), (5.0, 11.0)] {
            swing.push(t, 10.0, x);
        }
        assert_eq!(swing.score(10.0).seconds_to_pressure, None);
        swing.push(6.0, 10.0, 12.0);
        assert_eq!(swing.score(10.0).seconds_to_pressure, Some(6.0));
    }
}
