//! # handover-discord
//!
//! Discord gateway v10 on top of `handover-core`: the sans-IO protocol layer ([`protocol`]) and a
//! Discord-faithful mock gateway ([`mock`]) for tests, demos and other people's test suites.

#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod http;
pub mod mock;
pub mod protocol;
#[cfg(feature = "redis")]
pub mod redis;
pub mod runtime;
