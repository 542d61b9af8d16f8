//! Out-queues and sends: one send in flight per connection, everything
//! queued meanwhile in the next; the high-water mark.

use super::*;

impl Shard {
    // ----- sending -----

    pub(super) fn enqueue(&mut self, slot: u32, frame: FrameRef) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let n = conn.out.push(frame);
        self.note_queued(slot, n);
        self.schedule_flush(slot);
    }

    /// Queues a text frame (a notice) for `slot`.
    pub(super) fn enqueue_text(&mut self, slot: u32, text: &str) {
        self.enqueue(slot, text_frame(text));
    }

    /// Accounts for `n` bytes just queued on `slot`, and cuts the client if
    /// its queue is now over the high-water mark.
    pub(super) fn note_queued(&mut self, slot: u32, n: u64) {
        if n == 0 {
            return;
        }
        let total = self.stats.gauge(Gauge::QueuedBytes) + n;
        self.stats.set(Gauge::QueuedBytes, total);
        let Some(conn) = self.conns.get(slot) else {
            return;
        };
        let queued = conn.out.queued_bytes();
        if queued > self.stats.gauge(Gauge::QueuedBytesPeak) {
            self.stats.set(Gauge::QueuedBytesPeak, queued);
        }
        if queued > self.high_water_of(conn.endpoint) && !conn.is_closing() {
            self.cut_slow_client(slot);
        }
    }

    /// Queue limit of a connection. `/echo` may legitimately hold a couple of
    /// its (large) messages, so its limit follows its message limit.
    pub(super) fn high_water_of(&self, endpoint: Endpoint) -> u64 {
        match endpoint {
            Endpoint::Echo => self
                .config
                .high_water
                .max(2 * self.config.echo_max_message as u64 + 64),
            _ => self.config.high_water,
        }
    }

    /// The client fell too far behind: free its backlog at once, send 4008
    /// if the socket still takes it, and reset it after the close grace.
    pub(super) fn cut_slow_client(&mut self, slot: u32) {
        let Some(endpoint) = self.conns.get(slot).map(|c| c.endpoint) else {
            return;
        };
        let limit = self.high_water_of(endpoint);
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let released = conn.out.drop_unsent();
        self.note_unqueued(released);
        self.stats.add(Counter::SlowClientCuts, 1);
        let reason = format!(
            "slow consumer: more than {limit} bytes queued; reconnect with since= to resume"
        );
        self.close_with(
            slot,
            Some(encode_close_frame(4008, &reason)),
            CloseReason::SlowClient,
        );
    }

    pub(super) fn note_unqueued(&mut self, n: u64) {
        let total = self.stats.gauge(Gauge::QueuedBytes).saturating_sub(n);
        self.stats.set(Gauge::QueuedBytes, total);
    }

    pub(super) fn schedule_flush(&mut self, slot: u32) {
        if let Some(conn) = self.conns.get_mut(slot)
            && !conn.flush_pending
        {
            conn.flush_pending = true;
            self.flush_list.push(slot);
        }
    }

    pub(super) fn flush_all(&mut self) {
        let list = std::mem::take(&mut self.flush_list);
        for &slot in &list {
            self.flush(slot);
        }
        self.flush_list = list;
        self.flush_list.clear();
    }

    /// Starts a send of everything queued, unless one is in flight (its
    /// completion will start the next). With nothing left to send, a closing
    /// connection moves on to shutting down its write side.
    pub(super) fn flush(&mut self, slot: u32) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.flush_pending = false;
        if conn.phase == Phase::Releasing || conn.out.send_in_flight() {
            return;
        }
        if !conn.out.is_empty() {
            conn.out.start_send(MAX_IOVECS_PER_SEND, &mut self.iov);
            let (fd, generation) = (conn.fd, conn.generation);
            // SAFETY: the iovecs point into frames held by `conn.out` until
            // this send completes (`sent`) or is abandoned after its
            // completion arrives; the connection is not freed while a send
            // is in flight (see `try_finish`).
            let r = unsafe { self.driver.send(fd, slot, generation, &self.iov) };
            if r.is_err() {
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.out.abandon_in_flight();
                }
                self.release(slot, true, CloseReason::Error);
                return;
            }
            self.stats.add(Counter::SendCalls, 1);
            return;
        }
        if conn.phase == Phase::Closing {
            self.linger(slot);
        }
    }

    pub(super) fn on_send(&mut self, c: Completion) {
        let Some(conn) = self
            .conns
            .get_mut(c.slot)
            .filter(|conn| c.matches_generation(conn.generation))
        else {
            return;
        };
        let releasing = conn.phase == Phase::Releasing;
        if c.result >= 0 {
            conn.out.sent(c.result as usize);
        } else {
            conn.out.abandon_in_flight();
        }
        // A resuming client gets its next batch of history once its queue
        // has drained well below the batch size.
        let wants_replay =
            conn.replay.is_some() && conn.out.queued_bytes() < self.config.high_water / 16;
        if c.result > 0 {
            self.stats.add(Counter::BytesSent, c.result as u64);
            self.note_unqueued(c.result as u64);
        }
        if releasing {
            self.try_finish(c.slot);
        } else if c.result >= 0 {
            if wants_replay {
                self.refill(c.slot);
            }
            // Whatever was queued during the send leaves now, in one go.
            self.flush(c.slot);
        } else {
            tracing::debug!(slot = c.slot, errno = -c.result, "send failed");
            self.release(c.slot, true, CloseReason::PeerGone);
        }
    }
}

/// A notice as a queueable text frame.
pub(super) fn text_frame(text: &str) -> FrameRef {
    Rc::new(encode_server_frame(OpCode::Text, text.as_bytes()))
}
