//! `/dev/kmsg` record framing: `prio,seq,ts_us,flags[,…];message`. The message keeps the
//! kernel's `\xNN` escapes: a comm or file name holding a newline stays inside its record, and
//! only the parsed fields that name a task are unescaped.

use std::time::Duration;

/// The syslog facility of messages printed by the kernel (`printk`). User space writing to
/// `/dev/kmsg` gets `LOG_USER` (1) or the facility it asks for, never 0: the kernel refuses to
/// let a writer claim facility 0.
const KERNEL_FACILITY: u8 = 0;

/// One `/dev/kmsg` record: `prio,seq,ts_us,flags[,…];message` plus optional ` KEY=value` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Syslog facility (`prio >> 3`); 0 for the kernel's own messages.
    pub facility: u8,
    /// Syslog level (0 emerg … 7 debug).
    pub level: u8,
    pub seq: u64,
    /// The printk timestamp (local_clock, microseconds since boot).
    pub ts: Duration,
    /// The `c` flag: this record continues the previous one (`pr_cont`).
    pub cont: bool,
    /// The message as the kernel framed it, `\xNN` escapes kept (a multi-line printk such as
    /// 6.1's memory.stat is one record with `\x0a` inside).
    pub message: String,
}

impl Record {
    /// Parses one record as read from `/dev/kmsg`; `None` for anything else (a comment line in a
    /// fixture, a truncated read).
    pub fn parse(raw: &str) -> Option<Record> {
        let first = raw.lines().next()?;
        let (prefix, message) = first.split_once(';')?;
        let mut fields = prefix.split(',');
        let prio: u32 = fields.next()?.trim().parse().ok()?;
        let seq = fields.next()?.parse().ok()?;
        let ts_us: u64 = fields.next()?.parse().ok()?;
        let cont = fields.next().is_some_and(|f| f.contains('c'));
        Some(Record {
            facility: u8::try_from(prio >> 3).unwrap_or(u8::MAX),
            level: u8::try_from(prio & 7).unwrap_or(u8::MAX),
            seq,
            ts: Duration::from_micros(ts_us),
            cont,
            message: message.to_string(),
        })
    }

    /// Whether the kernel itself printed this record (user space cannot forge facility 0).
    pub fn from_kernel(&self) -> bool {
        self.facility == KERNEL_FACILITY
    }

    /// The message as one line: escaped newlines are bytes of the text, not line breaks, so a
    /// task name cannot start a line of its own.
    pub fn line(&self) -> &str {
        &self.message
    }
}

/// Undoes `/dev/kmsg`'s `\xNN` escaping of non-printable bytes (and of `\` itself), for a field
/// that was already cut out of its line.
pub fn unescape(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            let hex = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a whole kmsg dump (one record per line, as `cat /dev/kmsg` prints them). Lines that
/// are not records (comments, continuation ` KEY=value` lines) are skipped; records of every
/// facility are kept (the consumer decides whom to believe).
pub fn parse_dump(text: &str) -> Vec<Record> {
    text.lines().filter_map(Record::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_prefix_keeps_escapes() {
        let r = Record::parse("6,408,14754045,-;anon 1\\x0afile 0\n SUBSYSTEM=x").expect("record");
        assert_eq!((r.facility, r.level, r.seq, r.cont), (0, 6, 408, false));
        assert_eq!(r.ts, Duration::from_micros(14_754_045));
        assert_eq!(
            r.line(),
            "anon 1\\x0afile 0",
            "an escaped newline is no line break"
        );
        assert!(r.from_kernel());
        // Extra prefix fields (caller id) are tolerated; the facility is kept.
        let r = Record::parse("30,7,100,c,caller=T1;hi").expect("record");
        assert_eq!((r.facility, r.level, r.cont), (3, 6, true));
        assert_eq!(r.message, "hi");
        assert!(!r.from_kernel());
        assert_eq!(Record::parse("# comment"), None);
        assert_eq!(Record::parse("x,1,2,-;bad prio"), None);
        assert_eq!(
            Record::parse("4294967295,1,2,-;huge prio").map(|r| r.facility),
            Some(255)
        );
    }

    #[test]
    fn user_space_lines_are_not_kernel_records() {
        // `echo 'Killed process 1 (x)' > /dev/kmsg` is logged as user.warning (prio 12).
        let r = Record::parse("12,900,1,-;Memory cgroup out of memory: Killed process 1 (x)")
            .expect("record");
        assert_eq!((r.facility, r.level), (1, 4));
        assert!(!r.from_kernel());
    }

    #[test]
    fn unescape_fields() {
        assert_eq!(unescape("a\\x0ab"), "a\nb");
        assert_eq!(unescape("back\\x5cslash"), "back\\slash");
        assert_eq!(unescape("\\x1b[31m"), "\x1b[31m");
        assert_eq!(unescape("\\xe5\\x90\\x8d"), "名");
        assert_eq!(unescape("bad\\xzz\\x"), "bad\\xzz\\x");
    }
}
