//! What changed in the store, for the copies an instance keeps in memory: deployments (read
//! on every call to `agent/#N/environment`) and the virtual keys (read by the key registry).
//!
//! On an embedded store every change goes through this process: the writer says so here. On
//! a shared database the other instances write too: the PostgreSQL backend listens for their
//! notifications on a connection of its own (`postgres/listen.rs`) and reports them here,
//! within milliseconds of their commit. While it is not listening (before its first
//! connection, after a loss until it is back), notifications may be missed: the feed is then
//! not [`live`](Changes::deployments_epoch), and readers go to the store every time, as if
//! there were no copy. When it listens again, everything counts as changed.
//!
//! A change is an epoch that moves: a copy taken at an epoch is good while the epoch has not
//! moved (and, as a safety net, for a few seconds at most). Reading an epoch is one atomic
//! load, off the request path's locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::watch;

/// What a store's writers changed; shared by every handle on the store (an `Arc`).
pub struct Changes {
    /// Moves with every deployment made (on any instance, when live).
    deployments: AtomicU64,
    /// Moves with every key made, changed or revoked; watched by the key registry.
    keys: watch::Sender<u64>,
    /// Whether every change reaches this feed: always on an embedded store; on a shared
    /// database, while the listener is connected.
    live: AtomicBool,
    /// Whether other processes write the store too.
    shared: bool,
    /// `flowgate_storage_listener_connected`: 1 while the change listener is connected.
    pub listener_connected: IntGauge,
    /// `flowgate_storage_listener_reconnects_total`: connections the listener made again
    /// after losing one.
    pub listener_reconnects: IntCounter,
}

/// What a notification says changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Deployments,
    Keys,
}

impl Change {
    /// The notification's payload.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Deployments => "deployments",
            Change::Keys => "keys",
        }
    }

    /// A payload read back; `None` for one this release does not know (a newer instance's).
    pub fn parse(payload: &str) -> Option<Change> {
        match payload {
            "deployments" => Some(Change::Deployments),
            "keys" => Some(Change::Keys),
            _ => None,
        }
    }
}

impl Changes {
    /// The feed of a store only this process writes: live from the start.
    pub fn local() -> Changes {
        Changes::new(false)
    }

    /// The feed of a store other instances write too: not live until its listener says so.
    pub fn shared() -> Changes {
        Changes::new(true)
    }

    fn new(shared: bool) -> Changes {
        Changes {
            deployments: AtomicU64::new(0),
            keys: watch::Sender::new(0),
            live: AtomicBool::new(!shared),
            shared,
            listener_connected: IntGauge::new(
                "flowgate_storage_listener_connected",
                "1 while the connection that hears other instances' changes (PostgreSQL \
                 LISTEN) is up; 0 while it reconnects (copies are not used meanwhile)",
            )
            .expect("a valid metric"),
            listener_reconnects: IntCounter::new(
                "flowgate_storage_listener_reconnects_total",
                "Times the change listener connected again after losing its connection",
            )
            .expect("a valid metric"),
        }
    }

    /// Whether other processes write the store too.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether every change reaches this feed now.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The deployments' epoch, if the feed is live: a copy of a deployment read after this
    /// epoch was taken stays good while it is the current one. `None`: do not keep copies.
    pub fn deployments_epoch(&self) -> Option<u64> {
        if !self.is_live() {
            return None;
        }
        Some(self.deployments.load(Ordering::Acquire))
    }

    /// The keys' epoch, which moves with every key change; `changed()` on it wakes the key
    /// registry.
    pub fn watch_keys(&self) -> watch::Receiver<u64> {
        self.keys.subscribe()
    }

    /// Reports a change (a write of this process, or a notification of another's).
    pub fn changed(&self, change: Change) {
        match change {
            Change::Deployments => {
                self.deployments.fetch_add(1, Ordering::AcqRel);
            }
            Change::Keys => {
                self.keys.send_modify(|epoch| *epoch += 1);
            }
        }
    }

    /// Everything may have changed (notifications were missed, or one was not understood).
    pub fn everything_changed(&self) {
        self.changed(Change::Deployments);
        self.changed(Change::Keys);
    }

    /// The listener connected (listening) or lost its connection. Connecting again makes
    /// everything count as changed: what was written meanwhile was not heard.
    pub fn set_live(&self, live: bool) {
        if live {
            // Moved first: a copy taken before is stale by the time readers may keep copies.
            self.everything_changed();
        }
        self.live.store(live, Ordering::Release);
        self.listener_connected.set(i64::from(live));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_feed_keeps_no_copies_until_it_listens_and_moves_when_it_does() {
        let feed = Changes::shared();
        assert_eq!(feed.deployments_epoch(), None);
        feed.set_live(true);
        let epoch = feed.deployments_epoch().unwrap();
        feed.changed(Change::Keys);
        assert_eq!(feed.deployments_epoch(), Some(epoch), "keys only");
        feed.changed(Change::Deployments);
        assert_eq!(feed.deployments_epoch(), Some(epoch + 1));
        feed.set_live(false);
        assert_eq!(feed.deployments_epoch(), None);
        assert_eq!(feed.listener_connected.get(), 0);
        feed.set_live(true);
        assert!(
            feed.deployments_epoch().unwrap() > epoch + 1,
            "reconnected: all stale"
        );
    }

    #[tokio::test]
    async fn a_key_change_wakes_its_watchers() {
        let feed = Changes::local();
        assert!(feed.is_live());
        let mut keys = feed.watch_keys();
        feed.changed(Change::Keys);
        tokio::time::timeout(std::time::Duration::from_secs(1), keys.changed())
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(
            Change::parse(Change::Deployments.as_str()),
            Some(Change::Deployments)
        );
        assert_eq!(Change::parse("something newer"), None);
    }
}
