//! The responses the mock keeps for `/v1/responses/{id}` and its routes.
//!
//! Bounded by count ([`super::MockSettings::stored_responses`]) and, through
//! the cuts in `responses`, by size: a few KiB each. A scan of at most a
//! thousand entries under one lock is all a look-up needs, and a new
//! response takes the lock once, when it is created.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::responses::ResponseMeta;

/// One kept response.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub meta: Arc<ResponseMeta>,
    /// The input text ([`super::responses::input_text`]).
    pub input: Arc<str>,
    pub cancelled: bool,
}

/// What `cancel` found.
#[derive(Debug)]
pub(crate) enum Cancel {
    /// Cancelled now, or already: the response as it is now.
    Cancelled(Stored),
    /// Not a background response: it cannot be cancelled.
    NotBackground,
    Unknown,
}

#[derive(Debug)]
pub(crate) struct ResponseStore {
    capacity: usize,
    /// Oldest first.
    entries: Mutex<VecDeque<Stored>>,
}

impl ResponseStore {
    pub(crate) fn new(capacity: usize) -> ResponseStore {
        ResponseStore {
            capacity,
            entries: Mutex::new(VecDeque::new()),
        }
    }

    /// Keeps `stored`, forgetting the oldest if the store is full.
    pub(crate) fn insert(&self, stored: Stored) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let evicted = if entries.len() >= self.capacity {
            entries.pop_front()
        } else {
            None
        };
        entries.push_back(stored);
        drop(entries);
        drop(evicted);
    }

    pub(crate) fn get(&self, id: u64) -> Option<Stored> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().rev().find(|s| s.meta.id == id).cloned()
    }

    /// Marks a background response cancelled; it stays so.
    pub(crate) fn cancel(&self, id: u64) -> Cancel {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.iter_mut().rev().find(|s| s.meta.id == id) {
            None => Cancel::Unknown,
            Some(stored) if !stored.meta.background => Cancel::NotBackground,
            Some(stored) => {
                stored.cancelled = true;
                Cancel::Cancelled(stored.clone())
            }
        }
    }

    /// Forgets a response; false if it was not kept.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let removed = entries
            .iter()
            .position(|s| s.meta.id == id)
            .and_then(|at| entries.remove(at));
        drop(entries);
        removed.is_some()
    }
}
