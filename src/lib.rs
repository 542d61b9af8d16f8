//! ringcast: a WebSocket broadcast server for Linux, on io_uring or epoll.
//!
//! Layers, each using only those below it: `protocol` (pure: handshake,
//! frames, queries, notices); `core` (the I/O-free shard state machine and
//! the channel registry it shares); `driver` (the shard threads: io_uring or
//! epoll around a core), `fleet` (a fleet's Redis: publishing into it and
//! listening to it), `feed` (publishers in, or the fleet's messages, to the
//! shards) and `admin` (the status page and metrics, off the shards);
//! `server` (start-up, signals, control plane) on top. `uring` is the io_uring wrapper the io_uring
//! driver, the load generator and the baseline share.

pub mod activation;
pub mod admin;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod config;
pub mod core;
pub mod doctor;
pub mod driver;
pub mod feed;
pub mod fleet;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod publish;
pub mod server;
pub mod sys;
pub mod tuning;
pub mod uring;
