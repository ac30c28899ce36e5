//! How long the model takes to set a connection up, from round-trip times: the same
//! formulas drive the engine (`sim::connect`) and the testbed's predictions
//! ([`crate::realnat::predict`]).

/// Set-up times of the model, in µs, given round-trip times in µs.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Round trips a transport handshake takes (`network.setup_rtts`).
    pub setup_rtts: f64,
}

impl Setup {
    fn handshake_us(&self, rtt_us: u64) -> u64 {
        (rtt_us as f64 * self.setup_rtts) as u64
    }

    /// A direct connection: the handshake, plus one more round trip when only the dialer is
    /// reachable (the listener is asked to dial back).
    pub fn direct_us(&self, rtt_direct_us: u64, listener_reachable: bool) -> u64 {
        self.handshake_us(rtt_direct_us) + if listener_reachable { 0 } else { rtt_direct_us }
    }

    /// A relayed connection: the handshake over the relay, then the circuit through it.
    pub fn relayed_us(&self, rtt_relay_us: u64) -> u64 {
        self.handshake_us(rtt_relay_us) + rtt_relay_us / 2
    }

    /// From the dial to the first DCUtR attempt's direct connection: the relayed connection,
    /// the Connect exchange over the circuit (one relayed round trip, which measures it),
    /// Sync after half of it, and the direct handshake.
    pub fn first_punch_us(&self, rtt_relay_us: u64, rtt_direct_us: u64) -> u64 {
        self.relayed_us(rtt_relay_us)
            + rtt_relay_us
            + rtt_relay_us / 2
            + self.handshake_us(rtt_direct_us)
    }

    /// From a failed DCUtR attempt to the next one.
    pub fn retry_us(&self, rtt_relay_us: u64, rtt_direct_us: u64) -> u64 {
        rtt_relay_us + rtt_relay_us / 2 + rtt_direct_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_punch_costs_a_relayed_round_trip_and_a_half_more_than_the_circuit() {
        let s = Setup { setup_rtts: 1.0 };
        assert_eq!(s.relayed_us(40_000), 60_000);
        assert_eq!(s.first_punch_us(40_000, 20_000), 60_000 + 60_000 + 20_000);
        assert_eq!(s.direct_us(20_000, true), 20_000);
        assert_eq!(s.direct_us(20_000, false), 40_000);
    }
}
