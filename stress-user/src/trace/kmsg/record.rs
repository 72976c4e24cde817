//! `/dev/kmsg` record framing: `prio,seq,ts_us,flags[,…];message`, with the kernel's `\xNN`
//! escapes undone.

use std::time::Duration;

/// One `/dev/kmsg` record: `prio,seq,ts_us,flags[,…];message` plus optional ` KEY=value` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Syslog level (0 emerg … 7 debug); the facility is dropped.
    pub level: u8,
    pub seq: u64,
    /// The printk timestamp (local_clock, microseconds since boot).
    pub ts: Duration,
    /// The message with the kernel's `\xNN` escapes undone (`\x0a` inside one record is a
    /// newline printed with `pr_cont`-less multi-line output, e.g. memory.stat on 6.1).
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
        Some(Record {
            level: u8::try_from(prio & 7).expect("masked to 3 bits"),
            seq,
            ts: Duration::from_micros(ts_us),
            message: unescape(message),
        })
    }

    /// The message's lines (usually one).
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.message.lines()
    }
}

/// Undoes `/dev/kmsg`'s `\xNN` escaping of non-printable bytes.
fn unescape(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') {
            let hex = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a whole kmsg dump (one record per line, as `cat /dev/kmsg` prints them). Lines that
/// are not records (comments, continuation ` KEY=value` lines) are skipped.
pub fn parse_dump(text: &str) -> Vec<Record> {
    text.lines().filter_map(Record::parse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_prefix_and_escapes() {
        let r = Record::parse("6,408,14754045,-;anon 1\\x0afile 0\n SUBSYSTEM=x").expect("record");
        assert_eq!((r.level, r.seq), (6, 408));
        assert_eq!(r.ts, Duration::from_micros(14_754_045));
        assert_eq!(r.lines().collect::<Vec<_>>(), ["anon 1", "file 0"]);
        // Facility bits are dropped; extra prefix fields (caller id) are tolerated.
        let r = Record::parse("30,7,100,c,caller=T1;hi").expect("record");
        assert_eq!((r.level, r.message.as_str()), (6, "hi"));
        assert_eq!(Record::parse("# comment"), None);
        assert_eq!(Record::parse("x,1,2,-;bad prio"), None);
    }
}
