//! Which saved-log format a text is in, from its first lines: each format's framing is tried
//! and the one that frames (nearly) every line wins, the stricter format on a near tie (a
//! `short-monotonic` line is also a valid `dmesg` line whose message starts with a host name).

use std::fmt;

use super::line::Line;

/// The kernel-log formats `oomlab explain` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// `/dev/kmsg` records, `prio,seq,ts_us,flags;message` (`dd if=/dev/kmsg iflag=nonblock`).
    KmsgDump,
    /// `dmesg`: `[ 5425.403086] message`.
    Dmesg,
    /// `dmesg -T`: `[Tue Dec  1 23:24:42 2026] message`.
    DmesgCtime,
    /// `journalctl -k` (short) and traditional syslog files (`/var/log/kern.log`):
    /// `Dec 01 23:24:42 host kernel: message`.
    Short,
    /// `journalctl -k -o short-monotonic`: `[ 5425.403086] host kernel: message`.
    ShortMonotonic,
    /// `journalctl -k -o short-iso` and RFC 3339 syslog files:
    /// `2026-12-01T23:24:42+00:00 host kernel: message`.
    ShortIso,
    /// `journalctl -k -o json`: one JSON object per line.
    Json,
}

/// Stricter formats first: on a near tie the first wins.
const ORDER: [LogFormat; 7] = [
    LogFormat::KmsgDump,
    LogFormat::Json,
    LogFormat::ShortMonotonic,
    LogFormat::ShortIso,
    LogFormat::Short,
    LogFormat::DmesgCtime,
    LogFormat::Dmesg,
];

/// Lines looked at to decide.
const SAMPLE: usize = 2000;

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::KmsgDump => "/dev/kmsg dump",
            LogFormat::Dmesg => "dmesg",
            LogFormat::DmesgCtime => "dmesg -T",
            LogFormat::Short => "journalctl -k / syslog",
            LogFormat::ShortMonotonic => "journalctl -o short-monotonic",
            LogFormat::ShortIso => "journalctl -o short-iso / RFC 3339 syslog",
            LogFormat::Json => "journalctl -o json",
        })
    }
}

/// The format of `text`, `None` when no format frames any of its first lines.
pub fn detect(text: &str, year: i64) -> Option<LogFormat> {
    let sample: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(SAMPLE)
        .collect();
    let scores: Vec<(LogFormat, usize)> = ORDER
        .iter()
        .map(|&f| {
            let framed = sample
                .iter()
                .filter(|l| matches!(f.cut(l, year), Line::Message { .. }))
                .count();
            (f, framed)
        })
        .collect();
    let best = scores.iter().map(|(_, n)| *n).max().unwrap_or(0);
    scores
        .into_iter()
        .find(|(_, n)| *n > 0 && n.saturating_mul(10) >= best.saturating_mul(9))
        .map(|(f, _)| f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR: i64 = 2026;

    /// The first lines of one OOM report as each format prints them.
    fn sample(format: LogFormat) -> String {
        let msgs = [
            "leaky-cache invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
            "CPU: 1 UID: 0 PID: 29758 Comm: leaky-cache Not tainted 6.18.44 #1 PREEMPT(none) ",
            " dump_stack_lvl+0x59/0x90",
            "memory: usage 32768kB, limit 32768kB, failcnt 0",
            "usb 1-1: new high-speed USB device number 2 using xhci_hcd",
        ];
        msgs.iter()
            .enumerate()
            .map(|(i, m)| match format {
                LogFormat::KmsgDump => format!("4,{i},5425403086,-;{m}\n SUBSYSTEM=x"),
                LogFormat::Dmesg => format!("[ 5425.40308{i}] {m}"),
                LogFormat::DmesgCtime => format!("[Tue Dec  1 23:24:42 2026] {m}"),
                LogFormat::Short => format!("Dec  1 23:24:42 node-1 kernel: [ 5425.403086] {m}"),
                LogFormat::ShortMonotonic => format!("[ 5425.40308{i}] node-1 kernel: {m}"),
                LogFormat::ShortIso => format!("2026-12-01T23:24:42+0000 node-1 kernel: {m}"),
                LogFormat::Json => serde_json::json!({
                    "__MONOTONIC_TIMESTAMP": "5425403086",
                    "_TRANSPORT": "kernel",
                    "MESSAGE": m,
                })
                .to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn each_format_is_recognised() {
        for f in ORDER {
            assert_eq!(detect(&sample(f), YEAR), Some(f), "{f}:\n{}", sample(f));
        }
        let journal_short = "Dec 01 23:24:42 node-1 kernel: Out of memory: Killed process 1 (x)";
        assert_eq!(detect(journal_short, YEAR), Some(LogFormat::Short));
    }

    #[test]
    fn other_programs_lines_do_not_change_the_format() {
        let syslog = format!(
            "{}\nDec  1 23:24:43 node-1 systemd[1]: Started session.\nnot a log line",
            sample(LogFormat::Short)
        );
        assert_eq!(detect(&syslog, YEAR), Some(LogFormat::Short));
        assert_eq!(detect("hello\nworld\n", YEAR), None);
        assert_eq!(detect("", YEAR), None);
    }
}
