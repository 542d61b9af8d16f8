//! Out-queues and sends: one send in flight per connection, everything
//! queued meanwhile in the next; the high-water mark.

use super::*;

impl ShardCore {
    // ----- sending -----

    pub(super) fn enqueue(&mut self, slot: u32, frame: FrameRef) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let n = conn.out.push(frame);
        self.note_queued(slot, n);
        self.schedule_flush(slot);
    }

    /// Queues a notice for `slot`.
    pub(super) fn enqueue_text(&mut self, slot: u32, text: &str) {
        let frame = self.notice_frame(slot, text);
        self.enqueue(slot, frame);
    }

    /// A notice (JSON with a `type`) as `slot` takes it: a text frame, or on
    /// an event stream an event named by its type.
    pub(super) fn notice_frame(&self, slot: u32, text: &str) -> FrameRef {
        let on_stream = self.conns.get(slot).is_some_and(|c| c.sse.is_some());
        if !on_stream {
            return text_frame(text);
        }
        let kind = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "notice".to_owned());
        Rc::new(Bytes::from(crate::protocol::sse::notice(
            &kind,
            text.as_bytes(),
        )))
    }

    /// The event-stream state of `slot`, if it is an event stream.
    pub(super) fn sse_state(&mut self, slot: u32) -> Option<&mut conn::SseState> {
        self.conns.get_mut(slot)?.sse.as_deref_mut()
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
        let stream = conn.sse.is_some();
        self.note_unqueued(released);
        if stream {
            // An event stream has no close frame: it ends, and EventSource
            // reconnects with the id of the last event it got.
            self.stats.add(Counter::SlowSseCuts, 1);
            return self.close_with(slot, None, CloseReason::SlowClient);
        }
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
        self.conns.schedule_flush(slot);
    }

    /// Takes the next connection off the flush list (`None`: the list is
    /// empty) and starts a send of everything it has queued, unless one is in
    /// flight (its completion schedules the next). With nothing left to send,
    /// a closing connection moves on to shutting down its write side.
    pub(super) fn flush_next(&mut self, iov: &mut Vec<IoSlicePtr>) -> Option<Option<Action>> {
        let (slot, conn) = self.conns.next_flush()?;
        if conn.phase == Phase::Releasing || conn.out.send_in_flight() {
            return Some(None);
        }
        if !conn.out.is_empty() {
            conn.out.start_send(MAX_SEND_PIECES, iov);
            let key = ConnKey {
                slot,
                generation: conn.generation,
            };
            return Some(Some(Action::Send { key, fd: conn.fd }));
        }
        if conn.phase == Phase::Closing {
            self.linger(slot);
        }
        Some(None)
    }

    /// The send the driver was asked for ended.
    pub fn on_sent(&mut self, key: ConnKey, result: SendResult) {
        let Some(slot) = self.live_slot(key) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let releasing = conn.phase == Phase::Releasing;
        match result {
            SendResult::Wrote(n) => {
                conn.out.sent(n);
            }
            SendResult::PeerGone | SendResult::Failed => conn.out.abandon_in_flight(),
        }
        // A resuming client gets its next batch of history once its queue
        // has drained well below the batch size.
        let wants_replay =
            conn.replay.is_some() && conn.out.queued_bytes() < self.config.high_water / 16;
        self.stats.add(Counter::SendCalls, 1);
        if let SendResult::Wrote(n) = result
            && n > 0
        {
            self.stats.add(Counter::BytesSent, n as u64);
            self.note_unqueued(n as u64);
        }
        if releasing {
            return;
        }
        match result {
            SendResult::Wrote(_) => {
                if wants_replay {
                    self.refill(slot);
                }
                // Whatever was queued during the send leaves now, in one go;
                // a closing connection goes on to shut its write side. Idle
                // ones stay off the flush list (most, at low rates).
                if self
                    .conns
                    .get(slot)
                    .is_some_and(|c| !c.out.is_empty() || c.phase == Phase::Closing)
                {
                    self.schedule_flush(slot);
                }
            }
            SendResult::PeerGone => self.release(slot, true, CloseReason::PeerGone),
            SendResult::Failed => {
                tracing::debug!(slot, "send failed");
                self.release(slot, true, CloseReason::Error);
            }
        }
    }

    /// The driver cannot write to `key` now (its socket buffer is full): the
    /// send it was asked for did not start. [`ShardCore::on_writable`] resumes.
    pub fn send_deferred(&mut self, key: ConnKey) {
        if let Some(slot) = self.live_slot(key)
            && let Some(conn) = self.conns.get_mut(slot)
        {
            conn.out.abandon_in_flight();
        }
    }

    /// The socket of `key` takes bytes again.
    pub fn on_writable(&mut self, key: ConnKey) {
        if let Some(slot) = self.live_slot(key) {
            self.schedule_flush(slot);
        }
    }
}

/// A notice as a queueable text frame.
pub(super) fn text_frame(text: &str) -> FrameRef {
    Rc::new(encode_server_frame(OpCode::Text, text.as_bytes()))
}
