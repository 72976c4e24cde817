//! Runs an experiment (written next).
