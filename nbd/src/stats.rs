//! The counters a running server keeps, shared by its workers and connections.

use std::sync::atomic::AtomicU64;

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Handshakes that ended without a session (aborts, violations, timeouts).
    pub failed_handshakes: AtomicU64,
    /// Requests read.
    pub requests: AtomicU64,
    /// Replies that carried an error.
    pub error_replies: AtomicU64,
    /// Connections closed for breaking the protocol.
    pub violations: AtomicU64,
}
