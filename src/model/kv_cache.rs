//! The per-sequence key/value cache.

use half::f16;

/// Positions the cache grows by: its buffers hold a whole number of chunks (at most the
/// cache's limit), so what a chat holds is its length rounded up to one chunk, never a
/// doubling of it and never the whole context up front.
pub const KV_CHUNK_POSITIONS: usize = 64;

use std::sync::Arc;

use crate::kernels::{KvRows, KvSlice};

/// Storage precision of cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// Half the memory; llama.cpp's default.
    #[default]
    F16,
    /// Exact; matches llama.cpp's "precise" configuration.
    F32,
}

impl KvType {
    pub fn bytes_per_value(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

#[derive(Debug, Clone)]
enum Rows {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Rows {
    fn new(ty: KvType) -> Self {
        match ty {
            KvType::F32 => Rows::F32(Vec::new()),
            KvType::F16 => Rows::F16(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
        }
    }

    /// Makes room for `total` values exactly (no amortized doubling).
    fn reserve_total(&mut self, total: usize) {
        match self {
            Rows::F32(v) => v.reserve_exact(total.saturating_sub(v.len())),
            Rows::F16(v) => v.reserve_exact(total.saturating_sub(v.len())),
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Rows::F32(v) => v.capacity(),
            Rows::F16(v) => v.capacity(),
        }
    }

    /// Appends the little-endian bytes of values `range`.
    fn write_le(&self, range: std::ops::Range<usize>, out: &mut Vec<u8>) {
        match self {
            Rows::F32(v) => v[range]
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
            Rows::F16(v) => v[range]
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_bits().to_le_bytes())),
        }
    }

    /// Values from little-endian bytes (the length is a multiple of the value size).
    fn read_le(ty: KvType, bytes: &[u8], reserve: usize) -> Self {
        match ty {
            KvType::F32 => {
                let mut v = Vec::with_capacity(reserve);
                v.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
                );
                Rows::F32(v)
            }
            KvType::F16 => {
                let mut v = Vec::with_capacity(reserve);
                v.extend(
                    bytes
                        .chunks_exact(2)
                        .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]]))),
                );
                Rows::F16(v)
            }
        }
    }

    /// Appends values `range` of `other` (the same storage type).
    fn extend_from(&mut self, other: &Rows, range: std::ops::Range<usize>) {
        match (self, other) {
            (Rows::F32(to), Rows::F32(from)) => to.extend_from_slice(&from[range]),
            (Rows::F16(to), Rows::F16(from)) => to.extend_from_slice(&from[range]),
            _ => unreachable!("caches of one engine share the storage type"),
        }
    }

    fn push(&mut self, values: &[f32]) {
        match self {
            Rows::F32(v) => v.extend_from_slice(values),
            Rows::F16(v) => v.extend(values.iter().map(|&x| f16::from_f32(x))),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Rows::F32(v) => v.truncate(len),
            Rows::F16(v) => v.truncate(len),
        }
    }

    fn capacity_bytes(&self) -> usize {
        match self {
            Rows::F32(v) => v.capacity() * 4,
            Rows::F16(v) => v.capacity() * 2,
        }
    }
}

/// The first rows of a cache, given up to be held once by every cache of the engine that
/// begins with them (chats with one system prompt). Immutable: a cache that shares them
/// appends its own rows after them.
#[derive(Debug)]
pub struct SharedRows {
    k: Vec<Rows>,
    v: Vec<Rows>,
}

impl SharedRows {
    /// Bytes these rows hold.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Rows::capacity_bytes).sum()
    }
}

/// Keys and values of every layer for one token sequence, positions 0..len.
/// Per layer, k and v are (positions, kv_dim): positions 0..shared_len in `shared` (rows
/// held once for several caches), the rest in this cache's own buffers, which grow in
/// chunks of `KV_CHUNK_POSITIONS` as tokens are appended, so a short chat does not pay for
/// the whole context up front, and what it holds is predictable (`bytes_for`).
#[derive(Debug, Clone)]
pub struct KvCache {
    ty: KvType,
    kv_dim: usize,
    /// Own rows: positions shared_len..len.
    k: Vec<Rows>,
    v: Vec<Rows>,
    /// Rows shared with other caches, of which the first `shared_len` positions are this
    /// cache's first positions (the rest, if any, belong to caches that shared more).
    shared: Option<Arc<SharedRows>>,
    shared_len: usize,
    /// The token ids whose keys and values are stored, in order.
    tokens: Vec<u32>,
    /// How the stored positions were computed: the length of each forward pass, in order
    /// (sums to tokens.len()). A row's values depend on the batch it was computed in (the
    /// kernels tile batches), so recomputing the same batches reproduces them bit for bit.
    segments: Vec<u32>,
    /// After `evict`: the tokens and batches the cache held, so the next turn can recompute
    /// exactly those rows (`take_replay`).
    replay: Option<Replay>,
    max_positions: usize,
}

/// The tokens and forward-pass lengths of a released cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub tokens: Vec<u32>,
    pub segments: Vec<u32>,
}

impl KvCache {
    pub fn new(ty: KvType, n_layer: usize, kv_dim: usize, max_positions: usize) -> Self {
        Self {
            ty,
            kv_dim,
            k: (0..n_layer).map(|_| Rows::new(ty)).collect(),
            v: (0..n_layer).map(|_| Rows::new(ty)).collect(),
            shared: None,
            shared_len: 0,
            tokens: Vec::new(),
            segments: Vec::new(),
            replay: None,
            max_positions,
        }
    }

    pub fn kv_type(&self) -> KvType {
        self.ty
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The tokens whose keys and values are cached.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The length of each forward pass that computed the stored positions, in order.
    pub fn segments(&self) -> &[u32] {
        &self.segments
    }

    /// Forgets every position from `len` on (prefix reuse: keep what still matches).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.tokens.len() {
            return;
        }
        self.tokens.truncate(len);
        if len <= self.shared_len {
            self.shared_len = len;
            if len == 0 {
                self.shared = None;
            }
        }
        let own = (len - self.shared_len) * self.kv_dim;
        for rows in self.k.iter_mut().chain(self.v.iter_mut()) {
            rows.truncate(own);
        }
        let mut end = 0usize;
        let mut keep = 0;
        for &seg in &self.segments {
            if end >= len {
                break;
            }
            end += seg as usize;
            keep += 1;
        }
        self.segments.truncate(keep);
        if end > len
            && let Some(last) = self.segments.last_mut()
        {
            *last -= (end - len) as u32;
        }
    }

    /// Forgets every position (and any replay plan).
    pub fn clear(&mut self) {
        self.truncate(0);
        self.replay = None;
    }

    /// Releases the memory too, forgetting everything (reset).
    pub fn release(&mut self) {
        *self = Self::new(self.ty, self.k.len(), self.kv_dim, self.max_positions);
    }

    /// Releases the memory (budget eviction) but remembers the tokens and how they were
    /// batched, so the next turn can recompute exactly the rows that were held.
    pub fn evict(&mut self) {
        let replay = match self.take_replay() {
            // Not replayed yet (nothing, or only a shared prefix, was added since).
            Some(r) => Some(r),
            None if self.tokens.is_empty() => None,
            None => Some(Replay {
                tokens: std::mem::take(&mut self.tokens),
                segments: std::mem::take(&mut self.segments),
            }),
        };
        self.release();
        self.replay = replay;
    }

    /// The replay plan an eviction left, if the cache holds nothing but the beginning of
    /// it (nothing, or a prefix shared since).
    pub fn take_replay(&mut self) -> Option<Replay> {
        self.replay
            .take()
            .filter(|replay| replay.tokens.starts_with(&self.tokens))
    }

    /// Bytes held by the cache's own buffers (its shared rows are counted apart, once for
    /// all the caches that hold them: `shared_rows`).
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Rows::capacity_bytes).sum()
    }

    /// The rows this cache shares with others, if any.
    pub fn shared_rows(&self) -> Option<&Arc<SharedRows>> {
        self.shared.as_ref()
    }

    /// Positions held in shared rows (the first ones).
    pub fn shared_len(&self) -> usize {
        self.shared_len
    }

    /// Bytes one cached position takes across all layers.
    pub fn bytes_per_position(&self) -> usize {
        2 * self.k.len() * self.kv_dim * self.ty.bytes_per_value()
    }

    /// Positions the own buffers hold room for once `positions` are stored after `shared`
    /// shared ones: whole chunks, at most the cache's limit.
    fn chunked(&self, shared: usize, positions: usize) -> usize {
        let limit = self.max_positions - shared;
        positions
            .div_ceil(KV_CHUNK_POSITIONS)
            .saturating_mul(KV_CHUNK_POSITIONS)
            .min(limit)
            .max(positions)
    }

    /// Bytes the cache's own buffers hold once it stores `positions` in all (or more, when
    /// they already hold more room than that), its shared rows kept.
    pub fn bytes_for(&self, positions: usize) -> usize {
        let own = positions
            .min(self.max_positions)
            .saturating_sub(self.shared_len);
        (self.chunked(self.shared_len, own) * self.bytes_per_position()).max(self.bytes())
    }

    pub fn n_layer(&self) -> usize {
        self.k.len()
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// The stored keys and values as little-endian bytes: per layer, K (positions, kv_dim)
    /// then V (positions, kv_dim), f16 as its 16 bits or f32 as its 32 bits.
    pub fn write_rows(&self, out: &mut Vec<u8>) {
        let shared = self.shared_len * self.kv_dim;
        let own = self.tokens.len() * self.kv_dim - shared;
        for layer in 0..self.k.len() {
            for (mine, theirs) in [
                (&self.k[layer], self.shared.as_ref().map(|s| &s.k[layer])),
                (&self.v[layer], self.shared.as_ref().map(|s| &s.v[layer])),
            ] {
                if let Some(theirs) = theirs {
                    theirs.write_le(0..shared, out);
                }
                mine.write_le(0..own, out);
            }
        }
    }

    /// A cache holding `tokens` with the rows `write_rows` wrote, computed in forward passes
    /// of `segments` positions. `rows` must be exactly `tokens.len() * bytes_per_position`
    /// bytes, `tokens` at most `max_positions`, and `segments` (non-zero) add up to it.
    pub fn from_rows(
        ty: KvType,
        n_layer: usize,
        kv_dim: usize,
        max_positions: usize,
        tokens: Vec<u32>,
        segments: Vec<u32>,
        rows: &[u8],
    ) -> Result<Self, String> {
        let mut cache = Self::new(ty, n_layer, kv_dim, max_positions);
        let n = tokens.len();
        if n > max_positions {
            return Err(format!(
                "{n} cached positions do not fit this chat's {max_positions}"
            ));
        }
        let per_matrix = n * kv_dim * ty.bytes_per_value();
        if rows.len() != 2 * n_layer * per_matrix {
            return Err(format!(
                "{} bytes of rows for {n} positions of {n_layer} layers, {kv_dim} values each; expected {}",
                rows.len(),
                2 * n_layer * per_matrix
            ));
        }
        let reserve = cache.chunked(0, n) * kv_dim;
        if per_matrix > 0 {
            for (layer, pair) in rows.chunks_exact(2 * per_matrix).enumerate() {
                let (k, v) = pair.split_at(per_matrix);
                cache.k[layer] = Rows::read_le(ty, k, reserve);
                cache.v[layer] = Rows::read_le(ty, v, reserve);
            }
        }
        if segments.iter().map(|&s| s as u64).sum::<u64>() != n as u64 || segments.contains(&0) {
            return Err(format!(
                "the forward-pass lengths do not add up to the {n} positions"
            ));
        }
        cache.tokens = tokens;
        cache.segments = segments;
        Ok(cache)
    }

    /// Whether the first `n` positions were computed in forward passes of their own: a pass
    /// ends exactly at `n`, and the passes before it are `chunk`-long but the last, as a
    /// prefill of `n` tokens from an empty cache computes them. Such rows are the same
    /// whichever cache of the engine computed them.
    pub fn computes_prefix_alone(&self, n: usize, chunk: usize) -> bool {
        let mut end = 0usize;
        for &segment in &self.segments {
            let segment = segment as usize;
            if end + segment > n {
                return false;
            }
            end += segment;
            if end == n {
                return true;
            }
            if segment != chunk {
                return false;
            }
        }
        false
    }

    /// Replaces everything this cache holds with the first `n` positions of `donor` (a
    /// cache of the same engine): its rows, tokens and forward-pass lengths. The rows are
    /// not copied: the donor's first `n` rows become shared rows (moved out of its own
    /// buffers if they are not shared yet), held once for both. Where the donor shares
    /// fewer than `n` rows, the rest is copied.
    pub fn share_prefix_of(&mut self, donor: &mut KvCache, n: usize) {
        assert!(
            n <= donor.len() && n <= self.max_positions,
            "the prefix is held by the donor and fits this cache"
        );
        assert_eq!(
            (self.ty, self.kv_dim, self.k.len()),
            (donor.ty, donor.kv_dim, donor.k.len()),
            "caches of one engine have one shape"
        );
        if donor.shared.is_none() {
            donor.give_up_prefix(n);
        }
        // An evicted cache's replay plan stays: the rows it takes are the plan's first ones.
        let replay = self.replay.take();
        self.clear();
        self.replay = replay;
        self.shared = donor.shared.clone();
        self.shared_len = donor.shared_len.min(n);
        let copied = (n - self.shared_len) * self.kv_dim;
        let room = self.chunked(self.shared_len, n - self.shared_len) * self.kv_dim;
        for (to, from) in self
            .k
            .iter_mut()
            .zip(&donor.k)
            .chain(self.v.iter_mut().zip(&donor.v))
        {
            if copied > 0 {
                to.reserve_total(room);
            }
            to.extend_from(from, 0..copied);
        }
        self.tokens.extend_from_slice(&donor.tokens[..n]);
        let mut end = 0usize;
        for &segment in &donor.segments {
            if end >= n {
                break;
            }
            let take = (segment as usize).min(n - end);
            self.segments.push(take as u32);
            end += take;
        }
    }

    /// Moves this cache's first `n` rows (it shares none yet) into shared rows; the rest
    /// stay its own, in buffers sized as if computed after them.
    fn give_up_prefix(&mut self, n: usize) {
        debug_assert!(self.shared.is_none() && n <= self.len());
        let split = n * self.kv_dim;
        let rest = (self.len() - n) * self.kv_dim;
        let room = self.chunked(n, self.len() - n) * self.kv_dim;
        let ty = self.ty;
        let mut split_rows = |rows: &mut Rows| {
            let mut prefix = Rows::new(ty);
            prefix.reserve_total(split);
            prefix.extend_from(rows, 0..split);
            let mut own = Rows::new(ty);
            if rest > 0 {
                own.reserve_total(room);
                own.extend_from(rows, split..split + rest);
            }
            *rows = own;
            prefix
        };
        let k = self.k.iter_mut().map(&mut split_rows).collect();
        let v = self.v.iter_mut().map(&mut split_rows).collect();
        self.shared = Some(Arc::new(SharedRows { k, v }));
        self.shared_len = n;
    }

    /// Appends the keys and values (batch, kv_dim) of `layer` for the positions being added.
    pub(crate) fn append_layer(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        let total = self.k[layer].len() + keys.len();
        if total > self.k[layer].capacity() {
            let room =
                self.chunked(self.shared_len, total.div_ceil(self.kv_dim.max(1))) * self.kv_dim;
            self.k[layer].reserve_total(room);
            self.v[layer].reserve_total(room);
        }
        self.k[layer].push(keys);
        self.v[layer].push(values);
    }

    /// Records the tokens whose layers were just appended (one forward pass).
    pub(crate) fn commit_tokens(&mut self, tokens: &[u32]) {
        self.replay = None;
        self.segments.push(tokens.len() as u32);
        self.tokens.extend_from_slice(tokens);
    }

    pub(crate) fn layer(&self, layer: usize) -> (KvSlice<'_>, KvSlice<'_>) {
        let values = self.shared_len * self.kv_dim;
        fn join<'a>(own: &'a Rows, shared: Option<&'a Rows>, values: usize) -> KvSlice<'a> {
            match (own, shared) {
                (Rows::F32(own), None) => KvSlice::F32(KvRows::whole(own)),
                (Rows::F16(own), None) => KvSlice::F16(KvRows::whole(own)),
                (Rows::F32(own), Some(Rows::F32(shared))) => {
                    KvSlice::F32(KvRows::new(&shared[..values], own))
                }
                (Rows::F16(own), Some(Rows::F16(shared))) => {
                    KvSlice::F16(KvRows::new(&shared[..values], own))
                }
                _ => unreachable!("shared rows have the cache's storage type"),
            }
        }
        let shared = self.shared.as_deref();
        (
            join(&self.k[layer], shared.map(|s| &s.k[layer]), values),
            join(&self.v[layer], shared.map(|s| &s.v[layer]), values),
        )
    }

    /// Undoes appends of a forward pass that failed part-way, so the cache stays consistent.
    pub(crate) fn rollback_layers(&mut self) {
        let len = (self.tokens.len() - self.shared_len) * self.kv_dim;
        for rows in self.k.iter_mut().chain(self.v.iter_mut()) {
            rows.truncate(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(cache: &mut KvCache, positions: usize) {
        let values = vec![0.5f32; positions * cache.kv_dim()];
        for layer in 0..cache.n_layer() {
            cache.append_layer(layer, &values, &values);
        }
        cache.commit_tokens(&vec![3; positions]);
    }

    #[test]
    fn the_cache_grows_in_whole_chunks_up_to_its_limit() {
        let mut cache = KvCache::new(KvType::F16, 2, 8, 150);
        let per_position = cache.bytes_per_position();
        assert_eq!(per_position, 2 * 2 * 8 * 2);
        assert_eq!(cache.bytes(), 0, "nothing is reserved up front");
        append(&mut cache, 1);
        assert_eq!(cache.bytes(), 64 * per_position);
        append(&mut cache, 63);
        assert_eq!(
            cache.bytes(),
            64 * per_position,
            "64 positions fit one chunk"
        );
        append(&mut cache, 1);
        assert_eq!(cache.bytes(), 128 * per_position);
        assert_eq!(cache.bytes_for(100), 128 * per_position);
        append(&mut cache, 70);
        assert_eq!(
            cache.bytes(),
            150 * per_position,
            "the last chunk stops at the limit"
        );
        assert_eq!(
            cache.bytes_for(10),
            150 * per_position,
            "what it already holds counts"
        );
        assert_eq!(cache.segments(), &[1, 63, 1, 70]);
        cache.truncate(100);
        assert_eq!(cache.segments(), &[1, 63, 1, 35]);
        cache.evict();
        assert_eq!(cache.bytes(), 0);
        let replay = cache
            .take_replay()
            .expect("an evicted cache remembers its batches");
        assert_eq!(
            (replay.tokens.len(), replay.segments),
            (100, vec![1, 63, 1, 35])
        );
        cache.release();
        assert_eq!(cache.bytes(), 0);
    }

    #[test]
    fn rows_written_and_read_back_give_the_same_cache() {
        for ty in [KvType::F16, KvType::F32] {
            let mut cache = KvCache::new(ty, 3, 4, 100);
            for i in 0..5 {
                let k: Vec<f32> = (0..4).map(|j| (i * 4 + j) as f32 * 0.25).collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                for layer in 0..3 {
                    cache.append_layer(layer, &k, &v);
                }
                cache.commit_tokens(&[i as u32]);
            }
            let mut rows = Vec::new();
            cache.write_rows(&mut rows);
            assert_eq!(rows.len(), 5 * cache.bytes_per_position());
            assert_eq!(cache.segments(), &[1, 1, 1, 1, 1]);
            let back =
                KvCache::from_rows(ty, 3, 4, 100, cache.tokens().to_vec(), vec![2, 3], &rows)
                    .unwrap();
            let mut again = Vec::new();
            back.write_rows(&mut again);
            assert_eq!(again, rows);
            assert_eq!(back.tokens(), cache.tokens());
            assert!(KvCache::from_rows(ty, 3, 4, 100, vec![1], vec![1], &rows).is_err());
            assert!(
                KvCache::from_rows(ty, 3, 4, 2, cache.tokens().to_vec(), vec![5], &rows).is_err()
            );
            assert!(
                KvCache::from_rows(ty, 3, 4, 100, cache.tokens().to_vec(), vec![4], &rows).is_err()
            );
        }
    }

    #[test]
    fn a_shared_prefix_holds_the_donors_rows_tokens_and_passes_once() {
        for ty in [KvType::F32, KvType::F16] {
            let mut donor = KvCache::new(ty, 2, 4, 1000);
            // Passes of 5, 3 and 4 positions; row p of layer l holds p + 100 l (keys) and
            // the negation (values), exact in f16.
            let mut p = 0usize;
            for (pass, tokens) in [(5usize, 10u32), (3, 20), (4, 30)] {
                for layer in 0..2 {
                    let keys: Vec<f32> = (p..p + pass)
                        .flat_map(|q| [(q + 100 * layer) as f32; 4])
                        .collect();
                    let values: Vec<f32> = keys.iter().map(|x| -x).collect();
                    donor.append_layer(layer, &keys, &values);
                }
                donor.commit_tokens(&vec![tokens; pass]);
                p += pass;
            }
            assert!(donor.computes_prefix_alone(5, 5));
            assert!(
                donor.computes_prefix_alone(8, 5),
                "passes of the chunk, then the rest"
            );
            assert!(
                !donor.computes_prefix_alone(8, 512),
                "a first pass shorter than a chunk"
            );
            assert!(!donor.computes_prefix_alone(6, 5), "no pass ends at 6");
            assert!(
                !donor.computes_prefix_alone(13, 5),
                "past what the donor holds"
            );

            let rows_of = |cache: &KvCache| {
                let mut rows = Vec::new();
                cache.write_rows(&mut rows);
                rows
            };
            let donor_rows = rows_of(&donor);
            let prefix_rows = {
                let mut prefix = donor.clone();
                prefix.truncate(8);
                rows_of(&prefix)
            };

            let mut cache = KvCache::new(ty, 2, 4, 1000);
            append(&mut cache, 2);
            cache.share_prefix_of(&mut donor, 8);
            assert_eq!(cache.tokens(), &donor.tokens()[..8]);
            assert_eq!(cache.segments(), [5, 3]);
            assert_eq!(rows_of(&cache), prefix_rows);
            assert_eq!(rows_of(&donor), donor_rows, "the donor holds the same rows");
            let shared = Arc::clone(cache.shared_rows().expect("the rows are shared"));
            assert!(Arc::ptr_eq(&shared, donor.shared_rows().unwrap()));
            assert_eq!(shared.bytes(), 8 * cache.bytes_per_position());
            assert_eq!(
                cache.bytes(),
                64 * cache.bytes_per_position(),
                "the sharer keeps the room it had for its own rows"
            );
            assert_eq!(
                donor.bytes(),
                64 * donor.bytes_per_position(),
                "the donor's 4 other rows in one chunk"
            );
            assert_eq!(cache.bytes_for(72), 64 * cache.bytes_per_position());
            assert_eq!(cache.bytes_for(73), 128 * cache.bytes_per_position());

            // Both go on on their own: what each appends is its own and lands after the
            // shared rows, in the same place the layer view shows it.
            append(&mut cache, 3);
            assert_eq!(cache.len(), 11);
            let mut expected = prefix_rows.clone();
            let mut tail = KvCache::new(ty, 2, 4, 1000);
            append(&mut tail, 3);
            let tail_rows = rows_of(&tail);
            let per_layer = |rows: &[u8], positions: usize| {
                rows.chunks(positions * 4 * ty.bytes_per_value())
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            };
            let (ours, theirs) = (per_layer(&expected, 8), per_layer(&tail_rows, 3));
            expected = ours
                .iter()
                .zip(&theirs)
                .flat_map(|(a, b)| a.iter().chain(b).copied())
                .collect();
            assert_eq!(rows_of(&cache), expected);
            let (keys, _) = cache.layer(1);
            let read = |slice: KvSlice<'_>, position: usize| match slice {
                KvSlice::F32(rows) => rows.span(position * 4, 4)[0],
                KvSlice::F16(rows) => rows.span(position * 4, 4)[0].to_f32(),
            };
            assert_eq!(read(keys, 7), 107.0, "shared row 7 of layer 1");
            assert_eq!(read(keys, 8), 0.5, "the first own row");

            // A third cache takes the same rows from a cache that shares them, fewer of them
            // from a cache that holds more: still one set of rows.
            let mut third = KvCache::new(ty, 2, 4, 1000);
            third.share_prefix_of(&mut cache, 5);
            assert!(Arc::ptr_eq(third.shared_rows().unwrap(), &shared));
            assert_eq!((third.shared_len(), third.len()), (5, 5));
            assert_eq!(rows_of(&third), {
                let mut p = donor.clone();
                p.truncate(5);
                rows_of(&p)
            });
            // More than the shared rows: the rest is copied.
            let mut fourth = KvCache::new(ty, 2, 4, 1000);
            fourth.share_prefix_of(&mut cache, 10);
            assert_eq!((fourth.shared_len(), fourth.len()), (8, 10));
            assert_eq!(rows_of(&fourth), {
                let mut p = cache.clone();
                p.truncate(10);
                rows_of(&p)
            });
            assert_eq!(fourth.segments(), [5, 3, 2]);

            // Truncating into the shared rows keeps a view of fewer; rolling back a failed
            // pass, clearing and evicting let them go.
            cache.truncate(6);
            assert_eq!(
                (cache.shared_len(), cache.len(), rows_of(&cache)),
                (
                    6,
                    6,
                    rows_of(&{
                        let mut p = donor.clone();
                        p.truncate(6);
                        p
                    })
                )
            );
            append(&mut cache, 1);
            assert_eq!(cache.len(), 7);
            cache.clear();
            assert!(cache.shared_rows().is_none());
            third.evict();
            assert!(third.shared_rows().is_none());
            assert_eq!(
                Arc::strong_count(&shared),
                3,
                "the donor, the fourth and this test"
            );
        }
    }
}
