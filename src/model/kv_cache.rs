//! The per-sequence key/value cache.

use half::f16;

use crate::kernels::KvSlice;

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

    fn slice(&self) -> KvSlice<'_> {
        match self {
            Rows::F32(v) => KvSlice::F32(v),
            Rows::F16(v) => KvSlice::F16(v),
        }
    }

    fn capacity_bytes(&self) -> usize {
        match self {
            Rows::F32(v) => v.capacity() * 4,
            Rows::F16(v) => v.capacity() * 2,
        }
    }
}

/// Keys and values of every layer for one token sequence, positions 0..len.
/// Per layer, k and v are (positions, kv_dim); they grow as tokens are appended, so a short
/// chat does not pay for the whole context up front.
#[derive(Debug, Clone)]
pub struct KvCache {
    ty: KvType,
    kv_dim: usize,
    k: Vec<Rows>,
    v: Vec<Rows>,
    /// The token ids whose keys and values are stored, in order.
    tokens: Vec<u32>,
    max_positions: usize,
}

impl KvCache {
    pub fn new(ty: KvType, n_layer: usize, kv_dim: usize, max_positions: usize) -> Self {
        Self {
            ty,
            kv_dim,
            k: (0..n_layer).map(|_| Rows::new(ty)).collect(),
            v: (0..n_layer).map(|_| Rows::new(ty)).collect(),
            tokens: Vec::new(),
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

    /// Forgets every position from `len` on (prefix reuse: keep what still matches).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.tokens.len() {
            return;
        }
        self.tokens.truncate(len);
        for rows in self.k.iter_mut().chain(self.v.iter_mut()) {
            rows.truncate(len * self.kv_dim);
        }
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Releases the memory too (budget eviction).
    pub fn release(&mut self) {
        *self = Self::new(self.ty, self.k.len(), self.kv_dim, self.max_positions);
    }

    /// Bytes held by the cache's buffers.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(Rows::capacity_bytes).sum()
    }

    /// Bytes one cached position takes across all layers.
    pub fn bytes_per_position(&self) -> usize {
        2 * self.k.len() * self.kv_dim * self.ty.bytes_per_value()
    }

    /// Appends the keys and values (batch, kv_dim) of `layer` for the positions being added.
    pub(crate) fn append_layer(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        self.k[layer].push(keys);
        self.v[layer].push(values);
    }

    /// Records the tokens whose layers were just appended.
    pub(crate) fn commit_tokens(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    pub(crate) fn layer(&self, layer: usize) -> (KvSlice<'_>, KvSlice<'_>) {
        (self.k[layer].slice(), self.v[layer].slice())
    }

    /// Undoes appends of a forward pass that failed part-way, so the cache stays consistent.
    pub(crate) fn rollback_layers(&mut self) {
        let len = self.tokens.len() * self.kv_dim;
        for rows in self.k.iter_mut().chain(self.v.iter_mut()) {
            rows.truncate(len);
        }
    }
}
