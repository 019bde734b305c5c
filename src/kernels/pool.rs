//! The engine's worker threads.
//!
//! A forward pass hands out a few hundred small jobs per token, so hand-off must cost
//! microseconds at most: workers spin on an epoch counter while work is flowing and sleep on
//! a condition variable once it stops. Work is always cut into the same contiguous ranges for
//! a given size and thread count, and each item is computed the same way whoever computes it,
//! so results are bit-identical whatever the thread count.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

/// How many times an idle worker polls for new work before it goes to sleep (~100 µs).
const SPINS_BEFORE_SLEEP: u32 = 1 << 16;

/// A job: called once per part index, on every thread of the pool.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per dispatched job (and once at shutdown).
    epoch: AtomicU64,
    /// The current job: a `*const Job` on the dispatching caller's stack, valid until
    /// `pending` reaches zero.
    job: AtomicPtr<()>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// A worker's part panicked; the dispatcher re-raises it.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers asleep on `wake`.
    sleepers: Mutex<usize>,
    wake: Condvar,
}

/// A persistent pool of `threads - 1` workers plus the calling thread.
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time; a caller that finds the pool busy runs its job alone.
    dispatch: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .finish_non_exhaustive()
    }
}

impl ThreadPool {
    /// A pool of `n_threads` (at least 1); with one thread, work runs on the caller. If the
    /// system refuses to start a worker, the pool keeps the threads it has.
    pub fn new(n_threads: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for part in 1..n_threads.max(1) {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("smallmind-{part}"))
                .spawn(move || worker_loop(&shared, part));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(_) => break,
            }
        }
        Self {
            n_threads: workers.len() + 1,
            shared,
            workers,
            dispatch: Mutex::new(()),
        }
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
        let per_part = n_items.div_ceil(n_parts);
        let part_range =
            |part: usize| (part * per_part).min(n_items)..((part + 1) * per_part).min(n_items);
        if n_parts == 1 {
            work(0..n_items);
            return;
        }
        let job = |part: usize| {
            if part < n_parts {
                work(part_range(part));
            }
        };
        match self.dispatch.try_lock() {
            Some(_guard) => self.run_on_all(&job),
            // Another sequence holds the workers: same parts, computed here one after another.
            None => (0..n_parts).for_each(job),
        }
    }

    /// Runs `job(part)` for part 0 here and parts 1.. on the workers; returns when all are done.
    fn run_on_all(&self, job: Job<'_>) {
        let shared = &*self.shared;
        shared.pending.store(self.workers.len(), Ordering::Relaxed);
        shared.job.store(
            (&job as *const Job<'_>).cast_mut().cast(),
            Ordering::Relaxed,
        );
        shared.epoch.fetch_add(1, Ordering::Release);
        if *shared.sleepers.lock() > 0 {
            shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        while shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        shared.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if shared.panicked.swap(false, Ordering::Relaxed) {
            panic!("a worker thread panicked during a parallel kernel");
        }
    }
}

fn worker_loop(shared: &Shared, part: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let epoch = loop {
            let now = shared.epoch.load(Ordering::Acquire);
            if now != seen {
                break now;
            }
            if spins < SPINS_BEFORE_SLEEP {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = shared.sleepers.lock();
            *sleepers += 1;
            while shared.epoch.load(Ordering::Acquire) == seen {
                shared.wake.wait(&mut sleepers);
            }
            *sleepers -= 1;
        };
        seen = epoch;
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        let job = shared
            .job
            .load(Ordering::Relaxed)
            .cast_const()
            .cast::<Job<'_>>();
        // SAFETY: the dispatcher published `job` before bumping the epoch (Release/Acquire)
        // and keeps it alive until `pending` reaches zero, which happens only below.
        let job = unsafe { &*job };
        if catch_unwind(AssertUnwindSafe(|| job(part))).is_err() {
            shared.panicked.store(true, Ordering::Relaxed);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        {
            let _sleepers = self.shared.sleepers.lock();
            self.shared.wake.notify_all();
        }
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn jobs_after_the_workers_fell_asleep_still_run() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        pool.for_ranges(10, 1, |r| {
            total.fetch_add(r.len(), Ordering::Relaxed);
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        pool.for_ranges(10, 1, |r| {
            total.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn concurrent_callers_share_one_pool() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        pool.for_ranges(64, 1, |r| {
                            total.fetch_add(r.len(), Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 64);
    }

    #[test]
    fn a_panicking_part_reaches_the_caller_and_the_pool_still_works() {
        let pool = ThreadPool::new(2);
        let result = catch_unwind(AssertUnwindSafe(|| {
            pool.for_ranges(2, 1, |r| {
                if r.start == 1 {
                    panic!("part 1 fails");
                }
            })
        }));
        assert!(result.is_err());
        let total = AtomicUsize::new(0);
        pool.for_ranges(8, 1, |r| {
            total.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 8);
    }
}
