//! The call's policy, sans-IO: time comes in as `now`, decisions go out as actions, and the
//! driver carries them out on the swarm. Nothing here touches a socket, a task or the clock,
//! so every rule is tested in virtual time (`tests.rs`).
//!
//! * [`join`] — whom to dial and when (bootstrap members, members a roster names, members
//!   found at a relay's rendezvous, lost members to redial), when to ask the rendezvous, and
//!   when to give up joining (refusals, unreachable relays, the join timeout).
//! * [`path`] — one member's connections: direct, relayed, or punched (relayed, then
//!   direct), when to close a circuit after a hole punch, and when a broken session is judged.

pub mod join;
pub mod path;

pub use join::{JoinAction, JoinPolicy, JoinView};
pub use path::{Path, PathAction, PathState};

#[cfg(test)]
mod tests;
