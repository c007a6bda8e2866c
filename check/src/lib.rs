//! # handover-check
//!
//! A contract checker for drivers of [`handover_core`]: the observer of invariants 1-8 of
//! `docs/architecture.md` as a library, so that the author of a runtime of their own can
//! model-check or property-test their driver in their own unit tests.
//!
//! - [`Checker`] wraps a [`Connection`](handover_core::Connection): the driver under test
//!   calls it instead of the bare machine (same calls; the mutating ones return a
//!   [`Violation`]), and may report its sockets so that its own side of the contract (a
//!   socket only for an `Open`, `Closed` only once the socket is dropped) is checked too.
//! - [`Observer`] is the specification alone: small, `Eq` and `Hash`, fed the machine before
//!   and after every step with that step's outputs. `handover-core`'s own exhaustive model
//!   checker stores one in every explored state.
//!
//! A violation names the [`Invariant`] broken, the offending [`Step`], the outputs of that
//! step and the steps before it; it never panics. The crate depends on `handover-core` alone:
//! no async runtime, no clock (every step carries the driver's `now`).

mod checker;
mod observer;
mod violation;

pub use checker::{Checker, DEFAULT_HISTORY};
pub use observer::{Machine, Observer};
pub use violation::{Invariant, Step, Violation};
