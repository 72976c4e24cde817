#!/usr/bin/env python3
"""Builds the journald and syslog renderings of a raw /dev/kmsg capture (kmsg.txt).

journald does not run on the capture host, so `journalctl -k` could not be asked; this writes
the same records as journalctl (short, short-monotonic, short-iso, json) and rsyslog's
traditional kern.log would, from the kernel's own records and the boot time of the capture
(boot-epoch.txt: CLOCK_REALTIME - CLOCK_BOOTTIME, seconds). Where the capture came without
`dmesg` and `dmesg -T` output (the VM guests have busybox, not util-linux), it writes those too,
as util-linux prints them (the kernel's escapes kept, UTC).
Usage: make-journal-formats.py DIR HOST
"""
import os
import json, sys, time

d, host = sys.argv[1], sys.argv[2]
boot = float(open(f"{d}/boot-epoch.txt").read())
recs = []
for line in open(f"{d}/kmsg.txt", encoding="utf-8"):
    if line.startswith(" ") or ";" not in line:
        continue
    head, msg = line.rstrip("\n").split(";", 1)
    prio, seq, ts = head.split(",")[:3]
    # journald and rsyslog undo the kernel's \xNN escaping.
    raw = bytes(msg, "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
    recs.append((int(prio), int(seq), int(ts), raw))

def wall(ts_us):
    return boot + ts_us / 1e6

def out(name, lines):
    with open(f"{d}/{name}", "w", encoding="utf-8") as f:
        f.writelines(l + "\n" for l in lines)

def indent(prefix, msg):
    # journalctl prints a message's further lines under its first, indented to the prefix.
    return prefix + msg.replace("\n", "\n" + " " * len(prefix))

out("journal-short.txt", [indent(time.strftime("%b %d %H:%M:%S", time.gmtime(wall(t))) + f" {host} kernel: ", m) for _, _, t, m in recs])
out("journal-short-monotonic.txt", [indent(f"[{t // 1000000:5d}.{t % 1000000:06d}] {host} kernel: ", m) for _, _, t, m in recs])
out("journal-short-iso.txt", [indent(time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(wall(t))) + f" {host} kernel: ", m) for _, _, t, m in recs])
out("kern.log", [indent(time.strftime("%b %e %H:%M:%S", time.gmtime(wall(t))) + f" {host} kernel: [{t // 1000000:5d}.{t % 1000000:06d}] ", m) for _, _, t, m in recs])
out("journal.json", [json.dumps({
    "__REALTIME_TIMESTAMP": str(int(wall(t) * 1e6)),
    "__MONOTONIC_TIMESTAMP": str(t + 1234),
    "_SOURCE_MONOTONIC_TIMESTAMP": str(t),
    "_TRANSPORT": "kernel",
    "PRIORITY": str(p & 7),
    "SYSLOG_FACILITY": str(p >> 3),
    "SYSLOG_IDENTIFIER": "kernel",
    "_HOSTNAME": host,
    "MESSAGE": m,
}, separators=(",", ":")) for p, _, t, m in recs])

raw = []
for line in open(f"{d}/kmsg.txt", encoding="utf-8"):
    if line.startswith(" ") or ";" not in line:
        continue
    head, msg = line.rstrip("\n").split(";", 1)
    raw.append((int(head.split(",")[2]), msg))
if not os.path.exists(f"{d}/dmesg.txt"):
    out("dmesg.txt", [f"[{t // 1000000:5d}.{t % 1000000:06d}] {m}" for t, m in raw])
if not os.path.exists(f"{d}/dmesg-T.txt"):
    out("dmesg-T.txt", [time.strftime("[%a %b %e %H:%M:%S %Y] ", time.gmtime(wall(t))) + m for t, m in raw])
