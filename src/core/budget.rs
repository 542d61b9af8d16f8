//! What a WebSocket client may send: a token bucket for messages, one for
//! bytes, one for the channels it creates, and a count of invalid control
//! messages.

/// Invalid control messages tolerated (each answered with an error notice)
/// before the client is closed with 1008.
const MAX_STRIKES: u8 = 10;

/// The rates every client of a shard gets, with bucket sizes worked out once.
#[derive(Debug, Clone, Copy)]
pub struct BudgetRates {
    /// Messages per second.
    message_rate: u32,
    /// Bucket size in thousandths of a message: two seconds' worth.
    message_bucket: u32,
    /// Bytes per second.
    byte_rate: u32,
    /// Bucket size: two seconds' worth, or two maximal messages.
    byte_bucket: u32,
    /// New channels: a connection's whole subscription allowance at once,
    /// then that many per minute (in thousandths of a channel per ms).
    channel_bucket: u32,
}

impl BudgetRates {
    pub fn new(
        messages_per_second: u32,
        bytes_per_second: u32,
        max_message: usize,
        max_subscriptions: usize,
    ) -> Self {
        let two_messages = (2 * max_message + 1024).min(u32::MAX as usize) as u32;
        let subscriptions = max_subscriptions.min(1 << 20) as u32;
        BudgetRates {
            message_rate: messages_per_second,
            message_bucket: messages_per_second.saturating_mul(2000),
            byte_rate: bytes_per_second,
            byte_bucket: bytes_per_second.saturating_mul(2).max(two_messages),
            channel_bucket: subscriptions * 1000,
        }
    }

    /// Thousandths of a channel regained per ms: the bucket once a minute.
    fn channel_refill(&self, elapsed_ms: u32) -> u32 {
        (u64::from(elapsed_ms) * u64::from(self.channel_bucket) / 60_000).min(u64::from(u32::MAX))
            as u32
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    Messages,
    Bytes,
}

impl Exhausted {
    pub fn what(self) -> &'static str {
        match self {
            Exhausted::Messages => "messages",
            Exhausted::Bytes => "bytes",
        }
    }
}

/// One client's budgets. Time is the shard clock in ms, truncated to 32 bits
/// (differences are taken wrapping, so the truncation never matters).
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientBudget {
    /// Thousandths of a message.
    messages: u32,
    bytes: u32,
    /// Thousandths of a new channel.
    channels: u32,
    refilled_at: u32,
    channels_refilled_at: u32,
    strikes: u8,
}

impl ClientBudget {
    /// Full buckets, as a client starts.
    pub fn full(rates: &BudgetRates, now_ms: u64) -> Self {
        ClientBudget {
            messages: rates.message_bucket,
            bytes: rates.byte_bucket,
            channels: rates.channel_bucket,
            refilled_at: now_ms as u32,
            channels_refilled_at: now_ms as u32,
            strikes: 0,
        }
    }

    /// Spends `messages` and `bytes`, after refilling for the time elapsed.
    /// Nothing is spent when either budget is short.
    pub fn spend(
        &mut self,
        rates: &BudgetRates,
        now_ms: u64,
        messages: u64,
        bytes: usize,
    ) -> Result<(), Exhausted> {
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.refilled_at);
        self.refilled_at = now;
        self.messages = self
            .messages
            .saturating_add(elapsed.saturating_mul(rates.message_rate))
            .min(rates.message_bucket);
        // byte_rate is per second, elapsed in ms.
        let refill = (u64::from(elapsed) * u64::from(rates.byte_rate) / 1000)
            .min(u64::from(u32::MAX)) as u32;
        self.bytes = self.bytes.saturating_add(refill).min(rates.byte_bucket);
        let cost = (messages.min(u64::from(u32::MAX)) as u32).saturating_mul(1000);
        if self.messages < cost {
            return Err(Exhausted::Messages);
        }
        let bytes = bytes.min(u32::MAX as usize) as u32;
        if self.bytes < bytes {
            return Err(Exhausted::Bytes);
        }
        self.messages -= cost;
        self.bytes -= bytes;
        Ok(())
    }

    /// Spends one new channel; false when the connection has created its
    /// allowance within the last minute.
    pub fn create_channel(&mut self, rates: &BudgetRates, now_ms: u64) -> bool {
        let now = now_ms as u32;
        let elapsed = now.wrapping_sub(self.channels_refilled_at);
        self.channels_refilled_at = now;
        self.channels = self
            .channels
            .saturating_add(rates.channel_refill(elapsed))
            .min(rates.channel_bucket);
        if self.channels < 1000 {
            return false;
        }
        self.channels -= 1000;
        true
    }

    /// Counts one invalid message; true once the client has sent too many.
    pub fn strike(&mut self) -> bool {
        self.strikes = self.strikes.saturating_add(1);
        self.strikes > MAX_STRIKES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_two_seconds_then_the_rate() {
        let rates = BudgetRates::new(10, 1 << 20, 1024, 100);
        let mut budget = ClientBudget::full(&rates, 0);
        assert_eq!(budget.spend(&rates, 0, 20, 0), Ok(()));
        assert_eq!(
            budget.spend(&rates, 0, 1, 0),
            Err(Exhausted::Messages),
            "the burst is two seconds' worth"
        );
        // 100 ms at 10/s buys one message.
        assert_eq!(budget.spend(&rates, 100, 1, 0), Ok(()));
        assert_eq!(budget.spend(&rates, 100, 1, 0), Err(Exhausted::Messages));
        // A long pause refills to the bucket size, no more.
        assert_eq!(budget.spend(&rates, 60_000, 20, 0), Ok(()));
        assert_eq!(budget.spend(&rates, 60_000, 1, 0), Err(Exhausted::Messages));
    }

    #[test]
    fn bytes_are_budgeted_and_nothing_is_spent_when_short() {
        let rates = BudgetRates::new(1000, 1000, 100, 100);
        let mut budget = ClientBudget::full(&rates, 0);
        // Bucket: max(2 s × 1000 B, 2 × 100 + 1024) = 2000 bytes.
        assert_eq!(budget.spend(&rates, 0, 1, 2001), Err(Exhausted::Bytes));
        assert_eq!(budget.spend(&rates, 0, 1, 2000), Ok(()));
        assert_eq!(budget.spend(&rates, 0, 1, 1), Err(Exhausted::Bytes));
        assert_eq!(
            budget.spend(&rates, 10, 1, 10),
            Ok(()),
            "10 ms buys 10 bytes"
        );
    }

    #[test]
    fn the_clock_may_wrap() {
        let rates = BudgetRates::new(10, 1000, 100, 100);
        let start = u64::from(u32::MAX) - 50;
        let mut budget = ClientBudget::full(&rates, start);
        assert_eq!(budget.spend(&rates, start, 20, 0), Ok(()));
        assert_eq!(budget.spend(&rates, start + 100, 1, 0), Ok(()));
    }

    #[test]
    fn new_channels_a_subscription_allowance_per_minute() {
        let rates = BudgetRates::new(10, 1000, 100, 4);
        let mut budget = ClientBudget::full(&rates, 0);
        for _ in 0..4 {
            assert!(budget.create_channel(&rates, 0));
        }
        assert!(!budget.create_channel(&rates, 0));
        assert!(
            !budget.create_channel(&rates, 14_000),
            "a quarter minute buys less than one"
        );
        assert!(budget.create_channel(&rates, 15_000 + 14_000));
        assert!(!budget.create_channel(&rates, 29_000));
        // A long pause refills to the allowance, no more.
        for _ in 0..4 {
            assert!(budget.create_channel(&rates, 10_000_000));
        }
        assert!(!budget.create_channel(&rates, 10_000_000));
    }

    #[test]
    fn strikes_run_out() {
        let mut budget = ClientBudget::default();
        for _ in 0..MAX_STRIKES {
            assert!(!budget.strike());
        }
        assert!(budget.strike());
    }
}
