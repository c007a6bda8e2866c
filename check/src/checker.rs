//! A machine wrapped with the observer, and the driver's side of the contract.

use std::collections::VecDeque;
use std::time::Instant;

use handover_core::{Config, Connection, Input, Output, TransportId};

use crate::observer::{Machine, Observer};
use crate::violation::{Invariant, Step, Violation};

/// How many steps a [`Checker`] keeps for the history of a violation, unless told otherwise.
pub const DEFAULT_HISTORY: usize = 256;

/// A machine wrapped with an [`Observer`]: a driver under test calls the checker where it
/// would call the [`Connection`], and every call is checked.
///
/// The calls are the machine's own: [`handle_input`](Self::handle_input),
/// [`handle_timeout`](Self::handle_timeout), [`poll_output`](Self::poll_output) and
/// [`poll_timeout`](Self::poll_timeout); the two that mutate return the first
/// [`Violation`] instead of panicking. On each mutation the checker drains the machine's
/// outputs at once (to check them) and hands them out in the same order, so the driver sees
/// exactly what the bare machine would give it.
///
/// A driver can also report its sockets, [`socket_opened`](Self::socket_opened) when it
/// creates one and [`socket_dropped`](Self::socket_dropped) when nothing of it is left. Once
/// it has, the checker also holds the driver to its side of invariant 1: a socket exists only
/// for an `Open` the driver took, never two at once, and `Closed` or `OpenFailed` is reported
/// only once the socket is dropped.
///
/// After the first violation, every later mutating call returns that same violation and no
/// longer reaches the machine: the observer's picture is no longer trustworthy.
///
/// ```
/// use std::time::Instant;
/// use handover_check::Checker;
/// use handover_core::{Config, Input, Output};
///
/// let mut core = Checker::new(Config::default(), 7);
/// let now = Instant::now();
/// core.handle_input(now, Input::Start)?;
/// let Some(Output::Open { conn, .. }) = core.poll_output() else { unreachable!() };
/// core.socket_opened(conn)?;
/// core.handle_input(now, Input::Opened(conn))?;
/// // A broken driver: it reports the socket gone while it still holds it.
/// let violation = core.handle_input(now, Input::Closed { conn, code: None }).unwrap_err();
/// assert_eq!(violation.invariant.number(), Some(1));
/// # Ok::<(), handover_check::Violation>(())
/// ```
#[derive(Debug, Clone)]
pub struct Checker<M: Machine = Connection> {
    machine: M,
    config: Config,
    observer: Observer,
    out: VecDeque<Output>,
    history: VecDeque<Step>,
    history_len: usize,
    /// Whether the driver reports its sockets.
    sockets_reported: bool,
    /// The socket the driver holds, if any.
    socket: Option<TransportId>,
    /// The latest `Open` the driver took from [`Checker::poll_output`].
    open_taken: Option<TransportId>,
    violation: Option<Violation>,
}

impl Checker<Connection> {
    /// A checked `Connection::new(config, seed)`.
    pub fn new(config: Config, seed: u64) -> Self {
        Checker::wrap(Connection::new(config, seed), config)
    }
}

impl<M: Machine> Checker<M> {
    /// Wraps a machine that was never fed anything, built with `config`. A machine that
    /// already holds a restored session is observed as holding it.
    pub fn wrap(machine: M, config: Config) -> Self {
        let observer = if machine.is_resumable() {
            Observer::with_session()
        } else {
            Observer::new()
        };
        Checker {
            machine,
            config,
            observer,
            out: VecDeque::new(),
            history: VecDeque::new(),
            history_len: DEFAULT_HISTORY,
            sockets_reported: false,
            socket: None,
            open_taken: None,
            violation: None,
        }
    }

    /// Keeps the last `steps` steps as the history of a violation (default
    /// [`DEFAULT_HISTORY`]).
    pub fn with_history(mut self, steps: usize) -> Self {
        self.history_len = steps;
        self
    }

    /// The machine under test, for its read-only views (`state`, `phase`, `status`...).
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The observer's current picture.
    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    /// The first violation seen, if any.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// The steps kept so far, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &Step> {
        self.history.iter()
    }

    /// Checked [`Connection::handle_input`].
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), Violation> {
        let step = Step::Input { at: now, input };
        if let Some(conn) = crate::observer::tagged(input)
            && matches!(input, Input::Closed { .. } | Input::OpenFailed(_))
            && self.sockets_reported
            && self.socket == Some(conn)
        {
            return self.fail(
                Invariant::OneTransport,
                format!("{conn} reported gone while its socket is still held"),
                step,
                Vec::new(),
            );
        }
        if let Input::Opened(conn) = input
            && self.sockets_reported
            && self.socket != Some(conn)
            && self.observer.live() == Some(conn)
        {
            return self.fail(
                Invariant::Driver,
                format!("{conn} reported opened without a socket"),
                step,
                Vec::new(),
            );
        }
        self.mutate(step, |m| m.handle_input(now, input))
    }

    /// Checked [`Connection::handle_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Violation> {
        self.mutate(Step::Timeout { at: now }, |m| m.handle_timeout(now))
    }

    /// [`Connection::poll_output`]: the next output, in the machine's order.
    #[must_use = "every output must be carried out"]
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.out.pop_front()?;
        if let Output::Open { conn, .. } = out {
            self.open_taken = Some(conn);
        }
        Some(out)
    }

    /// [`Connection::poll_timeout`].
    #[must_use = "the machine must be called back at this instant"]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.machine.poll_timeout()
    }

    /// The driver created the socket of transport `conn` (call it before reporting
    /// `Opened`). From the first call on, the checker holds the driver to its sockets.
    pub fn socket_opened(&mut self, conn: TransportId) -> Result<(), Violation> {
        self.check_sticky()?;
        self.sockets_reported = true;
        let step = Step::SocketOpened(conn);
        if let Some(held) = self.socket {
            return self.fail(
                Invariant::OneTransport,
                format!("socket for {conn} created while the socket of {held} is held"),
                step,
                Vec::new(),
            );
        }
        if self.open_taken != Some(conn) || self.observer.live() != Some(conn) {
            return self.fail(
                Invariant::OneTransport,
                format!("socket for {conn} created without an Open for it"),
                step,
                Vec::new(),
            );
        }
        self.socket = Some(conn);
        self.record(step);
        Ok(())
    }

    /// The driver dropped the socket of transport `conn`: nothing of it is left (call it
    /// before reporting `Closed` or `OpenFailed`).
    pub fn socket_dropped(&mut self, conn: TransportId) -> Result<(), Violation> {
        self.check_sticky()?;
        self.sockets_reported = true;
        let step = Step::SocketDropped(conn);
        if self.socket != Some(conn) {
            return self.fail(
                Invariant::Driver,
                format!("socket of {conn} dropped but not held"),
                step,
                Vec::new(),
            );
        }
        self.socket = None;
        self.record(step);
        Ok(())
    }

    fn check_sticky(&self) -> Result<(), Violation> {
        match &self.violation {
            Some(v) => Err(v.clone()),
            None => Ok(()),
        }
    }

    fn mutate(&mut self, step: Step, apply: impl FnOnce(&mut M)) -> Result<(), Violation> {
        self.check_sticky()?;
        let before = self.machine.clone();
        apply(&mut self.machine);
        let first = self.out.len();
        while let Some(out) = self.machine.poll_output() {
            self.out.push_back(out);
        }
        let outputs: Vec<Output> = self.out.iter().skip(first).copied().collect();
        match self
            .observer
            .check_step(&self.config, step, &before, &self.machine, &outputs)
        {
            Ok(()) => {
                self.record(step);
                Ok(())
            }
            Err(v) => self.fail(v.invariant, v.message, step, outputs),
        }
    }

    fn record(&mut self, step: Step) {
        if self.history_len == 0 {
            return;
        }
        if self.history.len() == self.history_len {
            self.history.pop_front();
        }
        self.history.push_back(step);
    }

    fn fail(
        &mut self,
        invariant: Invariant,
        message: String,
        step: Step,
        outputs: Vec<Output>,
    ) -> Result<(), Violation> {
        let violation = Violation {
            invariant,
            message,
            step,
            outputs,
            history: self.history.iter().copied().collect(),
        };
        self.violation = Some(violation.clone());
        Err(violation)
    }
}
