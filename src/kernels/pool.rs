//! The engine's worker threads.
//!
//! A forward pass hands out a few hundred small jobs per token, so hand-off must cost
//! microseconds at most: workers spin on a shared word while work is flowing and sleep on a
//! condition variable once it stops. The parts of a job are claimed from a counter by the
//! caller and the workers alike, so a worker the OS has not scheduled never holds the caller
//! up: the caller computes the parts nobody took. Work is always cut into the same contiguous
//! ranges for a given size and thread count, and each item is computed the same way whoever
//! computes it, so results are bit-identical whatever the thread count or the machine's load.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

/// How many times an idle worker polls for new work before it goes to sleep (~50 µs).
const SPINS_BEFORE_SLEEP: u32 = 1 << 15;
/// How many times the caller polls for unfinished parts before it yields its core (~20 µs:
/// parts are balanced, so the last one is usually that close; a yield costs a system call).
const SPINS_BEFORE_YIELD: u32 = 1 << 14;

/// Parts a job is cut into per thread: threads that start late or run slow (the OS, the
/// memory bus) take fewer parts instead of holding everyone up at the end of the job.
const PARTS_PER_THREAD: usize = 4;

/// A job: called once per part index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// The claim word: job epoch (32 bits) | number of parts (16) | next unclaimed part (16).
fn claim_word(epoch: u64, n_parts: usize, next: usize) -> u64 {
    (epoch << 32) | ((n_parts as u64) << 16) | next as u64
}

fn word_epoch(word: u64) -> u64 {
    word >> 32
}

struct Shared {
    /// See [`claim_word`]. A new job gets a new epoch; a part is claimed by a compare-exchange
    /// that also checks the epoch, so a late worker can never run a finished job's closure.
    claim: AtomicU64,
    /// The current job: a `*const Job` on the dispatching caller's stack, valid while the
    /// job's parts are not all done.
    job: AtomicPtr<()>,
    /// Parts of the current job finished.
    done: AtomicUsize,
    /// A worker's part panicked; the dispatcher re-raises it.
    /// The message of the first part that panicked in the current job.
    panic_message: Mutex<Option<String>>,
    shutdown: AtomicBool,
    /// Workers asleep on `wake`.
    sleepers: Mutex<usize>,
    wake: Condvar,
}

impl Shared {
    /// Claims the next part of the job of `epoch`, if it has one left.
    fn claim(&self, epoch: u64) -> Option<usize> {
        let mut word = self.claim.load(Ordering::Acquire);
        loop {
            let (n_parts, next) = (((word >> 16) & 0xffff) as usize, (word & 0xffff) as usize);
            if word_epoch(word) != epoch || next >= n_parts {
                return None;
            }
            match self.claim.compare_exchange_weak(
                word,
                word + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next),
                Err(now) => word = now,
            }
        }
    }

    /// Runs claimed parts of the job of `epoch` until none is left.
    fn work_on(&self, epoch: u64) {
        while let Some(part) = self.claim(epoch) {
            let job = self
                .job
                .load(Ordering::Acquire)
                .cast_const()
                .cast::<Job<'_>>();
            // SAFETY: the part was claimed under the job's epoch, so the job is still running
            // (its caller waits until this part is counted done) and `job` points to it.
            let job = unsafe { &*job };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(part))) {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                self.panic_message.lock().get_or_insert(message);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// A buffer that the tasks of one parallel job write through, each to its own elements: the
/// one place the crate shares a mutable buffer between threads.
///
/// It borrows the buffer mutably for its lifetime, so nothing else reads or writes it
/// meanwhile; every part is bounds-checked, so a task can only reach the buffer's own
/// elements. What remains for a caller is that no two parts in use at once overlap.
pub struct DisjointWrites<'a, T> {
    ptr: *mut T,
    len: usize,
    _buffer: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: tasks on other threads only reach elements through `part` or `ptr`, whose callers
// promise disjoint elements; T: Send lets those elements be written from another thread.
unsafe impl<T: Send> Sync for DisjointWrites<'_, T> {}

impl<'a, T> DisjointWrites<'a, T> {
    pub fn new(buffer: &'a mut [T]) -> Self {
        Self {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
            _buffer: std::marker::PhantomData,
        }
    }

    /// Elements `range` of the buffer (panics outside it).
    ///
    /// # Safety
    /// No other part or `ptr` write in use at the same time may touch these elements.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "part {range:?} of a buffer of {}",
            self.len
        );
        // SAFETY: inside the borrowed buffer (checked above), and no other live reference
        // reaches these elements (the caller's promise).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// The buffer's start and length, for kernels that write scattered elements (a matrix's
    /// columns); they must keep to the elements their task owns.
    pub fn ptr(&self) -> *mut T {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A persistent pool of `threads - 1` workers plus the calling thread.
pub struct ThreadPool {
    n_threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time (and its epoch counter); a caller that finds the pool busy runs its
    /// job alone.
    dispatch: Mutex<u64>,
    kernels: super::Kernels,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.n_threads)
            .finish_non_exhaustive()
    }
}

impl ThreadPool {
    /// A pool of `n_threads` (at least 1, at most 65535) running the fast kernels; with one
    /// thread, work runs on the caller. If the system refuses to start a worker, the pool
    /// keeps the threads it has.
    pub fn new(n_threads: usize) -> Self {
        Self::with_kernels(n_threads, super::Kernels::Fast)
    }

    /// A pool whose jobs run the given kernels.
    pub fn with_kernels(n_threads: usize, kernels: super::Kernels) -> Self {
        let shared = Arc::new(Shared {
            claim: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panic_message: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            sleepers: Mutex::new(0),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for index in 1..n_threads.clamp(1, 0xffff) {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("smallmind-{index}"))
                .spawn(move || worker_loop(&shared));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(_) => break,
            }
        }
        Self {
            n_threads: workers.len() + 1,
            shared,
            workers,
            dispatch: Mutex::new(0),
            kernels,
        }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    pub fn kernels(&self) -> super::Kernels {
        self.kernels
    }

    /// Whether kernels may take their SIMD paths (false: the scalar references only).
    pub fn fast_kernels(&self) -> bool {
        self.kernels == super::Kernels::Fast
    }

    /// Calls `work(first, chunks)` over disjoint runs of whole `chunk_len`-long chunks of
    /// `data` in parallel, `first` being the index of the run's first chunk; runs are at least
    /// `min_chunks` long. `data.len()` must be a multiple of `chunk_len`.
    pub fn for_chunks_mut<T, F>(&self, data: &mut [T], chunk_len: usize, min_chunks: usize, work: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync,
    {
        assert!(
            chunk_len > 0 && data.len().is_multiple_of(chunk_len),
            "whole chunks"
        );
        let n_chunks = data.len() / chunk_len;
        let writes = DisjointWrites::new(data);
        self.for_ranges(n_chunks, min_chunks, |range| {
            // SAFETY: for_ranges hands out disjoint ranges, so no two runs overlap.
            let run = unsafe { writes.part(range.start * chunk_len..range.end * chunk_len) };
            work(range.start, run);
        });
    }

    /// Calls `work(range)` over disjoint ranges covering `0..n_items`, in parallel.
    /// Ranges are at least `min_items_per_thread` long so tiny jobs stay on one thread; their
    /// bounds depend only on `n_items` and the pool's thread count, never on timing.
    pub fn for_ranges<F>(&self, n_items: usize, min_items_per_thread: usize, work: F)
    where
        F: Fn(std::ops::Range<usize>) + Sync,
    {
        let max_useful = n_items.div_ceil(min_items_per_thread.max(1)).max(1);
        let n_parts = if self.n_threads == 1 {
            1
        } else {
            (self.n_threads * PARTS_PER_THREAD).min(max_useful)
        };
        if n_parts == 1 {
            work(0..n_items);
            return;
        }
        let per_part = n_items.div_ceil(n_parts);
        let job = |part: usize| {
            work((part * per_part).min(n_items)..((part + 1) * per_part).min(n_items))
        };
        match self.dispatch.try_lock() {
            Some(mut epoch) => {
                *epoch += 1;
                self.run_shared(&job, n_parts, *epoch);
            }
            // Another sequence holds the workers: same parts, computed here one after another.
            None => (0..n_parts).for_each(job),
        }
    }

    /// Publishes `job` to the workers, works on it too, and returns when all parts are done.
    fn run_shared(&self, job: Job<'_>, n_parts: usize, epoch: u64) {
        let shared = &*self.shared;
        shared.done.store(0, Ordering::Relaxed);
        shared.job.store(
            (&job as *const Job<'_>).cast_mut().cast(),
            Ordering::Relaxed,
        );
        shared
            .claim
            .store(claim_word(epoch, n_parts, 0), Ordering::Release);
        if *shared.sleepers.lock() > 0 {
            shared.wake.notify_all();
        }
        shared.work_on(epoch);
        let mut spins = 0u32;
        while shared.done.load(Ordering::Acquire) != n_parts {
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        shared.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if let Some(message) = shared.panic_message.lock().take() {
            panic!("a part of a parallel kernel panicked: {message}");
        }
    }
}

fn worker_loop(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        let epoch = loop {
            let now = word_epoch(shared.claim.load(Ordering::Acquire));
            if now != seen || shared.shutdown.load(Ordering::Acquire) {
                break now;
            }
            if spins < SPINS_BEFORE_SLEEP {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = shared.sleepers.lock();
            *sleepers += 1;
            while word_epoch(shared.claim.load(Ordering::Acquire)) == seen
                && !shared.shutdown.load(Ordering::Acquire)
            {
                shared.wake.wait(&mut sleepers);
            }
            *sleepers -= 1;
        };
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = epoch;
        shared.work_on(epoch);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
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
    fn the_caller_finishes_alone_when_workers_are_busy() {
        // More pools than cores: workers are often descheduled, and every job still completes.
        let pools: Vec<ThreadPool> = (0..4).map(|_| ThreadPool::new(2)).collect();
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for pool in &pools {
                let total = &total;
                s.spawn(move || {
                    for _ in 0..300 {
                        pool.for_ranges(2, 1, |r| {
                            total.fetch_add(r.len(), Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 300 * 2);
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
