//! The engine's worker threads.
//!
//! Work is always cut into the same contiguous ranges for a given size, and each item is
//! computed the same way whoever computes it, so results are bit-identical whatever the
//! thread count.

/// A persistent pool of worker threads (rayon) sized by the engine's `threads` option;
/// with one thread, work runs on the caller.
#[derive(Debug)]
pub struct ThreadPool {
    n_threads: usize,
    workers: Option<rayon::ThreadPool>,
}

impl ThreadPool {
    /// A pool of `n_threads` (at least 1).
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let workers = (n_threads > 1)
            .then(|| rayon::ThreadPoolBuilder::new().num_threads(n_threads).thread_name(|i| format!("smallmind-{i}")).build().ok())
            .flatten();
        Self { n_threads: if workers.is_some() { n_threads } else { 1 }, workers }
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
        let n_parts = self.n_threads.min(max_useful);
        let Some(workers) = self.workers.as_ref().filter(|_| n_parts > 1) else {
            work(0..n_items);
            return;
        };
        let per_part = n_items.div_ceil(n_parts);
        workers.scope(|scope| {
            let work = &work;
            for part in 0..n_parts {
                let start = (part * per_part).min(n_items);
                let end = ((part + 1) * per_part).min(n_items);
                scope.spawn(move |_| work(start..end));
            }
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
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 7, 100, 1001] {
                let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                pool.for_ranges(n, 3, |range| {
                    for i in range {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            }
        }
    }
}
