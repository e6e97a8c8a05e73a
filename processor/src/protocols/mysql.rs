//! mysql connection tracking (STUB, being written): one [`DbExchange`] per command.

use super::db::DbExchange;
use super::http2::Flow;

/// Commands waiting for their replies at most.
pub const MAX_PENDING: usize = 1024;

/// What a connection saw and lost; summed by the caller across connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub commands: u64,
}

impl Counters {
    /// Adds `other` to these (summing connections).
    pub fn add(&mut self, other: &Counters) {
        let Counters { commands } = other;
        self.commands += commands;
    }
}

pub struct Connection {
    request_flow: Flow,
    counters: Counters,
}

impl Connection {
    /// The flow that carries commands when `first` (a connection's first bytes with data, on
    /// `flow`) is this protocol; None otherwise.
    pub fn detect(_flow: Flow, _first: &[u8]) -> Option<Flow> {
        None
    }

    pub fn new(request_flow: Flow, _fresh: bool) -> Connection {
        Connection {
            request_flow,
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn pending(&self) -> usize {
        0
    }

    pub fn feed(
        &mut self,
        flow: Flow,
        _captured: &[u8],
        _total: u64,
        _ts_ns: u64,
        _out: &mut Vec<DbExchange>,
    ) {
        let _ = flow == self.request_flow;
    }

    pub fn close(&mut self, _ts_ns: u64, _out: &mut Vec<DbExchange>) {}
}
