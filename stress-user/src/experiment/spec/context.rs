//! Where a problem is: byte spans turned into `file:line:column` errors, and the value parsers
//! (sizes, durations, adj) that report a bad value at its own span.

use std::{ops::Range, time::Duration};

use toml::Spanned;

use super::model::Located;
use crate::size::SizeSpec;

/// A problem in an experiment file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let upto = &text[..offset.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let column = upto
        .rfind('\n')
        .map_or(upto.len(), |nl| upto.len() - nl - 1)
        + 1;
    (line, column)
}

/// The file being checked: its name and text for errors, and the divisor of absolute sizes.
pub(super) struct Ctx<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) scale: u64,
}

impl Ctx<'_> {
    pub(super) fn err(&self, span: Range<usize>, message: impl Into<String>) -> SpecError {
        let (line, column) = line_col(self.text, span.start);
        SpecError {
            file: self.file.into(),
            line,
            column,
            message: message.into(),
        }
    }

    pub(super) fn line(&self, span: &Range<usize>) -> usize {
        line_col(self.text, span.start).0
    }

    /// A checked value with the line of its span, for errors found only at run time.
    pub(super) fn located<T>(&self, value: T, span: &Range<usize>) -> Located<T> {
        Located {
            value,
            line: self.line(span),
        }
    }

    /// An absolute size divided by the VM scale, never below one page.
    pub(super) fn scaled(&self, bytes: u64) -> u64 {
        (bytes / self.scale).max(4096)
    }

    pub(super) fn size(&self, key: &str, s: &Spanned<String>) -> Result<SizeSpec, SpecError> {
        match SizeSpec::parse(s.get_ref()) {
            Ok(SizeSpec::Bytes(b)) => Ok(SizeSpec::Bytes(self.scaled(b))),
            Ok(p) => Ok(p),
            Err(e) => Err(self.err(s.span(), format!("`{key}`: {e}"))),
        }
    }

    pub(super) fn bytes(&self, key: &str, s: &Spanned<String>) -> Result<u64, SpecError> {
        match self.size(key, s)? {
            SizeSpec::Bytes(b) => Ok(b),
            SizeSpec::Percent(_) => Err(self.err(
                s.span(),
                format!("`{key}` must be an absolute size (e.g. 500MiB), not a percentage"),
            )),
        }
    }

    pub(super) fn duration(&self, key: &str, s: &Spanned<String>) -> Result<Duration, SpecError> {
        humantime::parse_duration(s.get_ref().trim()).map_err(|e| {
            self.err(
                s.span(),
                format!(
                    "`{key}`: invalid duration {:?} ({e}); write e.g. 500ms, 5s, 1m",
                    s.get_ref()
                ),
            )
        })
    }

    pub(super) fn adj(&self, key: &str, a: &Spanned<i32>) -> Result<i32, SpecError> {
        let v = *a.get_ref();
        if (-1000..=1000).contains(&v) {
            Ok(v)
        } else {
            Err(self.err(
                a.span(),
                format!("`{key}` = {v} is out of range: oom_score_adj goes from -1000 to 1000"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd\nef", 0), (1, 1));
        assert_eq!(line_col("ab\ncd\nef", 4), (2, 2));
        assert_eq!(line_col("ab\ncd\nef", 6), (3, 1));
    }
}
