//! The engine-wide KV memory budget: every chat's cache registers here, a send reserves what
//! its turn can grow to before it runs, and when the budget (or the limit on resident
//! caches) would be exceeded the least-recently-used idle chat's cache is released. Its next
//! turn recomputes the prompt and replies exactly as it would have.
//!
//! Accounting is of bytes really held: an idle chat counts the capacity of its cache's
//! buffers (which grow in whole chunks, see `KV_CHUNK_POSITIONS`); a running send counts
//! what it reserved (the most its turn can grow to), settled to what it holds when it ends.
//! Rows several caches share (`lend_prefix`) count once, for as long as one of them holds
//! them.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::error::{Error, ErrorKind};
use crate::model::{KvCache, SharedRows};

/// A chat's cache as the budget sees it: the owner locks it for a whole turn; the budget
/// only ever `try_lock`s it, so a busy chat is never evicted and nothing waits.
pub type CacheSlot = Arc<Mutex<KvCache>>;

/// The budget's settings (engine options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BudgetLimits {
    /// All chats' KV caches together, in bytes; `None` = unlimited.
    pub kv_budget_bytes: Option<usize>,
    /// Chats holding a KV cache at the same time; `None` = unlimited.
    pub max_sessions: Option<usize>,
}

/// One chat's cache released to make room for another's turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eviction {
    pub session_id: String,
    /// Positions it held.
    pub tokens: usize,
    /// Bytes it freed.
    pub bytes: usize,
}

/// What `smallmind_engine_info` reports under "kv_cache".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStats {
    pub budget_bytes: Option<usize>,
    pub max_sessions: Option<usize>,
    pub used_bytes: usize,
    /// Chats registered on the engine.
    pub sessions: usize,
    /// Chats holding a non-empty cache.
    pub resident_sessions: usize,
    /// Of `used_bytes`, the rows chats share (each counted once).
    pub shared_bytes: usize,
    /// Caches released so far to make room.
    pub evictions: u64,
    /// Prompt prefixes copied from one chat's cache into another's so far.
    pub prefix_shares: u64,
}

/// A send that cannot get the room it needs: nothing more can be evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExceeded {
    pub requested_bytes: usize,
    pub budget_bytes: usize,
    pub error: Error,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    session_id: String,
    slot: Weak<Mutex<KvCache>>,
    /// Bytes of its own counted against the budget.
    held: usize,
    /// The shared rows its cache holds (counted once among all the entries that hold them).
    shared: Option<(Weak<SharedRows>, usize)>,
    tokens: usize,
    last_used: u64,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    tick: u64,
    evictions: u64,
    prefix_shares: u64,
    entries: Vec<Entry>,
}

#[derive(Debug, Default)]
pub struct KvBudget {
    limits: BudgetLimits,
    state: Mutex<State>,
}

impl KvBudget {
    pub fn new(limits: BudgetLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State::default()),
        }
    }

    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// Registers a chat's cache; the id is passed to every later call, and `unregister`
    /// must be called when the chat goes away.
    pub fn register(&self, session_id: &str, slot: &CacheSlot) -> u64 {
        let mut state = self.state.lock();
        state.next_id += 1;
        state.tick += 1;
        let (id, tick) = (state.next_id, state.tick);
        state.entries.push(Entry {
            id,
            session_id: session_id.to_string(),
            slot: Arc::downgrade(slot),
            held: 0,
            shared: None,
            tokens: 0,
            last_used: tick,
        });
        id
    }

    pub fn unregister(&self, id: u64) {
        self.state.lock().entries.retain(|e| e.id != id);
    }

    /// Makes room for chat `id`'s cache to hold `bytes` (the caller holds that cache's
    /// lock), releasing least-recently-used idle caches of other chats as needed; returns
    /// them. When nothing more can be released the budget is left as it was.
    pub fn reserve(
        &self,
        id: u64,
        bytes: usize,
    ) -> std::result::Result<Vec<Eviction>, BudgetExceeded> {
        let mut state = self.state.lock();
        let State {
            entries, evictions, ..
        } = &mut *state;
        let mut released = Vec::new();
        if let Some(budget) = self.limits.kv_budget_bytes {
            if bytes > budget {
                return Err(self.exceeded(id, entries, bytes, budget, "alone"));
            }
            loop {
                if used_bytes(entries, Some(id)) + bytes <= budget {
                    break;
                }
                match evict_lru(entries, id) {
                    Some(eviction) => {
                        *evictions += 1;
                        released.push(eviction);
                    }
                    None => {
                        return Err(self.exceeded(id, entries, bytes, budget, "busy"));
                    }
                }
            }
        }
        if let Some(max) = self.limits.max_sessions {
            loop {
                let resident = entries
                    .iter()
                    .filter(|e| e.id != id && e.is_resident())
                    .count();
                if resident < max {
                    break;
                }
                match evict_lru(entries, id) {
                    Some(eviction) => {
                        *evictions += 1;
                        released.push(eviction);
                    }
                    None => {
                        let session = session_of(entries, id);
                        return Err(BudgetExceeded {
                            requested_bytes: bytes,
                            budget_bytes: self.limits.kv_budget_bytes.unwrap_or(usize::MAX),
                            error: Error::new(
                                ErrorKind::BudgetExceeded,
                                format!(
                                    "chat {session} needs a KV cache, but max_sessions is {max} and the {resident} chats holding one are all busy; retry when one finishes, or raise max_sessions"
                                ),
                            ),
                        });
                    }
                }
            }
        }
        if let Some(entry) = entries.iter_mut().find(|e| e.id == id) {
            entry.held = entry.held.max(bytes);
        }
        Ok(released)
    }

    fn exceeded(
        &self,
        id: u64,
        entries: &[Entry],
        bytes: usize,
        budget: usize,
        why: &str,
    ) -> BudgetExceeded {
        let session = session_of(entries, id);
        let others = used_bytes(entries, Some(id));
        let message = if why == "alone" {
            format!(
                "chat {session} needs {bytes} bytes of KV cache for this turn, more than the whole kv_budget_bytes of {budget}; raise kv_budget_bytes, lower max_tokens or shorten the conversation"
            )
        } else {
            format!(
                "chat {session} needs {bytes} bytes of KV cache for this turn; kv_budget_bytes is {budget} and the other chats hold {others} bytes that cannot be evicted (they are busy); retry when one finishes, or raise kv_budget_bytes"
            )
        };
        BudgetExceeded {
            requested_bytes: bytes,
            budget_bytes: budget,
            error: Error::new(ErrorKind::BudgetExceeded, message),
        }
    }

    /// Gives `cache` (locked by the caller) the first `prefix.len()` positions of a
    /// registered idle cache that holds `prefix` computed in forward passes of its own
    /// (`KvCache::computes_prefix_alone` with the prefill's `chunk`): its rows are then the
    /// ones `cache` would compute itself, so sharing never changes a reply. The rows are
    /// shared, not copied (`KvCache::share_prefix_of`), and count once. Busy caches are
    /// skipped, never waited for. Returns whether a prefix was shared.
    pub fn lend_prefix(&self, id: u64, cache: &mut KvCache, prefix: &[u32], chunk: usize) -> bool {
        // The candidates are taken under the state lock and shared from outside it, so
        // sharing never holds up another chat's reserve or settle.
        let candidates: Vec<(u64, CacheSlot)> = self
            .state
            .lock()
            .entries
            .iter()
            .filter(|e| e.id != id && e.tokens >= prefix.len())
            .filter_map(|e| Some((e.id, e.slot.upgrade()?)))
            .collect();
        for (donor_id, slot) in candidates {
            let Some(mut donor) = slot.try_lock() else {
                continue;
            };
            if donor.tokens().starts_with(prefix)
                && donor.computes_prefix_alone(prefix.len(), chunk)
            {
                cache.share_prefix_of(&mut donor, prefix.len());
                let mut state = self.state.lock();
                state.prefix_shares += 1;
                // The donor's rows moved into shared rows: record what it holds now,
                // without making it more recently used. The receiver's own bytes are
                // settled after its turn; its share counts from now, so that evicting the
                // donor does not leave the rows uncounted.
                for entry in state.entries.iter_mut() {
                    if entry.id == donor_id {
                        entry.record(&donor);
                    } else if entry.id == id {
                        entry.shared = share_of(cache);
                        entry.tokens = cache.len();
                    }
                }
                return true;
            }
        }
        false
    }

    /// Records what chat `id`'s cache holds now that its turn (or restore) is done, and
    /// marks it most recently used.
    pub fn settle(&self, id: u64, cache: &KvCache) {
        let mut state = self.state.lock();
        state.tick += 1;
        let tick = state.tick;
        if let Some(entry) = state.entries.iter_mut().find(|e| e.id == id) {
            entry.record(cache);
            entry.last_used = tick;
        }
    }

    pub fn stats(&self) -> BudgetStats {
        let state = self.state.lock();
        BudgetStats {
            budget_bytes: self.limits.kv_budget_bytes,
            max_sessions: self.limits.max_sessions,
            used_bytes: used_bytes(&state.entries, None),
            sessions: state.entries.len(),
            resident_sessions: state.entries.iter().filter(|e| e.is_resident()).count(),
            shared_bytes: shared_bytes(&state.entries),
            evictions: state.evictions,
            prefix_shares: state.prefix_shares,
        }
    }
}

impl Entry {
    /// Records what `cache` (this entry's, locked) holds.
    fn record(&mut self, cache: &KvCache) {
        self.held = cache.bytes();
        self.shared = share_of(cache);
        self.tokens = cache.len();
    }

    fn is_resident(&self) -> bool {
        self.held > 0 || self.shared.is_some()
    }
}

/// The shared rows `cache` holds, as an entry records them.
fn share_of(cache: &KvCache) -> Option<(Weak<SharedRows>, usize)> {
    cache
        .shared_rows()
        .map(|rows| (Arc::downgrade(rows), rows.bytes()))
}

/// Bytes the entries hold: every entry's own bytes but `except_own`'s (a send counts what
/// it reserves instead), and each distinct set of shared rows once.
fn used_bytes(entries: &[Entry], except_own: Option<u64>) -> usize {
    let own: usize = entries
        .iter()
        .filter(|e| Some(e.id) != except_own)
        .map(|e| e.held)
        .sum();
    own + shared_bytes(entries)
}

/// Bytes of the distinct shared rows the entries hold, counted once each.
fn shared_bytes(entries: &[Entry]) -> usize {
    let mut seen: Vec<*const SharedRows> = Vec::new();
    let mut total = 0;
    for (weak, bytes) in entries.iter().filter_map(|e| e.shared.as_ref()) {
        let key = weak.as_ptr();
        if !seen.contains(&key) {
            seen.push(key);
            total += bytes;
        }
    }
    total
}

fn session_of(entries: &[Entry], id: u64) -> String {
    entries
        .iter()
        .find(|e| e.id == id)
        .map_or_else(|| "?".to_string(), |e| format!("'{}'", e.session_id))
}

/// Releases the least-recently-used cache, other than `except`'s, whose chat is idle (its
/// lock is free) and that holds something.
fn evict_lru(entries: &mut [Entry], except: u64) -> Option<Eviction> {
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].id != except && entries[i].is_resident())
        .collect();
    order.sort_by_key(|&i| entries[i].last_used);
    for i in order {
        let Some(slot) = entries[i].slot.upgrade() else {
            continue;
        };
        let Some(mut cache) = slot.try_lock() else {
            continue;
        };
        // Shared rows are freed with the last cache that holds them.
        let freed_shared = cache
            .shared_rows()
            .filter(|rows| Arc::strong_count(rows) == 1)
            .map_or(0, |rows| rows.bytes());
        let eviction = Eviction {
            session_id: entries[i].session_id.clone(),
            tokens: cache.len(),
            bytes: cache.bytes() + freed_shared,
        };
        cache.evict();
        entries[i].record(&cache);
        return Some(eviction);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvType;

    fn slot(positions: usize) -> CacheSlot {
        let mut cache = KvCache::new(KvType::F32, 1, 4, 1024);
        for _ in 0..positions {
            cache.append_layer(0, &[1.0; 4], &[2.0; 4]);
            cache.commit_tokens(&[7]);
        }
        Arc::new(Mutex::new(cache))
    }

    #[test]
    fn the_least_recently_used_idle_cache_is_evicted_and_a_busy_one_never() {
        // One chunk of 64 positions: 2 (k, v) * 4 values * 4 bytes * 64 = 2048 bytes.
        let budget = KvBudget::new(BudgetLimits {
            kv_budget_bytes: Some(4096),
            max_sessions: None,
        });
        let (a, b, c) = (slot(10), slot(10), slot(0));
        let (ia, ib, ic) = (
            budget.register("a", &a),
            budget.register("b", &b),
            budget.register("c", &c),
        );
        budget.settle(ia, &a.lock());
        budget.settle(ib, &b.lock());
        assert_eq!(budget.stats().used_bytes, 4096);
        // A chat reserves while it holds its own cache's lock, for its whole turn.
        let _c_running = c.lock();
        let evicted = budget.reserve(ic, 2048).unwrap();
        assert_eq!(
            evicted,
            vec![Eviction {
                session_id: "a".into(),
                tokens: 10,
                bytes: 2048
            }]
        );
        assert!(a.lock().is_empty());
        assert_eq!(budget.stats().used_bytes, 4096);
        assert_eq!(budget.stats().evictions, 1);

        // b is busy (its lock is held) and c is running: nothing can go.
        let _busy = b.lock();
        let err = budget.reserve(ia, 2048).unwrap_err();
        assert_eq!(err.error.kind, ErrorKind::BudgetExceeded);
        assert_eq!((err.requested_bytes, err.budget_bytes), (2048, 4096));
        assert!(
            err.error.message.contains("'a' needs 2048 bytes"),
            "{}",
            err.error.message
        );
        let err = budget.reserve(ia, 8192).unwrap_err();
        assert!(
            err.error.message.contains("more than the whole"),
            "{}",
            err.error.message
        );
        budget.unregister(ic);
        assert_eq!(budget.stats().sessions, 2);
    }

    #[test]
    fn shared_rows_count_once_and_are_freed_with_their_last_holder() {
        let budget = KvBudget::new(BudgetLimits {
            kv_budget_bytes: Some(3 * 2048),
            max_sessions: None,
        });
        // 70 positions: the donor's first 64 (one pass) become shared.
        let donor = Arc::new(Mutex::new(KvCache::new(KvType::F32, 1, 4, 1024)));
        {
            let mut cache = donor.lock();
            for _ in 0..64 {
                cache.append_layer(0, &[1.0; 4], &[2.0; 4]);
            }
            cache.commit_tokens(&[7; 64]);
            for _ in 0..6 {
                cache.append_layer(0, &[1.0; 4], &[2.0; 4]);
                cache.commit_tokens(&[8]);
            }
        }
        let (b, c) = (slot(0), slot(0));
        let ids = [
            budget.register("donor", &donor),
            budget.register("b", &b),
            budget.register("c", &c),
        ];
        budget.settle(ids[0], &donor.lock());
        assert_eq!(budget.stats().used_bytes, 4096, "70 positions: two chunks");
        for (id, slot) in [(ids[1], &b), (ids[2], &c)] {
            let mut cache = slot.lock();
            assert!(budget.lend_prefix(id, &mut cache, &[7; 64], 64));
            budget.settle(id, &cache);
        }
        let stats = budget.stats();
        // 64 shared positions (2048 bytes) once, and the donor's 6 own rows in a chunk.
        assert_eq!((stats.shared_bytes, stats.used_bytes), (2048, 4096));
        assert_eq!((stats.prefix_shares, stats.resident_sessions), (2, 3));

        // Evicting the donor frees its own rows only; the shared ones stay with b and c.
        let _b_running = b.lock();
        let evicted = budget.reserve(ids[1], 4096).unwrap();
        assert_eq!(
            evicted,
            vec![Eviction {
                session_id: "donor".into(),
                tokens: 70,
                bytes: 2048
            }]
        );
        assert_eq!(budget.stats().shared_bytes, 2048);
        drop(_b_running);
        budget.settle(ids[1], &b.lock());
        // c is the least recently used now, then b: the second eviction frees the rows.
        let _donor_running = donor.lock();
        let evicted = budget.reserve(ids[0], 3 * 2048).unwrap();
        assert_eq!(
            evicted
                .iter()
                .map(|e| (e.session_id.as_str(), e.bytes))
                .collect::<Vec<_>>(),
            [("c", 0), ("b", 2048)]
        );
        assert_eq!(budget.stats().shared_bytes, 0);
    }

    #[test]
    fn max_sessions_limits_the_caches_held_at_once() {
        let budget = KvBudget::new(BudgetLimits {
            kv_budget_bytes: None,
            max_sessions: Some(1),
        });
        let (a, b) = (slot(3), slot(0));
        let (ia, ib) = (budget.register("a", &a), budget.register("b", &b));
        budget.settle(ia, &a.lock());
        let evicted = budget.reserve(ib, 100).unwrap();
        assert_eq!(evicted.len(), 1);
        assert_eq!(budget.stats().resident_sessions, 1);
    }
}
