//! Sizes as users write them: `200MiB`, `1.5GiB`, `500MB`, `4096`, or `NN%` of a cgroup's limit.
//! Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB) of 1000.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    /// Percent of the target cgroup's memory limit (not of node RAM).
    Percent(f64),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SizeError {
    #[error("invalid size {0:?}: expected a number with an optional unit (B, KiB, MiB, GiB, TiB, KB, MB, GB) or NN%, e.g. 200MiB, 1.5GiB, 25%")]
    Invalid(String),
    #[error("size {0:?} is zero; give a positive size")]
    Zero(String),
    #[error("size {0:?} is a percentage, but the target cgroup has no memory limit; give an absolute size")]
    PercentOfUnlimited(String),
    #[error("percentage {0:?} must be above 0 and at most 1000%")]
    PercentRange(String),
}

impl SizeSpec {
    pub fn parse(text: &str) -> Result<Self, SizeError> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| SizeError::Invalid(text.into()))?;
            if !(v > 0.0 && v <= 1000.0) {
                return Err(SizeError::PercentRange(text.into()));
            }
            return Ok(SizeSpec::Percent(v));
        }
        if t.starts_with('-') || significant_digits(t) > MAX_SIGNIFICANT_DIGITS {
            return Err(SizeError::Invalid(text.into()));
        }
        let bytes = parse_size::parse_size(t).map_err(|_| SizeError::Invalid(text.into()))?;
        if bytes == 0 {
            return Err(SizeError::Zero(text.into()));
        }
        Ok(SizeSpec::Bytes(bytes))
    }

    /// Bytes, given the target's limit (`None` = unlimited).
    pub fn resolve(&self, limit: Option<u64>) -> Result<u64, SizeError> {
        match *self {
            SizeSpec::Bytes(b) => Ok(b),
            SizeSpec::Percent(p) => {
                let limit = limit.ok_or_else(|| SizeError::PercentOfUnlimited(self.to_string()))?;
                Ok((limit as f64 * p / 100.0).round() as u64)
            }
        }
    }
}

/// The digits of `u64::MAX`: parse-size 1.1 rounds on the first digit past them with an
/// unchecked `+ 1`, which wraps (or panics with overflow checks) when the digits so far spell
/// `u64::MAX`, as in `18446744073709551.6159`. No real size needs more.
const MAX_SIGNIFICANT_DIGITS: usize = 20;

/// Digits from the first non-zero one on (leading zeros say nothing).
fn significant_digits(t: &str) -> usize {
    t.bytes()
        .skip_while(|b| !matches!(b, b'1'..=b'9'))
        .filter(u8::is_ascii_digit)
        .count()
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Bytes(b) => write!(f, "{}", human(*b)),
            SizeSpec::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for SizeSpec {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SizeSpec::parse(s)
    }
}

/// Binary units, one decimal: `200.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let b = |s| SizeSpec::parse(s).expect(s);
        assert_eq!(b("4096"), SizeSpec::Bytes(4096));
        assert_eq!(b("512B"), SizeSpec::Bytes(512));
        assert_eq!(b("200MiB"), SizeSpec::Bytes(200 << 20));
        assert_eq!(b("1.5GiB"), SizeSpec::Bytes(3 << 29));
        assert_eq!(b("2TiB"), SizeSpec::Bytes(2 << 40));
        assert_eq!(b("500MB"), SizeSpec::Bytes(500_000_000));
        assert_eq!(b("1KB"), SizeSpec::Bytes(1000));
        assert_eq!(b("64 KiB"), SizeSpec::Bytes(65536));
        assert_eq!(b("25%"), SizeSpec::Percent(25.0));
    }

    #[test]
    fn more_digits_than_u64_max_are_refused() {
        // Found by the `size` fuzz target: parse-size overflowed on the 21st digit.
        let text = "018446744073709551.61599001";
        assert_eq!(SizeSpec::parse(text), Err(SizeError::Invalid(text.into())));
        assert_eq!(
            SizeSpec::parse("18446744073709551615"),
            Ok(SizeSpec::Bytes(u64::MAX))
        );
        assert_eq!(
            SizeSpec::parse("0000000000000000000000001KiB"),
            Ok(SizeSpec::Bytes(1024))
        );
    }

    #[test]
    fn bad_input_is_named() {
        for bad in ["", "abc", "-5MiB", "12XB", "%", "-3%"] {
            let err = SizeSpec::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(SizeSpec::parse("0MiB"), Err(SizeError::Zero("0MiB".into())));
        assert!(matches!(
            SizeSpec::parse("0%"),
            Err(SizeError::PercentRange(_))
        ));
    }

    #[test]
    fn percent_of_limit() {
        let p = SizeSpec::parse("40%").expect("40%");
        assert_eq!(p.resolve(Some(500 << 20)), Ok(200 << 20));
        assert!(matches!(
            p.resolve(None),
            Err(SizeError::PercentOfUnlimited(_))
        ));
        assert_eq!(SizeSpec::Bytes(7).resolve(None), Ok(7));
    }

    #[test]
    fn human_readable() {
        assert_eq!(human(200 << 20), "200.0 MiB");
        assert_eq!(human(1000), "1000 B");
    }
}
