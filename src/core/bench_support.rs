//! A shard core with many subscribers and no sockets, to measure the fan-out
//! path in isolation (`benches/fanout.rs`): the real `ShardCore::deliver`,
//! with each connection's send then completed as if the kernel took every
//! byte. Not used by the server.

use super::*;

pub struct FanoutBench {
    core: ShardCore,
    channel: u64,
    seq: u64,
    iov: Vec<IoSlicePtr>,
}

impl FanoutBench {
    /// A core whose `connections` subscribers all listen on one channel.
    pub fn new(connections: usize) -> std::io::Result<FanoutBench> {
        let peers = crate::limits::PeerLimits::new(0, 0, 0, false);
        let shared = Arc::new(Shared::new(1, 16, peers, "bench".into(), 0));
        let mut core = ShardCore::new(0, Arc::new(CoreConfig::default()), shared, 0);
        for _ in 0..connections {
            let (key, conn) = core.conns.insert(-1);
            conn.phase = Phase::Open;
            conn.input = Input::Frames(None);
            let slot = key.slot;
            core.conns.upgraded(slot, Endpoint::Subscriber);
            core.subscribe(slot, "bench", None)
                .map_err(|_| std::io::Error::other("channel table full"))?;
        }
        let channel = core
            .shared
            .registry
            .get("bench")
            .map(|c| c.id)
            .ok_or_else(|| std::io::Error::other("no channel"))?;
        Ok(FanoutBench {
            core,
            channel,
            seq: 0,
            iov: Vec::with_capacity(MAX_SEND_PIECES),
        })
    }

    /// Fans one message out to every subscriber, then completes each
    /// connection's send (what the driver and the kernel would do).
    pub fn deliver(&mut self, frame: &Bytes) {
        self.seq += 1;
        self.core.deliver(Delivery {
            channel: self.channel,
            seq: self.seq,
            message: Encoded::plain(frame.clone()),
        });
        while let Some(action) = self.core.poll_action(&mut self.iov) {
            if let Action::Send { key, .. } = action {
                let written: usize = self.iov.iter().map(|(_, len)| len).sum();
                self.core.on_sent(key, SendResult::Wrote(written));
            }
        }
    }
}
