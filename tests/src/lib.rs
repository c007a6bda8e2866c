//! # handover-tests
//!
//! End-to-end and simulation tests across the workspace crates. The library part holds shared
//! test harness code.

#![warn(missing_docs)]
