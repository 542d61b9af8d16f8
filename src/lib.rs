//! ringcast: a WebSocket broadcast server on io_uring.
//!
//! `protocol` is pure (handshake, frames); `shard` runs the io_uring event
//! loops that own the connections; `server` starts them and runs the control
//! plane; `metrics` counts; `config` and `cli` read what the operator asked for.

pub mod activation;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod feed;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod publish;
pub mod server;
pub mod shard;
pub mod sys;
pub mod uring;
