//! `cargo xtask bench trace`.

use anyhow::{bail, Result};

pub fn run() -> Result<()> {
    bail!("bench trace is not written yet")
}
