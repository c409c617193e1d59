//! Which buffered points to send next, and when they may leave the buffer. Pure: the telemetry
//! task feeds it the clock, the buffer's [`Stats`], the link's state and the server's acks, and
//! does what it answers.
//!
//! Rules:
//! * Points go out in sequence order, in batches of at most `max_points`, with at most
//!   `max_in_flight` batches unacknowledged.
//! * A point leaves the buffer only when the server's `telemetry-ack` covers it and every point
//!   before it (the *watermark*: all sequence numbers `<= watermark` are acknowledged or were
//!   dropped). Acks may arrive out of order; ranges above the watermark wait in `pending`.
//! * An in-flight batch without an ack after `ack_timeout`, or a lost connection, sends the
//!   stream again from the watermark (go-back-N): duplicates are possible, loss is not, and the
//!   server removes duplicates by (device, sequence).
//! * Sending spends tokens from a bucket refilled at `rate` points per second up to `burst`,
//!   so a day of backlog drains at a pace the operator chose instead of saturating a cellular
//!   link; new points of a device that is online flow at once while the bucket has tokens.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use fleet_proto::telemetry::TelemetryAck;

use super::store::Stats;

/// Delivery settings (the `[telemetry]` configuration).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryConfig {
    /// Points per batch.
    pub max_points: usize,
    /// Batches sent and not yet acknowledged.
    pub max_in_flight: usize,
    /// How long to wait for an ack before sending again.
    pub ack_timeout: Duration,
    /// Drain rate, points per second.
    pub rate: f64,
    /// Points that may go out at once after a quiet spell.
    pub burst: f64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_points: 500,
            max_in_flight: 4,
            ack_timeout: Duration::from_secs(30),
            rate: 1000.0,
            burst: 2000.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flight {
    first: u64,
    last: u64,
    sent_at: Instant,
}

/// The delivery state of one device's stream.
#[derive(Debug, Clone)]
pub struct Delivery {
    cfg: DeliveryConfig,
    /// Next sequence number to send.
    next: u64,
    /// Every sequence number below this is acknowledged or dropped.
    acked_below: u64,
    /// Acknowledged ranges above the watermark, first → last.
    pending: BTreeMap<u64, u64>,
    flights: VecDeque<Flight>,
    tokens: f64,
    refilled_at: Instant,
    /// Batches sent again after a timeout or reconnect (for the status and tests).
    pub resends: u64,
}

/// A batch to send: sequence numbers `first..first + max_points` at most (read from the
/// buffer; it may hold fewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send {
    /// First sequence number.
    pub first: u64,
    /// Most points to read.
    pub max_points: usize,
}

impl Delivery {
    /// Starts a stream at the buffer's oldest point.
    pub fn new(cfg: DeliveryConfig, stats: &Stats, now: Instant) -> Delivery {
        Delivery {
            cfg,
            next: stats.oldest,
            acked_below: stats.oldest,
            pending: BTreeMap::new(),
            flights: VecDeque::new(),
            tokens: cfg.burst,
            refilled_at: now,
            resends: 0,
        }
    }

    /// The watermark: the buffer may delete every point `< acked_below()`.
    pub fn acked_below(&self) -> u64 {
        self.acked_below
    }

    /// Batches in flight.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    /// What to send now, if anything (`online`: the link is connected).
    pub fn next_send(&mut self, now: Instant, stats: &Stats, online: bool) -> Option<Send> {
        self.refill(now);
        // Points dropped by the buffer are gone: skip them, and they need no ack.
        if stats.oldest > self.acked_below {
            self.acked_below = stats.oldest;
            self.pending = self.pending.split_off(&stats.oldest);
            self.flights.retain(|f| f.last >= stats.oldest);
        }
        self.next = self.next.max(stats.oldest);
        if !online || self.flights.len() >= self.cfg.max_in_flight || self.next >= stats.next_seq {
            return None;
        }
        let available = (stats.next_seq - self.next) as f64;
        let n = available.min(self.cfg.max_points as f64).min(self.tokens.floor());
        // Wait for a full batch's worth of tokens when there is a backlog (fewer, bigger batches);
        // anything less than a batch waiting goes as soon as the bucket covers it.
        if n < 1.0 || (n < available.min(self.cfg.max_points as f64)) {
            return None;
        }
        Some(Send { first: self.next, max_points: n as usize })
    }

    /// `first..=last` was handed to the link.
    pub fn sent(&mut self, first: u64, last: u64, now: Instant) {
        self.tokens -= (last - first + 1) as f64;
        self.next = last + 1;
        self.flights.push_back(Flight { first, last, sent_at: now });
    }

    /// The server stored `ack.first..=ack.last`. Returns the new watermark if it moved (the
    /// buffer deletes everything below it).
    pub fn on_ack(&mut self, ack: TelemetryAck) -> Option<u64> {
        if ack.last < ack.first || ack.last < self.acked_below {
            return None;
        }
        let before = self.acked_below;
        if ack.first <= self.acked_below {
            self.acked_below = ack.last + 1;
        } else {
            let e = self.pending.entry(ack.first).or_insert(ack.last);
            *e = (*e).max(ack.last);
        }
        // Ranges that now touch the watermark join it.
        while let Some((&first, &last)) = self.pending.first_key_value() {
            if first > self.acked_below {
                break;
            }
            self.acked_below = self.acked_below.max(last + 1);
            self.pending.pop_first();
        }
        let below = self.acked_below;
        self.flights.retain(|f| f.last >= below && !(f.first == ack.first && f.last == ack.last));
        self.next = self.next.max(below);
        (below > before).then_some(below)
    }

    /// Checks ack timeouts; returns `true` if the stream was rewound to the watermark.
    pub fn on_tick(&mut self, now: Instant) -> bool {
        match self.flights.front() {
            Some(f) if now.duration_since(f.sent_at) >= self.cfg.ack_timeout => {
                self.rewind();
                true
            }
            _ => false,
        }
    }

    /// The connection was lost: what was in flight is sent again after the reconnect.
    pub fn on_disconnect(&mut self) {
        if !self.flights.is_empty() {
            self.rewind();
        }
    }

    /// When the next send could happen if the bucket is what holds it back.
    pub fn tokens_ready_in(&self, want: usize) -> Duration {
        let missing = (want.min(self.cfg.max_points) as f64 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.cfg.rate.max(1e-9))
    }

    fn rewind(&mut self) {
        self.resends += self.flights.len() as u64;
        self.flights.clear();
        self.pending.clear();
        self.next = self.acked_below;
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.cfg.rate).min(self.cfg.burst);
        self.refilled_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(oldest: u64, next_seq: u64) -> Stats {
        Stats { oldest, next_seq, points: next_seq - oldest, ..Stats::default() }
    }
    fn cfg() -> DeliveryConfig {
        DeliveryConfig {
            max_points: 10,
            max_in_flight: 2,
            ack_timeout: Duration::from_secs(5),
            rate: 100.0,
            burst: 20.0,
        }
    }
    fn ack(first: u64, last: u64) -> TelemetryAck {
        TelemetryAck { first, last }
    }

    #[test]
    fn sends_in_order_within_the_window_and_acks_move_the_watermark() {
        let t = Instant::now();
        let s = stats(0, 25);
        let mut d = Delivery::new(cfg(), &stats(0, 0), t);
        let a = d.next_send(t, &s, true).unwrap();
        assert_eq!(a, Send { first: 0, max_points: 10 });
        d.sent(0, 9, t);
        let b = d.next_send(t, &s, true).unwrap();
        assert_eq!(b.first, 10);
        d.sent(10, 19, t);
        // Window full.
        assert_eq!(d.next_send(t, &s, true), None);
        // Out of order: the second ack waits for the first.
        assert_eq!(d.on_ack(ack(10, 19)), None);
        assert_eq!(d.in_flight(), 1);
        assert_eq!(d.on_ack(ack(0, 9)), Some(20));
        assert_eq!(d.in_flight(), 0);
        // A duplicate ack changes nothing.
        assert_eq!(d.on_ack(ack(0, 9)), None);
    }

    #[test]
    fn offline_sends_nothing_and_a_lost_connection_resends_from_the_watermark() {
        let t = Instant::now();
        let s = stats(0, 30);
        let mut d = Delivery::new(cfg(), &stats(0, 0), t);
        assert_eq!(d.next_send(t, &s, false), None);
        d.sent(0, 9, t);
        d.sent(10, 19, t);
        d.on_ack(ack(0, 9));
        d.on_disconnect();
        assert_eq!(d.resends, 1);
        let again = d.next_send(t + Duration::from_secs(1), &s, true).unwrap();
        assert_eq!(again.first, 10, "everything unacknowledged goes again");
    }

    #[test]
    fn an_ack_timeout_rewinds() {
        let t = Instant::now();
        let s = stats(0, 10);
        let mut d = Delivery::new(cfg(), &stats(0, 0), t);
        d.sent(0, 9, t);
        assert!(!d.on_tick(t + Duration::from_secs(4)));
        assert!(d.on_tick(t + Duration::from_secs(5)));
        assert_eq!(d.next_send(t + Duration::from_secs(5), &s, true).unwrap().first, 0);
    }

    #[test]
    fn the_bucket_paces_a_backlog() {
        let t = Instant::now();
        let s = stats(0, 1000);
        let mut d = Delivery::new(cfg(), &stats(0, 0), t);
        let mut sent = 0;
        let mut now = t;
        // 1 s at 100 points/s with a burst of 20: 20 + 100 points, never more.
        while now <= t + Duration::from_secs(1) {
            if let Some(x) = d.next_send(now, &s, true) {
                let last = x.first + x.max_points as u64 - 1;
                d.sent(x.first, last, now);
                d.on_ack(ack(x.first, last));
                sent += x.max_points;
            }
            now += Duration::from_millis(10);
        }
        assert!((110..=120).contains(&sent), "sent {sent}");
    }

    #[test]
    fn dropped_points_are_skipped_and_need_no_ack() {
        let t = Instant::now();
        let mut d = Delivery::new(cfg(), &stats(0, 0), t);
        d.sent(0, 9, t);
        // The buffer dropped 0..15 to stay within its budget.
        let s = stats(15, 30);
        d.on_tick(t);
        let x = d.next_send(t, &s, true).unwrap();
        assert_eq!(x.first, 15);
        assert_eq!(d.acked_below(), 15);
    }
}
