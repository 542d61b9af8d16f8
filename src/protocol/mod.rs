//! The WebSocket protocol, pure and I/O-free: the opening handshake, frame
//! encoding, and the incremental reader of client frames. Everything here is
//! unit-tested, property-tested and fuzzed without sockets.

pub mod channel;
pub mod control;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod query;
pub mod reader;
pub mod sse;
