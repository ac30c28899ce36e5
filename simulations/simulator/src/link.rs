//! Link models: Gilbert–Elliott burst loss and bandwidth-limited FIFO queues.

use crate::rng::SimRng;
use crate::scenario::GilbertElliott;

/// The state of one Gilbert–Elliott channel.
#[derive(Debug, Clone, Default)]
pub struct GeChannel {
    bad: bool,
}

impl GeChannel {
    /// Advances the chain by one packet and says whether that packet is lost.
    pub fn lose(&mut self, p: &GilbertElliott, rng: &mut SimRng) -> bool {
        if p.p_good_to_bad <= 0.0 && p.loss_good <= 0.0 && !self.bad {
            return false;
        }
        self.bad = if self.bad {
            !rng.chance(p.p_bad_to_good)
        } else {
            rng.chance(p.p_good_to_bad)
        };
        rng.chance(if self.bad { p.loss_bad } else { p.loss_good })
    }
}

/// Long-run loss rate of a Gilbert–Elliott channel.
pub fn ge_mean_loss(p: &GilbertElliott) -> f64 {
    let denom = p.p_good_to_bad + p.p_bad_to_good;
    if denom <= 0.0 {
        return p.loss_good;
    }
    let pi_bad = p.p_good_to_bad / denom;
    pi_bad * p.loss_bad + (1.0 - pi_bad) * p.loss_good
}

/// A FIFO link of fixed rate: packets are serialised one after the other.
#[derive(Debug, Clone)]
pub struct Pipe {
    /// Rate in bits per µs (= Mbit/s).
    bits_per_us: f64,
    busy_until_us: u64,
    /// Bytes that went through.
    pub bytes: u64,
}

impl Pipe {
    pub fn new(kbps: f64) -> Self {
        Self {
            bits_per_us: (kbps / 1000.0).max(1e-6),
            busy_until_us: 0,
            bytes: 0,
        }
    }

    /// Backlog in µs at `now`.
    pub fn backlog_us(&self, now: u64) -> u64 {
        self.busy_until_us.saturating_sub(now)
    }

    /// Sends `bytes` entering at `at`; returns when the last bit has left.
    pub fn send(&mut self, at: u64, bytes: u32) -> u64 {
        let ser = (f64::from(bytes) * 8.0 / self.bits_per_us).ceil() as u64;
        let start = self.busy_until_us.max(at);
        self.busy_until_us = start + ser;
        self.bytes += u64::from(bytes);
        self.busy_until_us
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn gilbert_elliott_matches_its_stationary_loss() {
        let p = GilbertElliott {
            p_good_to_bad: 0.02,
            p_bad_to_good: 0.25,
            loss_good: 0.001,
            loss_bad: 0.3,
        };
        let mut rng = SimRng::new(3);
        let mut ch = GeChannel::default();
        let n = 200_000;
        let lost = (0..n).filter(|_| ch.lose(&p, &mut rng)).count();
        let rate = lost as f64 / n as f64;
        let expect = ge_mean_loss(&p);
        assert!((rate - expect).abs() < 0.005, "{rate} vs {expect}");
    }

    #[test]
    fn pipe_serialises_back_to_back() {
        let mut p = Pipe::new(1000.0); // 1 Mbit/s: 125 bytes per ms
        assert_eq!(p.send(0, 125), 1000);
        assert_eq!(p.send(0, 125), 2000);
        assert_eq!(p.backlog_us(500), 1500);
        assert_eq!(p.send(10_000, 125), 11_000);
    }
}
