//! The kernel log side of an OOM: `/dev/kmsg` records, the lines of the OOM report they carry,
//! and the reader that follows the log while oomlab traces.

mod reader;
mod record;
mod report;

pub use reader::{KmsgError, KmsgReader};
pub use record::{parse_dump, unescape, Record};
pub use report::{
    Killed, MemCounter, OomHeader, OomLine, OomParser, OomSummary, Reaped, Scope, TaskRow,
};
