//! Why a call could not start or had to end.

use std::sync::Arc;
use std::time::Duration;

use confab_protocol::room::AdmissionFailure;
use confab_protocol::wire::RejectReason;

use crate::media::audio::AudioError;
use crate::media::codec::CodecError;
use crate::net::relays::Refusal;
use crate::net::NetError;

/// Everything that can end a call before its time. Cheap to clone: it travels in events.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("admission refused by {peer}: {}", refusal_text(.reason))]
    Refused {
        peer: String,
        reason: AdmissionFailure,
    },
    #[error("could not reach any member of the room within {0:?}")]
    Unreachable(Duration),
    #[error("relay: {0}")]
    Relay(#[from] RelayFailure),
    #[error("this node is already in a call; leave it first")]
    Busy,
    #[error("the node has stopped")]
    NodeStopped,
    #[error(transparent)]
    Net(Arc<NetError>),
    #[error(transparent)]
    Audio(Arc<AudioError>),
    #[error(transparent)]
    Codec(Arc<CodecError>),
    #[error("cannot write {path}: {reason}")]
    Output { path: String, reason: String },
    /// A chat message that cannot be sent (empty or too long).
    #[error("chat message refused: {0}")]
    Chat(String),
}

/// Why no relay could carry the call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayFailure {
    /// Every relay refused us or could not be reached.
    #[error("no relay holds a reservation for this node, so nobody can reach it: {0}")]
    NoReservation(String),
    /// Every bootstrap member's relay refused the circuit.
    #[error("cannot reach the room's members through their relays: {}", .0.iter().map(|(p, r)| format!("{r} ({p})")).collect::<Vec<_>>().join("; "))]
    CircuitsRefused(Vec<(String, Refusal)>),
    /// A relay address given by the user is not usable.
    #[error("{0}")]
    BadAddress(String),
}

fn refusal_text(reason: &AdmissionFailure) -> String {
    match reason {
        AdmissionFailure::BadSecret | AdmissionFailure::Rejected(RejectReason::BadSecret) => {
            "wrong room secret (the ticket does not match the room)".to_string()
        }
        other => other.to_string(),
    }
}

impl CallError {
    /// Exit code: 2 for refusals (bad input), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CallError::Refused { .. } => 2,
            _ => 1,
        }
    }
}

impl From<NetError> for CallError {
    fn from(e: NetError) -> Self {
        CallError::Net(Arc::new(e))
    }
}

impl From<AudioError> for CallError {
    fn from(e: AudioError) -> Self {
        CallError::Audio(Arc::new(e))
    }
}

impl From<CodecError> for CallError {
    fn from(e: CodecError) -> Self {
        CallError::Codec(Arc::new(e))
    }
}
