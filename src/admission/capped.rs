//! The rate limiter's per-address state, capped: governor's own dashmap store behind governor's
//! public `StateStore` trait, holding at most `limits.per_ip.max_tracked` addresses, so a
//! client spraying source addresses cannot grow memory without bound.
//!
//! An address already held is measured in place, as governor's own store does. A new address
//! while the store is full is not inserted: it is decided as an address seen for the first
//! time (a fresh burst), counted as `untracked`, and the pruner is woken. That fails open, which
//! is sound here: a sprayed address would get a fresh burst anyway, and the stream caps (per
//! address and in all) still hold.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{InMemoryState, NotKeyed, StateStore};
use tokio::sync::Notify;

use crate::refusal::Reason;

/// The addresses the rate limiter holds, shared by its store and [`super::Admission`] (which
/// reads the counts and waits on `full`).
pub(super) struct Tracked {
    map: DashMapStateStore<IpAddr>,
    /// Addresses in `map`, kept here so that the cap costs one atomic per new address rather
    /// than a read lock on every shard (`DashMap::len`). Exact: incremented by the one insert
    /// that finds the entry vacant, decremented by the prune that removes it.
    count: AtomicUsize,
    max: usize,
    /// New addresses decided without being tracked, and when that was last logged.
    untracked: Reason,
    /// Woken when a new address finds the store full, so the pruner need not wait for its
    /// schedule.
    full: Notify,
}

impl Tracked {
    pub(super) fn new(max: usize) -> Tracked {
        Tracked {
            map: DashMapStateStore::default(),
            count: AtomicUsize::new(0),
            max,
            untracked: Reason::default(),
            full: Notify::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub(super) fn untracked(&self) -> u64 {
        self.untracked.count()
    }

    /// Returns once a new address has found the store full since the last call.
    pub(super) async fn full(&self) {
        self.full.notified().await;
    }

    /// Bytes the store's table holds now: its capacity times the size of an entry, key and
    /// state (hashbrown's one control byte per slot and the shards' few words not counted).
    pub(super) fn table_bytes(&self) -> usize {
        self.map.capacity() * std::mem::size_of::<(IpAddr, InMemoryState)>()
    }

    /// Takes a place under the cap for a new address, if one is free.
    fn reserve(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn not_tracked(&self, key: &IpAddr) {
        if let Some(total) = self.untracked.tick() {
            tracing::warn!(
                client = %key,
                total,
                max_tracked = self.max,
                "rate limiter full (limits.per_ip.max_tracked): new client addresses are not \
                 tracked and get a fresh burst"
            );
        }
        self.full.notify_one();
    }
}

/// Governor's dashmap state store with a cap on the addresses it holds.
pub(super) struct CappedStore(pub(super) Arc<Tracked>);

impl StateStore for CappedStore {
    type Key = IpAddr;

    fn measure_and_replace<T, F, E>(&self, key: &IpAddr, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // Fast path, as governor's own store: an address already held is measured in place.
        let tracked = &*self.0;
        if let Some(state) = tracked.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if !tracked.reserve() {
            tracked.not_tracked(key);
            // Decided as an address seen for the first time, and not remembered.
            return f(None).map(|(decision, _)| decision);
        }
        match tracked.map.entry(*key) {
            Entry::Occupied(held) => {
                // Another request inserted it meanwhile: the place taken is not needed.
                tracked.count.fetch_sub(1, Ordering::AcqRel);
                held.get().measure_and_replace(&NotKeyed::NonKey, f)
            }
            Entry::Vacant(vacant) => vacant
                .insert(InMemoryState::default())
                .measure_and_replace(&NotKeyed::NonKey, f),
        }
    }
}

/// The state's theoretical arrival time, read without changing it (a measurement that declines).
fn arrival_time(state: &InMemoryState) -> Option<Nanos> {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
}

impl ShrinkableKeyedStateStore<IpAddr> for CappedStore {
    /// As governor's own store (drops states no different from a fresh one), counting what goes.
    fn retain_recent(&self, drop_below: Nanos) {
        let tracked = &*self.0;
        tracked.map.retain(|_, state| {
            let keep = arrival_time(state).is_some_and(|tat| tat > drop_below);
            if !keep {
                tracked.count.fetch_sub(1, Ordering::AcqRel);
            }
            keep
        });
    }

    fn shrink_to_fit(&self) {
        self.0.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
