//! What the simulator's model predicts for the members of a testbed call.

use confab_simulator::nat::Transport;
use confab_simulator::realnat::{predict, Home, Prediction, Rtts};

/// The transports the node punches over today: TCP (DCUtR on TCP addresses; the node has no
/// QUIC hole punching yet).
pub const TRANSPORTS: [Transport; 1] = [Transport::Tcp];

/// Round-trip times put into the model's set-up formulas: the testbed's links are veth
/// pairs, whose round trip (`ping` between namespaces) is well under a millisecond.
pub const RTTS: Rtts = Rtts {
    direct_ms: 0.1,
    relay_ms: 0.2,
};

/// The model's prediction for the connection between members `i` and `j` (either order):
/// the later member dials (joiners dial the room's creator from the ticket, and a member
/// dials those already in the roster it is sent).
pub fn pair(homes: &[Home], i: usize, j: usize, hairpin: bool) -> Prediction {
    predict_over(homes, i, j, hairpin, &TRANSPORTS)
}

/// [`pair`] for a node that punched over `transports`.
pub fn predict_over(
    homes: &[Home],
    i: usize,
    j: usize,
    hairpin: bool,
    transports: &[Transport],
) -> Prediction {
    let (dialer, listener) = (i.max(j), i.min(j));
    predict(homes[dialer], homes[listener], transports, hairpin, RTTS)
}
