//! `cargo xtask bench inject`.

use anyhow::{bail, Result};

pub fn run() -> Result<()> {
    bail!("bench inject is not written yet")
}
