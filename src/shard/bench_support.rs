//! A shard with many subscribers and no sockets, to measure the fan-out
//! path in isolation (`benches/fanout.rs`): the real `Shard::deliver`, with
//! each connection's send then completed as if the kernel took every byte.
//! Not used by the server.

use super::*;

pub struct FanoutBench {
    shard: Shard,
    channel: u64,
    seq: u64,
    iov: Vec<(*const u8, usize)>,
}

impl FanoutBench {
    /// A shard whose `connections` subscribers all listen on one channel.
    pub fn new(connections: usize) -> std::io::Result<FanoutBench> {
        let listener: OwnedFd = std::net::TcpListener::bind("127.0.0.1:0")?.into();
        let shared = Arc::new(Shared::new(
            1,
            16,
            crate::limits::PeerLimits::new(0, 0, false),
        ));
        let config = Arc::new(ShardConfig {
            high_water: 4 << 20,
            max_message: 64 << 10,
            echo_max_message: 1 << 20,
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
            echo: false,
            recv_buffers: 64,
            recv_buffer_size: 4096,
            max_subscriptions: 100,
            inbox_capacity: 16,
            client_rate: 50,
            max_connections: usize::MAX,
            max_connections_per_shard: usize::MAX,
            send_buffer: None,
            shared_listener: false,
            trusted_proxies: Vec::new(),
            auth: None,
            auth_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            max_request_header: 8192,
            client_bytes_rate: 65536,
        });
        let (_control_tx, control) = mpsc::unbounded_channel();
        let (_deliveries_tx, deliveries) = mpsc::channel(16);
        let inbox = Inboxes {
            control,
            deliveries,
        };
        let mut shard = Shard::new(0, listener, config, shared, inbox, Arc::new(Waker::new()?))?;
        for _ in 0..connections {
            let (slot, generation) = shard.conns.next_key();
            let mut conn = Conn::new(-1, generation);
            conn.phase = Phase::Open;
            conn.endpoint = Endpoint::Subscriber;
            conn.input = Input::Frames(None);
            shard.conns.insert(conn);
            shard
                .subscribe(slot, "bench", None)
                .map_err(|_| std::io::Error::other("channel table full"))?;
        }
        let channel = shard
            .shared
            .registry
            .get("bench")
            .map(|c| c.id)
            .ok_or_else(|| std::io::Error::other("no channel"))?;
        Ok(FanoutBench {
            shard,
            channel,
            seq: 0,
            iov: Vec::with_capacity(MAX_IOVECS_PER_SEND),
        })
    }

    /// Fans one message out to every subscriber, then completes each
    /// connection's send (what the kernel and the send completion would do).
    pub fn deliver(&mut self, frame: &Bytes) {
        self.seq += 1;
        self.shard.deliver(Delivery {
            channel: self.channel,
            seq: self.seq,
            frame: frame.clone(),
        });
        let list = std::mem::take(&mut self.shard.flush_list);
        for &slot in &list {
            let Some(conn) = self.shard.conns.get_mut(slot) else {
                continue;
            };
            conn.flush_pending = false;
            conn.out.start_send(MAX_IOVECS_PER_SEND, &mut self.iov);
            let written: usize = self.iov.iter().map(|(_, len)| len).sum();
            conn.out.sent(written);
        }
        self.shard.flush_list = list;
        self.shard.flush_list.clear();
    }
}
