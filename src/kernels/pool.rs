//! Splits work over the engine's threads.
//!
//! Work is always cut into the same contiguous ranges for a given size, so every result is
//! bit-identical whatever the thread count: a thread only decides *who* computes a row,
//! never *how*.

/// The engine's worker threads.
#[derive(Debug, Clone)]
pub struct ThreadPool {
    n_threads: usize,
}

impl ThreadPool {
    /// A pool of `n_threads` (at least 1; the calling thread counts as one of them).
    pub fn new(n_threads: usize) -> Self {
        Self { n_threads: n_threads.max(1) }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Calls `work(range)` over disjoint ranges covering `0..n_items`, in parallel.
    /// Ranges are at least `min_items_per_thread` long so tiny jobs stay on one thread.
    pub fn for_ranges<F>(&self, n_items: usize, min_items_per_thread: usize, work: F)
    where
        F: Fn(std::ops::Range<usize>) + Sync,
    {
        let max_useful = n_items.div_ceil(min_items_per_thread.max(1)).max(1);
        let n_threads = self.n_threads.min(max_useful);
        if n_threads <= 1 {
            work(0..n_items);
            return;
        }
        let per_thread = n_items.div_ceil(n_threads);
        std::thread::scope(|scope| {
            let work = &work;
            for t in 1..n_threads {
                let start = (t * per_thread).min(n_items);
                let end = ((t + 1) * per_thread).min(n_items);
                scope.spawn(move || work(start..end));
            }
            work(0..per_thread.min(n_items));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ranges_cover_every_item_exactly_once() {
        for threads in 1..5 {
            for n in [0usize, 1, 7, 100, 1001] {
                let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                ThreadPool::new(threads).for_ranges(n, 3, |range| {
                    for i in range {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            }
        }
    }
}
