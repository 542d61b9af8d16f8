//! Channel names, as clients and publishers write them. Pure.

/// Channel used when a message or a subscriber names none.
pub const DEFAULT_CHANNEL: &str = "default";
/// Longest channel name.
pub const MAX_CHANNEL_NAME: usize = 128;

/// 1–128 bytes of `[A-Za-z0-9._:-]`: safe in JSON without escaping, in URLs,
/// in metric labels and in logs.
pub fn is_valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}
