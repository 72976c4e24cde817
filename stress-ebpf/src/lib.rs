//! Empty on purpose: stress-user lists this crate as a build-dependency (so cargo rebuilds the
//! embedded object when the programs change), which needs a library target that builds for the
//! host. The programs are the `stress` binary (`src/main.rs`).
#![no_std]
