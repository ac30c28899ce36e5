//! The call's side of its event queue: bounded, and never blocking the driver.
//!
//! Events other than statistics ticks wait in a bounded backlog when the consumer is slow
//! (a consumer that never reads loses the oldest beyond [`BACKLOG`], counted); ticks are sent
//! only when nothing is waiting, else dropped and counted.

use std::collections::VecDeque;

use tokio::sync::mpsc;

use super::events::CallEvent;

/// Most events held back for a slow consumer.
pub const BACKLOG: usize = 1024;

pub struct EventOut {
    tx: mpsc::Sender<CallEvent>,
    backlog: VecDeque<CallEvent>,
    pub ticks_dropped: u64,
    pub events_dropped: u64,
}

impl EventOut {
    pub fn new(tx: mpsc::Sender<CallEvent>) -> Self {
        Self {
            tx,
            backlog: VecDeque::new(),
            ticks_dropped: 0,
            events_dropped: 0,
        }
    }

    /// Queues an event that must not be lost to ticks.
    pub fn emit(&mut self, ev: CallEvent) {
        if self.backlog.len() >= BACKLOG {
            self.backlog.pop_front();
            self.events_dropped += 1;
        }
        self.backlog.push_back(ev);
        self.flush();
    }

    /// Sends a statistics tick if the consumer keeps up.
    pub fn tick(&mut self, ev: CallEvent) {
        self.flush();
        if !self.backlog.is_empty() || self.tx.try_send(ev).is_err() {
            self.ticks_dropped += 1;
        }
    }

    /// Moves the backlog into the queue as far as it has room.
    pub fn flush(&mut self) {
        while let Some(ev) = self.backlog.pop_front() {
            match self.tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.backlog.push_front(ev);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    return;
                }
            }
        }
    }

    /// The call is over: what is left is delivered by a task of its own, so the driver
    /// goes on at once.
    pub fn close(mut self) {
        self.flush();
        if self.backlog.is_empty() {
            return;
        }
        let tx = self.tx;
        let backlog = std::mem::take(&mut self.backlog);
        tokio::spawn(async move {
            for ev in backlog {
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
    }
}
