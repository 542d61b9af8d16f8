//! The io_uring layer: a driver that submits accepts, multishot receives
//! into a provided-buffer ring, vectored sends and cancellations, and reaps
//! completions. The shards run on it; so do the load generator
//! (`ringcast bench`) and the bare-sender baseline in `examples/`, so the
//! three are compared on the same I/O machinery.

pub mod bufring;
pub mod driver;

pub use driver::{Completion, Driver, MAX_IOVECS_PER_SEND, Op};
