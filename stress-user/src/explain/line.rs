//! One line of a saved log, cut by its format's framing into stamp, origin and message. The
//! framing is the only thing believed: a message is the kernel's when the format says so
//! (facility 0, the `kernel:` tag of journald and syslog), whatever its text claims.

use std::time::Duration;

use super::{
    format::LogFormat,
    time::{parse_boot, parse_ctime, parse_iso, parse_short, Stamp},
};
use crate::trace::kmsg::Record;

/// What the framing says a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A message with its own prefix.
    Message {
        stamp: Stamp,
        /// Printed by the kernel, as far as the format can tell.
        kernel: bool,
        /// Syslog level when the format carries one.
        level: Option<u8>,
        /// The text, with the kernel's `\xNN` escaping of non-printable bytes.
        text: String,
    },
    /// An indented line under a message: the rest of a message that held a newline (dmesg and
    /// journalctl print it this way), never a message of its own.
    Continuation(String),
    /// Not of this format (a kmsg dictionary line, another tool's output, a blank).
    Other,
}

/// The kernel's `/dev/kmsg` escaping, for text that was unescaped on the way (journald's
/// `MESSAGE`): every byte below space, DEL and above, and `\` itself become `\xNN`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if !(b' '..0x7f).contains(&b) || b == b'\\' {
            out.push_str(&format!("\\x{b:02x}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

impl LogFormat {
    /// Cuts `line` by this format's framing. `year` is assumed for formats that omit it.
    pub fn cut(self, line: &str, year: i64) -> Line {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let cut = match self {
            LogFormat::KmsgDump => kmsg(line),
            LogFormat::Dmesg => dmesg(line),
            LogFormat::DmesgCtime => dmesg_ctime(line),
            LogFormat::Short => short(line, year),
            LogFormat::ShortMonotonic => short_monotonic(line),
            LogFormat::ShortIso => short_iso(line),
            LogFormat::Json => json(line),
        };
        match cut {
            Some(l) => l,
            None if self != LogFormat::Json
                && self != LogFormat::KmsgDump
                && line.starts_with([' ', '\t'])
                && !line.trim().is_empty() =>
            {
                Line::Continuation(line.trim_start().to_string())
            }
            None => Line::Other,
        }
    }
}

/// `prio,seq,ts_us,flags;message`, the record parser of the live reader.
fn kmsg(line: &str) -> Option<Line> {
    let r = Record::parse(line)?;
    Some(Line::Message {
        stamp: Stamp::Boot(r.ts),
        kernel: r.from_kernel(),
        level: Some(r.level),
        text: r.message,
    })
}

/// `[ 5425.403086] message`; `dmesg` shows every facility alike, so the report's own framing
/// (header, summary, kill line of the same pid) is what the episode builder believes.
fn dmesg(line: &str) -> Option<Line> {
    let (ts, text) = line.strip_prefix('[')?.split_once("] ")?;
    Some(Line::Message {
        stamp: Stamp::Boot(parse_boot(ts)?),
        kernel: true,
        level: None,
        text: text.to_string(),
    })
}

/// `[Tue Dec  1 23:24:42 2026] message`.
fn dmesg_ctime(line: &str) -> Option<Line> {
    let (ts, text) = line.strip_prefix('[')?.split_once("] ")?;
    Some(Line::Message {
        stamp: Stamp::Wall(parse_ctime(ts)?),
        kernel: true,
        level: None,
        text: text.to_string(),
    })
}

/// `host ident: message` after a syslog-style stamp. Only the `kernel` identifier is the
/// kernel; journald and rsyslog write any other program's lines with its own name. rsyslog's
/// kern.log may keep printk's `[ secs.micros] ` in front of the message: it is the better clock.
fn host_tagged(rest: &str, wall: Stamp) -> Option<Line> {
    let (_host, rest) = rest.split_once(' ')?;
    let (ident, text) = rest
        .split_once(": ")
        .or_else(|| rest.strip_suffix(':').map(|i| (i, "")))?;
    if ident.contains(' ') {
        return None;
    }
    let (stamp, text) = match text
        .strip_prefix('[')
        .and_then(|t| t.split_once("] "))
        .and_then(|(ts, t)| Some((parse_boot(ts)?, t)))
    {
        Some((boot, t)) => (Stamp::Boot(boot), t),
        None => (wall, text),
    };
    Some(Line::Message {
        stamp,
        kernel: ident == "kernel",
        level: None,
        text: text.to_string(),
    })
}

/// `Dec 01 23:24:42 host kernel: message` (journalctl -k; syslog's `Dec  1` too).
fn short(line: &str, year: i64) -> Option<Line> {
    let (mon, rest) = line.split_once(' ')?;
    // `Dec  1`: syslog pads the day with a space.
    let (day, rest) = rest.trim_start_matches(' ').split_once(' ')?;
    let (time, rest) = rest.split_once(' ')?;
    host_tagged(rest, Stamp::Wall(parse_short(mon, day, time, year)?))
}

/// `[ 5425.403086] host kernel: message`.
fn short_monotonic(line: &str) -> Option<Line> {
    let (ts, rest) = line.strip_prefix('[')?.split_once("] ")?;
    host_tagged(rest, Stamp::Boot(parse_boot(ts)?))
}

/// `2026-12-01T23:24:42+00:00 host kernel: message`.
fn short_iso(line: &str) -> Option<Line> {
    let (ts, rest) = line.split_once(' ')?;
    host_tagged(rest, Stamp::Wall(parse_iso(ts)?))
}

/// One `journalctl -o json` object. The facility is `SYSLOG_FACILITY` (journald records it for
/// every `/dev/kmsg` record); the time is printk's, `_SOURCE_MONOTONIC_TIMESTAMP`.
fn json(line: &str) -> Option<Line> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let o = v.as_object()?;
    let field = |k: &str| o.get(k).and_then(serde_json::Value::as_str);
    let text = match o.get("MESSAGE")? {
        serde_json::Value::String(s) => s.clone(),
        // journald stores a message that is not UTF-8 as an array of bytes.
        serde_json::Value::Array(bytes) => {
            let b: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&b).into_owned()
        }
        _ => return None,
    };
    let us = field("_SOURCE_MONOTONIC_TIMESTAMP")
        .or_else(|| field("__MONOTONIC_TIMESTAMP"))
        .and_then(|t| t.parse::<u64>().ok())?;
    let kernel = match field("SYSLOG_FACILITY") {
        Some(f) => f == "0",
        None => field("_TRANSPORT") == Some("kernel"),
    };
    Some(Line::Message {
        stamp: Stamp::Boot(Duration::from_micros(us)),
        kernel,
        level: field("PRIORITY").and_then(|p| p.parse().ok()),
        text: escape(&text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: i64 = 2026;

    fn message(stamp: Stamp, kernel: bool, text: &str) -> Line {
        Line::Message {
            stamp,
            kernel,
            level: None,
            text: text.into(),
        }
    }

    #[test]
    fn each_format_cuts_its_own_lines() {
        let boot = Stamp::Boot(Duration::new(5425, 403_086_000));
        let wall = Stamp::Wall(1_796_167_482);
        let text = "leaky-cache invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0";
        let cases = [
            (
                LogFormat::Dmesg,
                format!("[ 5425.403086] {text}"),
                message(boot, true, text),
            ),
            (
                LogFormat::DmesgCtime,
                format!("[Tue Dec  1 23:24:42 2026] {text}"),
                message(wall, true, text),
            ),
            (
                LogFormat::Short,
                format!("Dec 01 23:24:42 vm kernel: {text}"),
                message(wall, true, text),
            ),
            (
                LogFormat::Short,
                format!("Dec  1 23:24:42 vm kernel: [ 5425.403086] {text}"),
                message(boot, true, text),
            ),
            (
                LogFormat::ShortMonotonic,
                format!("[ 5425.403086] vm kernel: {text}"),
                message(boot, true, text),
            ),
            (
                LogFormat::ShortIso,
                format!("2026-12-01T23:24:42+00:00 vm kernel: {text}"),
                message(wall, true, text),
            ),
            (
                LogFormat::Short,
                format!("Dec 01 23:24:42 vm myapp[77]: {text}"),
                message(wall, false, text),
            ),
        ];
        for (format, line, want) in cases {
            assert_eq!(format.cut(&line, YEAR), want, "{format:?}: {line}");
        }
        assert_eq!(
            LogFormat::KmsgDump.cut("4,162187,5425403086,-;hi\\x0athere", YEAR),
            Line::Message {
                stamp: boot,
                kernel: true,
                level: Some(4),
                text: "hi\\x0athere".into()
            }
        );
        assert_eq!(
            LogFormat::KmsgDump.cut("12,9,5425403086,-;Killed process 1 (x)", YEAR),
            Line::Message {
                stamp: boot,
                kernel: false,
                level: Some(4),
                text: "Killed process 1 (x)".into()
            },
            "user space writing to /dev/kmsg is not the kernel"
        );
        assert_eq!(LogFormat::KmsgDump.cut(" SUBSYSTEM=mem", YEAR), Line::Other);
    }

    #[test]
    fn json_records_keep_facility_and_escaping() {
        let line = r#"{"_SOURCE_MONOTONIC_TIMESTAMP":"5425403086","_TRANSPORT":"kernel","PRIORITY":"3","SYSLOG_FACILITY":"0","MESSAGE":"Killed process 7 (a\nb)"}"#;
        assert_eq!(
            LogFormat::Json.cut(line, YEAR),
            Line::Message {
                stamp: Stamp::Boot(Duration::new(5425, 403_086_000)),
                kernel: true,
                level: Some(3),
                text: "Killed process 7 (a\\x0ab)".into()
            }
        );
        let forged = line.replace(r#""SYSLOG_FACILITY":"0""#, r#""SYSLOG_FACILITY":"1""#);
        assert!(matches!(
            LogFormat::Json.cut(&forged, YEAR),
            Line::Message { kernel: false, .. }
        ));
        let bytes = r#"{"__MONOTONIC_TIMESTAMP":"1","_TRANSPORT":"kernel","MESSAGE":[104,255]}"#;
        assert!(matches!(
            LogFormat::Json.cut(bytes, YEAR),
            Line::Message { kernel: true, .. }
        ));
        assert_eq!(LogFormat::Json.cut("not json", YEAR), Line::Other);
    }

    #[test]
    fn an_indented_line_is_the_rest_of_the_message_above() {
        assert_eq!(
            LogFormat::Dmesg.cut("               b) total-vm:121148kB", YEAR),
            Line::Continuation("b) total-vm:121148kB".into())
        );
        assert_eq!(
            LogFormat::Dmesg.cut("Killed process 1 (x)", YEAR),
            Line::Other
        );
        assert_eq!(LogFormat::Json.cut("  {}", YEAR), Line::Other);
        assert_eq!(escape("a\\b\n\u{1b}"), "a\\x5cb\\x0a\\x1b");
    }
}
