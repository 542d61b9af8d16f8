//! Whether a WebSocket client is still there: ping when the interval ends,
//! close when a ping goes unanswered (by anything at all) for the timeout.

/// What to do when a connection's heartbeat deadline comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send a ping; the next deadline is the timeout.
    Ping,
    /// The last ping was answered; the next ping is due one interval after it.
    Answered,
    /// Nothing was heard since the last ping: the client is gone.
    Silent,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Heartbeat {
    /// A ping is unanswered.
    outstanding: bool,
    /// Something arrived from the peer since the last ping.
    heard: bool,
}

impl Heartbeat {
    /// Anything from the peer counts as an answer, not only a pong: a busy
    /// client's pong may queue behind its messages.
    pub fn heard(&mut self) {
        self.heard = true;
    }

    pub fn on_due(&mut self) -> Beat {
        if !self.outstanding {
            self.outstanding = true;
            self.heard = false;
            return Beat::Ping;
        }
        if !self.heard {
            return Beat::Silent;
        }
        self.outstanding = false;
        Beat::Answered
    }

    /// Starts a new cycle (the client proved itself alive another way).
    pub fn restart(&mut self) {
        self.outstanding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_then_answer_then_ping_then_silence() {
        let mut beat = Heartbeat::default();
        assert_eq!(beat.on_due(), Beat::Ping);
        beat.heard();
        assert_eq!(beat.on_due(), Beat::Answered);
        assert_eq!(beat.on_due(), Beat::Ping);
        assert_eq!(beat.on_due(), Beat::Silent);
    }

    #[test]
    fn what_was_heard_before_the_ping_does_not_answer_it() {
        let mut beat = Heartbeat::default();
        beat.heard();
        assert_eq!(beat.on_due(), Beat::Ping);
        assert_eq!(beat.on_due(), Beat::Silent);
    }

    #[test]
    fn restart_begins_a_new_cycle() {
        let mut beat = Heartbeat::default();
        assert_eq!(beat.on_due(), Beat::Ping);
        beat.restart();
        assert_eq!(beat.on_due(), Beat::Ping);
    }
}
