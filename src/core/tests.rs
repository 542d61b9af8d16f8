//! In-memory tests of the shard core, with simulated time.
