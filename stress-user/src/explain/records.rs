//! A saved log's lines turned into the `/dev/kmsg` records the live tracer's episode builder
//! reads: a continuation line goes back into its message as the kernel's escaped newline, and
//! a line the format does not call the kernel's gets a user facility, so it is never believed.

use super::{format::LogFormat, line::Line, time::Stamp, ExplainError};
use crate::trace::kmsg::Record;

/// The facility given to lines the format says are not the kernel's (`LOG_USER`).
const NOT_KERNEL: u8 = 1;

/// The records of `text` in `format`, from `since` on (a stamp on the log's own clock).
pub fn records(
    text: &str,
    format: LogFormat,
    year: i64,
    since: Option<Stamp>,
) -> Result<Vec<Record>, ExplainError> {
    let mut out: Vec<(Stamp, Record)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        match format.cut(raw, year) {
            Line::Message {
                stamp,
                kernel,
                level,
                text,
            } => out.push((
                stamp,
                Record {
                    facility: if kernel { 0 } else { NOT_KERNEL },
                    level: level.unwrap_or(6),
                    seq: u64::try_from(i).unwrap_or(u64::MAX).saturating_add(1),
                    ts: stamp.as_duration(),
                    cont: false,
                    message: text,
                },
            )),
            Line::Continuation(rest) => {
                if let Some((_, last)) = out.last_mut() {
                    last.message.push_str("\\x0a");
                    last.message.push_str(&rest);
                }
            }
            Line::Other => {}
        }
    }
    let Some(since) = since else {
        return Ok(out.into_iter().map(|(_, r)| r).collect());
    };
    if let Some((stamp, _)) = out
        .iter()
        .find(|(s, _)| std::mem::discriminant(s) != std::mem::discriminant(&since))
    {
        return Err(ExplainError::SinceClock {
            format,
            boot: matches!(stamp, Stamp::Boot(_)),
        });
    }
    Ok(out
        .into_iter()
        .filter(|(s, _)| *s >= since)
        .map(|(_, r)| r)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn continuations_rejoin_and_other_idents_are_not_the_kernel() {
        let text = "[ 1.000000] Memory cgroup out of memory: Killed process 7 (a\n              b) total-vm:1kB\n[ 2.000000] next";
        let r = records(text, LogFormat::Dmesg, 2026, None).expect("records");
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].message,
            "Memory cgroup out of memory: Killed process 7 (a\\x0ab) total-vm:1kB"
        );
        assert_eq!(
            (r[0].seq, r[1].seq, r[1].ts),
            (1, 3, Duration::from_secs(2))
        );
        let syslog = "Dec  1 23:24:42 n kernel: x\nDec  1 23:24:42 n app[1]: Killed process 1 (x)";
        let r = records(syslog, LogFormat::Short, 2026, None).expect("records");
        assert_eq!(
            r.iter().map(Record::from_kernel).collect::<Vec<_>>(),
            [true, false]
        );
    }

    #[test]
    fn since_is_on_the_logs_clock() {
        let text = "[ 1.000000] a\n[ 2.500000] b\n[ 3.000000] c";
        let since = Some(Stamp::Boot(Duration::from_millis(2500)));
        let r = records(text, LogFormat::Dmesg, 2026, since).expect("records");
        assert_eq!(
            r.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(),
            ["b", "c"]
        );
        let wall = Some(Stamp::Wall(0));
        assert!(matches!(
            records(text, LogFormat::Dmesg, 2026, wall),
            Err(ExplainError::SinceClock { boot: true, .. })
        ));
    }
}
