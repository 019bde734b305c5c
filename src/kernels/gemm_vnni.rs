//! AVX-512 VNNI matrix × activations for the quantized weight types of the test models
//! (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K): one kernel serves decode (one activation row) and
//! prefill (many rows, weight tiles reused across them).
//!
//! Activations are quantized exactly as ggml does (the same Q8_0 / Q8_1 / Q8_K blocks, see
//! `quant::quantize_activations`), then spread into a [`Panel`]: per 64 elements, the 64 quants
//! and three 16-lane vectors (an integer correction, a scale and an offset term). Weights are
//! read in place from the map and unpacked, four rows at a time, into unsigned bytes in the
//! same element order, so that one `vpdpbusd` multiplies 64 weight and activation bytes.
//!
//! Integer sums are exact; each output is Σ over 64-element pairs of
//! `float(isum) · (weight scale · activation scale) + weight offset · activation offset`,
//! lane by lane, then one horizontal sum. Every output takes the same operations in the same
//! order whatever the tile, batch split or thread count, so results are bit-identical across
//! thread counts; against the scalar reference they differ only in float summation order.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::cpu::Avx512Vbmi;
use crate::quant::{BlockQ8_0, BlockQ8_1, BlockQ8_K, GgmlType};

/// 64 bytes, aligned for 512-bit loads: 64 quants, 16 i32 or 16 f32 lanes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Lanes([u8; 64]);

const ZERO_LANES: Lanes = Lanes([0; 64]);

/// Weight types with a VNNI kernel, and how each one's activations are prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl Format {
    /// The activation format this weight format's kernel reads (ggml's `vec_dot_type`).
    pub fn activation_type(self) -> GgmlType {
        match self {
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_1 => GgmlType::Q8_1,
            Self::Q4K | Self::Q6K => GgmlType::Q8_K,
        }
    }

    /// The VNNI format of weight type `ty` over rows of `cols` elements, when there is one.
    pub fn of(ty: GgmlType, cols: usize) -> Option<Self> {
        let format = match ty {
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 => Self::Q4_1,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4_K => Self::Q4K,
            GgmlType::Q6_K => Self::Q6K,
            _ => return None,
        };
        (cols.is_multiple_of(64) && cols.is_multiple_of(ty.block_elements())).then_some(format)
    }

    const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }
}

/// One 64-element pair of one activation row, everything the kernel reads for it together.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct PanelSlot {
    /// The 64 quants, in element order.
    qs: Lanes,
    /// i32 lanes: what the weights' unsigned shift adds, subtracted up front.
    corr: Lanes,
    /// f32 lanes: the activation scale of the block each lane belongs to.
    scale: Lanes,
    /// f32 lanes: the activation side of the offset (min) term, one lane a block.
    offset: Lanes,
}

const ZERO_PANEL_SLOT: PanelSlot = PanelSlot {
    qs: ZERO_LANES,
    corr: ZERO_LANES,
    scale: ZERO_LANES,
    offset: ZERO_LANES,
};

/// Activation rows prepared for one weight format.
#[derive(Default)]
pub struct Panel {
    rows: usize,
    pairs: usize,
    /// The activation format the panel was filled from.
    act_ty: Option<GgmlType>,
    /// (rows, offset_stride): the activation side of the offset term, one value per 32
    /// elements, zero-padded to a multiple of 16 (the prefill kernel's compact form).
    offsets: Vec<f32>,
    offset_stride: usize,
    /// (rows, pairs)
    slots: Vec<PanelSlot>,
}

/// Values per row of the compact offset vectors: two per pair, padded to whole vectors.
fn offset_stride(pairs: usize) -> usize {
    (2 * pairs).div_ceil(16) * 16
}

fn f16(bytes: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bytes).to_f32()
}

fn put_i32(lanes: &mut Lanes, lane: usize, v: i32) {
    lanes.0[lane * 4..lane * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_f32(lanes: &mut Lanes, lane: usize, v: f32) {
    lanes.0[lane * 4..lane * 4 + 4].copy_from_slice(&v.to_le_bytes());
}

impl std::fmt::Debug for Panel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Panel")
            .field("rows", &self.rows)
            .field("pairs", &self.pairs)
            .finish_non_exhaustive()
    }
}

impl Panel {
    /// Spreads `rows` activation rows of `cols` elements, already quantized to `act_ty`
    /// (Q8_0, Q8_1 or Q8_K; `blocks` is (rows, row bytes)), into the panel. One panel serves
    /// every weight format whose `vec_dot_type` is `act_ty`.
    pub fn fill(&mut self, act_ty: GgmlType, blocks: &[u8], rows: usize, cols: usize) {
        let pairs = cols / 64;
        self.rows = rows;
        self.pairs = pairs;
        self.act_ty = Some(act_ty);
        self.slots.clear();
        self.slots.resize(rows * pairs, ZERO_PANEL_SLOT);
        self.offset_stride = offset_stride(pairs);
        self.offsets.clear();
        self.offsets.resize(rows * self.offset_stride, 0.0);
        let row_bytes = blocks.len() / rows.max(1);
        for (r, row) in blocks.chunks_exact(row_bytes).enumerate() {
            for p in 0..pairs {
                let slot = &mut self.slots[r * pairs + p];
                match act_ty {
                    GgmlType::Q8_1 => {
                        let b: &[BlockQ8_1] = bytemuck::cast_slice(row);
                        let pair = [&b[2 * p], &b[2 * p + 1]];
                        fill_legacy_pair(slot, pair.map(|x| (x.d, &x.qs)));
                        for (half, x) in pair.iter().enumerate() {
                            put_f32(&mut slot.offset, 8 * half, f16(x.s));
                        }
                    }
                    GgmlType::Q8_K => {
                        let b: &[BlockQ8_K] = bytemuck::cast_slice(row);
                        let (block, within) = (&b[p / 4], p % 4);
                        let d = block.d();
                        slot.qs.0.copy_from_slice(bytemuck::cast_slice(
                            &block.qs[within * 64..within * 64 + 64],
                        ));
                        for lane in 0..16 {
                            put_f32(&mut slot.scale, lane, d);
                        }
                        let bsum = |g: usize| block.bsum(4 * within + g);
                        // Q4_K's min term per 32 elements; Q6_K's unsigned shift per 16.
                        put_f32(&mut slot.offset, 0, -d * (bsum(0) + bsum(1)) as f32);
                        put_f32(&mut slot.offset, 8, -d * (bsum(2) + bsum(3)) as f32);
                        for g in 0..4 {
                            put_i32(&mut slot.corr, 4 * g, -bsum(g));
                        }
                    }
                    GgmlType::Q8_0 => {
                        let b: &[BlockQ8_0] = bytemuck::cast_slice(row);
                        fill_legacy_pair(slot, [&b[2 * p], &b[2 * p + 1]].map(|x| (x.d, &x.qs)));
                    }
                    other => panic!("no VNNI kernel reads activations of type {other}"),
                }
                let lanes: &[f32] = bytemuck::cast_slice(&slot.offset.0);
                let dense = &mut self.offsets[r * self.offset_stride + 2 * p..][..2];
                dense.copy_from_slice(&[lanes[0], lanes[8]]);
            }
        }
    }
}

/// Two 32-element blocks (d, quants) of Q8_0 / Q8_1 into a slot, with −Σq of each block in
/// lanes 0 and 8 of `corr`.
fn fill_legacy_pair(slot: &mut PanelSlot, blocks: [([u8; 2], &[i8; 32]); 2]) {
    for (half, (d, qs)) in blocks.into_iter().enumerate() {
        slot.qs.0[half * 32..half * 32 + 32].copy_from_slice(bytemuck::cast_slice(qs));
        let d = f16(d);
        for lane in 0..8 {
            put_f32(&mut slot.scale, 8 * half + lane, d);
        }
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        put_i32(&mut slot.corr, 8 * half, -sum);
    }
}

/// The dot product's integer accumulator before the first pair: the weight format's unsigned
/// shift (q + 8, q + 16, q + 128, q + 32) times the activations' −Σq, or zero. Inlined into
/// the `#[target_feature]` kernels, which enable avx512f.
#[inline(always)]
unsafe fn initial_sum<const FMT: u8>(corr: &Lanes) -> __m512i {
    // SAFETY: Lanes is 64 bytes, 64-byte aligned, so the aligned load reads exactly `corr`;
    // the caller enabled avx512f.
    unsafe {
        let neg_sums = || _mm512_load_si512(corr.0.as_ptr().cast());
        match const { format_of(FMT) } {
            Format::Q4_0 => _mm512_slli_epi32::<3>(neg_sums()),
            Format::Q5_0 => _mm512_slli_epi32::<4>(neg_sums()),
            Format::Q8_0 => _mm512_slli_epi32::<7>(neg_sums()),
            Format::Q6K => _mm512_slli_epi32::<5>(neg_sums()),
            Format::Q4_1 | Format::Q4K => _mm512_setzero_si512(),
        }
    }
}

/// Whether weight format `FMT` has an offset (min) term.
const fn has_offset(fmt: u8) -> bool {
    match format_of(fmt) {
        Format::Q4_1 | Format::Q4K => true,
        Format::Q4_0 | Format::Q5_0 | Format::Q8_0 | Format::Q6K => false,
    }
}

/// Weight rows per tile: the unpacked tile is reused across every activation row.
const TILE_ROWS: usize = 4;
/// Activation rows per inner kernel call (TILE_ROWS × TILE_COLS accumulators in registers).
const TILE_COLS: usize = 4;
/// How far ahead of the current tile the weight rows are prefetched.
const PREFETCH_ROWS_AHEAD: usize = 32;
/// Activation rows whose panel part stays in L2 while the weight rows stream past.
const COLUMN_BLOCK: usize = 64;

/// One 64-element pair of one weight row, unpacked.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct TileSlot {
    /// The 64 quants as unsigned bytes, in element order.
    q: Lanes,
    /// f32 lanes: the weight scale of each lane's block (or sub-block).
    scale: Lanes,
}

const ZERO_TILE_SLOT: TileSlot = TileSlot {
    q: ZERO_LANES,
    scale: ZERO_LANES,
};

/// A tile of weight rows unpacked to unsigned bytes, with per-lane scales and offsets.
#[derive(Default)]
struct WeightTile {
    /// (TILE_ROWS, pairs)
    slots: Vec<TileSlot>,
    /// (TILE_ROWS, offset_stride): the weight side of the offset term, one value per 32
    /// elements, zero-padded like the panel's.
    offsets: Vec<f32>,
}

thread_local! {
    static TILE: RefCell<WeightTile> = RefCell::new(WeightTile::default());
}

/// out[b * n_rows + r] = Σ w[r]·x[b] for the weight rows `rows` and every panel row b.
///
/// `weights` is the whole matrix (n_rows rows of the format's row bytes, as in the file), and
/// `panel` holds activations for `format` with the matrix's column count (both checked).
///
/// # Safety
/// `out` must point to (panel rows, n_rows) floats of which no other thread reads or writes
/// the columns `rows` during the call.
pub unsafe fn matmul_rows(
    _cpu: Avx512Vbmi,
    format: Format,
    weights: &[u8],
    n_rows: usize,
    rows: std::ops::Range<usize>,
    panel: &Panel,
    out: *mut f32,
) {
    macro_rules! by_format {
        ($f:ident, $($args:tt)*) => {
            match format {
                Format::Q4_0 => $f::<Q4_0, $($args)*>,
                Format::Q4_1 => $f::<Q4_1, $($args)*>,
                Format::Q5_0 => $f::<Q5_0, $($args)*>,
                Format::Q8_0 => $f::<Q8_0, $($args)*>,
                Format::Q4K => $f::<Q4K, $($args)*>,
                Format::Q6K => $f::<Q6K, $($args)*>,
            }
        };
    }
    // The kernels' unchecked reads of the panel and the weights rest on these.
    let row_bytes = panel.pairs * 64 / format_block_elements(format) * format.block_bytes();
    assert_eq!(panel.act_ty, Some(format.activation_type()), "panel format");
    assert_eq!(panel.slots.len(), panel.rows * panel.pairs, "panel size");
    assert_eq!(
        weights.len(),
        n_rows * row_bytes,
        "weights are n_rows × row bytes"
    );
    assert!(rows.end <= n_rows, "rows inside the matrix");
    // SAFETY: `_cpu` proves every feature the kernels enable; the panel and weights have the
    // sizes they read (asserted above); the caller gives this call the columns `rows` of
    // (panel rows, n_rows) outputs at `out`, which are all it writes.
    unsafe {
        match panel.rows {
            1 => by_format!(gemv_rows, 1)(weights, row_bytes, n_rows, rows, panel, out),
            2 => by_format!(gemv_rows, 2)(weights, row_bytes, n_rows, rows, panel, out),
            3 => by_format!(gemv_rows, 3)(weights, row_bytes, n_rows, rows, panel, out),
            _ => by_format!(gemm_rows,)(weights, row_bytes, n_rows, rows, panel, out),
        }
    }
}

/// Prefill-sized products: weight rows unpacked once per tile and reused across a block
/// of activation rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,fma,f16c")]
unsafe fn gemm_rows<const FMT: u8>(
    weights: &[u8],
    row_bytes: usize,
    n_rows: usize,
    rows: std::ops::Range<usize>,
    panel: &Panel,
    out: *mut f32,
) {
    let pairs = panel.pairs;
    TILE.with_borrow_mut(|tile| {
        tile.slots.resize(TILE_ROWS * pairs, ZERO_TILE_SLOT);
        tile.offsets.clear();
        tile.offsets.resize(TILE_ROWS * offset_stride(pairs), 0.0);
        for col_start in (0..panel.rows).step_by(COLUMN_BLOCK) {
            let col_end = (col_start + COLUMN_BLOCK).min(panel.rows);
            let mut r0 = rows.start;
            while r0 < rows.end {
                let n_r = TILE_ROWS.min(rows.end - r0);
                for t in 0..n_r {
                    let row = &weights[(r0 + t) * row_bytes..(r0 + t + 1) * row_bytes];
                    unpack_row::<FMT>(row, pairs, tile, t * pairs);
                }
                let mut c0 = col_start;
                while c0 < col_end {
                    let n_c = TILE_COLS.min(col_end - c0);
                    // SAFETY: tile rows 0..n_r and panel rows c0..c0+n_c are filled; the outputs
                    // (c0.., r0..) lie in this call's rows of `out`.
                    unsafe {
                        dispatch_tile::<FMT>(n_r, n_c, tile, panel, pairs, c0, r0, n_rows, out)
                    };
                    c0 += n_c;
                }
                r0 += n_r;
            }
        }
    });
}

fn format_block_elements(format: Format) -> usize {
    match format {
        Format::Q4K | Format::Q6K => 256,
        Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q8_0 => 32,
    }
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,fma,f16c")]
unsafe fn dispatch_tile<const FMT: u8>(
    n_r: usize,
    n_c: usize,
    tile: &WeightTile,
    panel: &Panel,
    pairs: usize,
    c0: usize,
    r0: usize,
    n_rows: usize,
    out: *mut f32,
) {
    macro_rules! go {
        ($r:literal, $c:literal) => {
            // SAFETY: the caller filled tile rows 0..n_r and has panel rows c0..c0 + n_c
            // with `pairs` slots each, and owns outputs (c0.., r0..) of `out`; this function
            // enables the kernel's features.
            unsafe { kernel::<FMT, $r, $c>(tile, panel, pairs, c0, r0, n_rows, out) }
        };
    }
    match (n_r, n_c) {
        (4, 4) => go!(4, 4),
        (4, 3) => go!(4, 3),
        (4, 2) => go!(4, 2),
        (4, 1) => go!(4, 1),
        (3, 4) => go!(3, 4),
        (3, 3) => go!(3, 3),
        (3, 2) => go!(3, 2),
        (3, 1) => go!(3, 1),
        (2, 4) => go!(2, 4),
        (2, 3) => go!(2, 3),
        (2, 2) => go!(2, 2),
        (2, 1) => go!(2, 1),
        (1, 4) => go!(1, 4),
        (1, 3) => go!(1, 3),
        (1, 2) => go!(1, 2),
        (1, 1) => go!(1, 1),
        _ => unreachable!("tiles are 1..=4 × 1..=4"),
    }
}

/// R weight rows × C activation rows, all pairs.
#[inline(always)]
unsafe fn kernel<const FMT: u8, const R: usize, const C: usize>(
    tile: &WeightTile,
    panel: &Panel,
    pairs: usize,
    c0: usize,
    r0: usize,
    n_rows: usize,
    out: *mut f32,
) {
    // SAFETY: tile rows 0..R and panel rows c0..c0 + C hold `pairs` slots each (the caller
    // filled them); slots are 64-byte aligned for the aligned loads; the caller owns the
    // written outputs.
    unsafe {
        let w_rows: [*const TileSlot; R] =
            std::array::from_fn(|r| tile.slots.as_ptr().add(r * pairs));
        let a_rows: [*const PanelSlot; C] =
            std::array::from_fn(|c| panel.slots.as_ptr().add((c0 + c) * pairs));
        let mut acc = [[_mm512_setzero_ps(); C]; R];
        for p in 0..pairs {
            for c in 0..C {
                let a = &*a_rows[c].add(p);
                let qs = _mm512_load_si512(a.qs.0.as_ptr().cast());
                let a_scale = _mm512_load_ps(a.scale.0.as_ptr().cast());
                let init = initial_sum::<FMT>(&a.corr);
                for r in 0..R {
                    let w = &*w_rows[r].add(p);
                    let isum =
                        _mm512_dpbusd_epi32(init, _mm512_load_si512(w.q.0.as_ptr().cast()), qs);
                    let scale = _mm512_mul_ps(_mm512_load_ps(w.scale.0.as_ptr().cast()), a_scale);
                    acc[r][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc[r][c]);
                }
            }
        }
        if has_offset(FMT) {
            // The min term, Σ_blocks weight offset · activation offset, from the compact
            // per-block vectors: 16 blocks per FMA instead of one FMA per pair.
            let stride = panel.offset_stride;
            for (r, acc) in acc.iter_mut().enumerate() {
                let w_off = &tile.offsets[r * stride..(r + 1) * stride];
                for (c, acc) in acc.iter_mut().enumerate() {
                    let a_off = &panel.offsets[(c0 + c) * stride..(c0 + c + 1) * stride];
                    for j in (0..stride).step_by(16) {
                        *acc = _mm512_fmadd_ps(
                            _mm512_loadu_ps(w_off.as_ptr().add(j)),
                            _mm512_loadu_ps(a_off.as_ptr().add(j)),
                            *acc,
                        );
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                *out.add((c0 + c) * n_rows + r0 + r) = _mm512_reduce_add_ps(v);
            }
        }
    }
}

/// Lane permutations of a 4-float vector [f0, f1, f2, f3]: each unit of 4 lanes takes f_u.
const QUAD_SPREAD: [i32; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];
/// Lanes 0..8 take f0, lanes 8..16 take f1 (one value per 32-element block).
const PAIR_SPREAD: [i32; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
/// For [d0, m0, d1, m1]: the scales d0, d1 of two blocks.
const PAIR_SPREAD_SCALES: [i32; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2];
/// For [d0, m0, d1, m1]: the mins m0, m1 of two blocks.
const PAIR_SPREAD_MINS: [i32; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3];

/// Byte indices into a legacy pair putting block 0's 16 nibble bytes (at `q0`) in 128-bit
/// units 0 and 1 and block 1's (at `q1`) in units 2 and 3; [`NIBBLE_SHIFTS`] then keeps the
/// low nibbles in units 0 and 2 and the high ones in units 1 and 3: element order.
const fn nibble_index(q0: u8, q1: u8) -> [u8; 64] {
    let mut index = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        index[i] = if i < 32 { q0 } else { q1 } + (i % 16) as u8;
        i += 1;
    }
    index
}
const Q4_0_NIBBLES: [u8; 64] = nibble_index(2, 20);
const Q4_1_NIBBLES: [u8; 64] = nibble_index(4, 24);
const Q5_0_NIBBLES: [u8; 64] = nibble_index(6, 28);
/// Per 16-bit lane: shift 0 in units 0 and 2, 4 in units 1 and 3.
const NIBBLE_SHIFTS: [u16; 32] = {
    let mut s = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        s[i] = if (i / 8) % 2 == 1 { 4 } else { 0 };
        i += 1;
    }
    s
};
/// Q8_0 pair (68 bytes) from loads at bytes 0 and 4: quants 2..34 of the first, 36..68
/// (= 32..64 of the second load, index 64 + 32 + j) of the second block.
const Q8_0_QUANTS: [u8; 64] = {
    let mut index = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        index[i] = if i < 32 { 2 + i as u8 } else { 64 + i as u8 };
        i += 1;
    }
    index
};
/// f16 word positions of the scales (and Q4_1's mins) within a pair.
const Q4_0_WORDS: [u16; 32] = words_at([0, 9, 0, 0]);
const Q4_1_WORDS: [u16; 32] = words_at([0, 1, 10, 11]);
const Q5_0_WORDS: [u16; 32] = words_at([0, 11, 0, 0]);
const Q8_0_WORDS: [u16; 32] = words_at([0, 17, 0, 0]);
const fn words_at(first: [u16; 4]) -> [u16; 32] {
    let mut w = [0u16; 32];
    w[0] = first[0];
    w[1] = first[1];
    w[2] = first[2];
    w[3] = first[3];
    w
}

#[inline(always)]
unsafe fn idx8(v: &[u8; 64]) -> __m512i {
    // SAFETY: reads 64 bytes from a 64-byte array.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

#[inline(always)]
unsafe fn idx(v: &[i32; 16]) -> __m512i {
    // SAFETY: reads 64 bytes from a 16-element i32 array.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

#[inline(always)]
unsafe fn store(dst: &mut Lanes, v: __m512i) {
    // SAFETY: Lanes is 64 bytes, 64-byte aligned.
    unsafe { _mm512_store_si512(dst.0.as_mut_ptr().cast(), v) }
}

#[inline(always)]
unsafe fn store_ps(dst: &mut Lanes, v: __m512) {
    // SAFETY: Lanes is 64 bytes, 64-byte aligned.
    unsafe { _mm512_store_ps(dst.0.as_mut_ptr().cast(), v) }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K block (ggml's get_scale_min_k4).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Format ids for const generics (one monomorphized kernel per weight format; enums cannot
/// be const parameters on stable Rust). Kernels turn the id back into a [`Format`] at compile
/// time, with `const { format_of(FMT) }`, and match on that exhaustively.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q8_0: u8 = 3;
const Q4K: u8 = 4;
const Q6K: u8 = 5;

/// The format of a kernel id; any other id fails to compile where a kernel uses it.
const fn format_of(id: u8) -> Format {
    match id {
        Q4_0 => Format::Q4_0,
        Q4_1 => Format::Q4_1,
        Q5_0 => Format::Q5_0,
        Q8_0 => Format::Q8_0,
        Q4K => Format::Q4K,
        Q6K => Format::Q6K,
        _ => panic!("not a VNNI format id"),
    }
}

/// Pair `p` (elements 64p..64p + 64) of a weight row: the 64 quants as unsigned bytes in
/// element order, the per-lane weight scale, and the per-lane weight offset (zero for
/// formats without one). Inlined into the `#[target_feature]` kernels, which enable its
/// features.
#[inline(always)]
unsafe fn load_pair<const FMT: u8>(row: &[u8], p: usize) -> (__m512i, __m512, __m512) {
    let format = const { format_of(FMT) };
    let bb = format.block_bytes();
    // SAFETY: the slices below are bounds-checked views of `row`; every load reads inside
    // them (the masked load only its first 2·bb bytes); register intrinsics run under the
    // caller's enabled target features.
    unsafe {
        match format {
            Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q8_0 => {
                // Both blocks of the pair come in one or two 64-byte loads; byte and word
                // permutes pick the quants and the f16 scales out of them.
                let pair = &row[2 * p * bb..(2 * p + 2) * bb];
                let ptr = pair.as_ptr();
                let (q, words) = if FMT == Q8_0 {
                    let a = _mm512_loadu_si512(ptr.cast());
                    let b = _mm512_loadu_si512(ptr.add(2 * bb - 64).cast());
                    let q = _mm512_permutex2var_epi8(a, idx8(&Q8_0_QUANTS), b);
                    (_mm512_xor_si512(q, _mm512_set1_epi8(0x80u8 as i8)), a)
                } else {
                    let a = _mm512_maskz_loadu_epi8((1u64 << (2 * bb)) - 1, ptr.cast());
                    let (index, shifts) = match format {
                        Format::Q4_0 => (&Q4_0_NIBBLES, NIBBLE_SHIFTS),
                        Format::Q4_1 => (&Q4_1_NIBBLES, NIBBLE_SHIFTS),
                        Format::Q5_0 => (&Q5_0_NIBBLES, NIBBLE_SHIFTS),
                        Format::Q8_0 | Format::Q4K | Format::Q6K => {
                            unreachable!("nibble formats only")
                        }
                    };
                    let spread = _mm512_permutexvar_epi8(idx8(index), a);
                    let shift = _mm512_loadu_si512(shifts.as_ptr().cast());
                    let mut q =
                        _mm512_and_si512(_mm512_srlv_epi16(spread, shift), _mm512_set1_epi8(0x0f));
                    if FMT == Q5_0 {
                        let qh0 = u32::from_le_bytes([pair[2], pair[3], pair[4], pair[5]]) as u64;
                        let qh1 = u32::from_le_bytes([
                            pair[bb + 2],
                            pair[bb + 3],
                            pair[bb + 4],
                            pair[bb + 5],
                        ]) as u64;
                        q = _mm512_or_si512(
                            q,
                            _mm512_maskz_mov_epi8(qh0 | (qh1 << 32), _mm512_set1_epi8(0x10)),
                        );
                    }
                    (q, a)
                };
                // f16 words [d0, m0, d1, m1] (Q4_1) or [d0, d1] into the low lanes.
                let word_index = match format {
                    Format::Q4_1 => &Q4_1_WORDS,
                    Format::Q4_0 => &Q4_0_WORDS,
                    Format::Q5_0 => &Q5_0_WORDS,
                    Format::Q8_0 => &Q8_0_WORDS,
                    Format::Q4K | Format::Q6K => unreachable!("32-element block formats only"),
                };
                let w =
                    _mm512_permutexvar_epi16(_mm512_loadu_si512(word_index.as_ptr().cast()), words);
                let f = _mm512_castps128_ps512(_mm_cvtph_ps(_mm512_castsi512_si128(w)));
                if FMT == Q4_1 {
                    (
                        q,
                        _mm512_permutexvar_ps(idx(&PAIR_SPREAD_SCALES), f),
                        _mm512_permutexvar_ps(idx(&PAIR_SPREAD_MINS), f),
                    )
                } else {
                    (
                        q,
                        _mm512_permutexvar_ps(idx(&PAIR_SPREAD), f),
                        _mm512_setzero_ps(),
                    )
                }
            }
            Format::Q4K => {
                let (sb, within) = (p / 4, p % 4);
                let b = &row[sb * bb..(sb + 1) * bb];
                let y = _mm256_loadu_si256(b[16 + 32 * within..].as_ptr().cast());
                let z = _mm512_broadcast_i64x4(y);
                // The low nibbles are sub-block 2·within, the high ones sub-block 2·within + 1.
                let rep = 0x0001_0001_0001_0001i64;
                let shifts = _mm512_set_epi64(4 * rep, 4 * rep, 4 * rep, 4 * rep, 0, 0, 0, 0);
                let q = _mm512_and_si512(_mm512_srlv_epi16(z, shifts), _mm512_set1_epi8(0x0f));
                let d = f16([b[0], b[1]]);
                let dmin = f16([b[2], b[3]]);
                let (s0, m0) = scale_min_k4(2 * within, &b[4..16]);
                let (s1, m1) = scale_min_k4(2 * within + 1, &b[4..16]);
                let sv = _mm_set_ps(0.0, 0.0, d * s1 as f32, d * s0 as f32);
                let mv = _mm_set_ps(0.0, 0.0, dmin * m1 as f32, dmin * m0 as f32);
                (
                    q,
                    _mm512_permutexvar_ps(idx(&PAIR_SPREAD), _mm512_castps128_ps512(sv)),
                    _mm512_permutexvar_ps(idx(&PAIR_SPREAD), _mm512_castps128_ps512(mv)),
                )
            }
            Format::Q6K => {
                let (sb, within) = (p / 4, p % 4);
                let b = &row[sb * bb..(sb + 1) * bb];
                let (half, upper) = (within / 2, within % 2);
                let ql = _mm512_loadu_si512(b[64 * half..64 * half + 64].as_ptr().cast());
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    b[128 + 32 * half..160 + 32 * half].as_ptr().cast(),
                ));
                let low = if upper == 0 {
                    ql
                } else {
                    _mm512_srli_epi16(ql, 4)
                };
                let low = _mm512_and_si512(low, _mm512_set1_epi8(0x0f));
                // Bit pairs 2k of qh hold element group k: shifts 0/2 for the lower pair of
                // the half, 4/6 for the upper.
                let (s_lo, s_hi) = if upper == 0 { (0i64, 2i64) } else { (4, 6) };
                let rep = 0x0001_0001_0001_0001i64;
                let shifts = _mm512_set_epi64(
                    s_hi * rep,
                    s_hi * rep,
                    s_hi * rep,
                    s_hi * rep,
                    s_lo * rep,
                    s_lo * rep,
                    s_lo * rep,
                    s_lo * rep,
                );
                let high = _mm512_and_si512(_mm512_srlv_epi16(qh, shifts), _mm512_set1_epi8(0x03));
                let q = _mm512_or_si512(low, _mm512_slli_epi16(high, 4));
                let d = f16([b[208], b[209]]);
                let sc = |u: usize| d * (b[192 + 4 * within + u] as i8) as f32;
                let sv = _mm_set_ps(sc(3), sc(2), sc(1), sc(0));
                (
                    q,
                    _mm512_permutexvar_ps(idx(&QUAD_SPREAD), _mm512_castps128_ps512(sv)),
                    _mm512_setzero_ps(),
                )
            }
        }
    }
}

/// Unpacks every pair of one weight row into tile slots `first..first + pairs`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,fma,f16c")]
fn unpack_row<const FMT: u8>(row: &[u8], pairs: usize, tile: &mut WeightTile, first: usize) {
    for p in 0..pairs {
        // SAFETY: load_pair reads only through bounds-checked slices of `row`, and this
        // function enables its features; the slot is a bounds-checked element of the tile,
        // and Lanes are 64 bytes, 64-byte aligned, for the aligned stores.
        unsafe {
            let (q, scale, offset) = load_pair::<FMT>(row, p);
            let slot = &mut tile.slots[first + p];
            store(&mut slot.q, q);
            store_ps(&mut slot.scale, scale);
            if has_offset(FMT) {
                let mut lanes = [0.0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), offset);
                let row = first / pairs;
                let dense = &mut tile.offsets[row * offset_stride(pairs) + 2 * p..][..2];
                dense.copy_from_slice(&[lanes[0], lanes[8]]);
            }
        }
    }
}

/// Decode-sized products (fewer than `TILE_COLS` activation rows): each weight pair is
/// unpacked in registers and used at once, one weight row at a time with its rows ahead
/// prefetched.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,fma,f16c")]
unsafe fn gemv_rows<const FMT: u8, const C: usize>(
    weights: &[u8],
    row_bytes: usize,
    n_rows: usize,
    rows: std::ops::Range<usize>,
    panel: &Panel,
    out: *mut f32,
) {
    let pairs = panel.pairs;
    // SAFETY: rows lie inside `weights`; panel rows 0..C are filled with `pairs` pairs; the
    // caller owns the outputs of `rows`; Lanes are 64-byte aligned.
    unsafe {
        for r in rows {
            let ahead = ((r + PREFETCH_ROWS_AHEAD) * row_bytes).min(weights.len());
            let ahead_end = (ahead + row_bytes).min(weights.len());
            for line in (ahead..ahead_end).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(weights.as_ptr().add(line).cast());
            }
            let row = &weights[r * row_bytes..(r + 1) * row_bytes];
            let mut acc = [_mm512_setzero_ps(); C];
            for p in 0..pairs {
                let (w, w_scale, w_offset) = load_pair::<FMT>(row, p);
                for (c, acc) in acc.iter_mut().enumerate() {
                    let a = &panel.slots[c * pairs + p];
                    let qs = _mm512_load_si512(a.qs.0.as_ptr().cast());
                    let a_scale = _mm512_load_ps(a.scale.0.as_ptr().cast());
                    let isum = _mm512_dpbusd_epi32(initial_sum::<FMT>(&a.corr), w, qs);
                    *acc = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(isum),
                        _mm512_mul_ps(w_scale, a_scale),
                        *acc,
                    );
                    if has_offset(FMT) {
                        let a_offset = _mm512_load_ps(a.offset.0.as_ptr().cast());
                        *acc = _mm512_fmadd_ps(w_offset, a_offset, *acc);
                    }
                }
            }
            for (c, &v) in acc.iter().enumerate() {
                *out.add(c * n_rows + r) = _mm512_reduce_add_ps(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::{random_k_rows, values};
    use crate::quant;

    fn weights(ty: GgmlType, rows: usize, n: usize, seed: u64) -> Vec<u8> {
        match ty {
            GgmlType::Q4_K => random_k_rows(ty, rows, n, seed, &[0, 2]),
            GgmlType::Q6_K => random_k_rows(ty, rows, n, seed, &[208]),
            _ => {
                let mut out = Vec::new();
                let mut all = Vec::new();
                for r in 0..rows {
                    // Rows of very different magnitudes, some all zero.
                    let scale = [1.0f32, 1e-3, 50.0, 0.0][r % 4];
                    quant::quantize_row(ty, &values(n, seed + r as u64, scale), &mut out).unwrap();
                    all.extend_from_slice(&out);
                }
                all
            }
        }
    }

    #[test]
    fn vnni_matmul_matches_the_reference_on_awkward_shapes() {
        let Some(cpu) = Avx512Vbmi::detect() else {
            eprintln!("no AVX-512 VNNI and VBMI on this CPU: nothing to compare");
            return;
        };
        let types = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ];
        for ty in types {
            for (n, rows, batch, act_scale) in [
                (256usize, 7usize, 1usize, 1.0f32),
                (512, 9, 5, 1e-4),
                (768, 4, 70, 300.0),
                (256, 1, 3, 0.0),
            ] {
                let format = Format::of(ty, n).unwrap();
                let w = weights(ty, rows, n, 11 + n as u64);
                let row_bytes = ty.row_bytes(n as u64).unwrap() as usize;
                let act_ty = ty.vec_dot_type();
                let mut blocks = Vec::new();
                let mut one = Vec::new();
                for b in 0..batch {
                    quant::quantize_activations(
                        act_ty,
                        &values(n, 1000 + b as u64, act_scale * (1 + b % 3) as f32),
                        &mut one,
                    )
                    .unwrap();
                    blocks.extend_from_slice(&one);
                }
                let act_row_bytes = blocks.len() / batch;
                let mut panel = Panel::default();
                panel.fill(act_ty, &blocks, batch, n);
                let mut fast = vec![f32::NAN; batch * rows];
                // Two calls over a split of the rows, as two threads would make them.
                let split = rows / 2;
                // SAFETY: `fast` holds (batch, rows) floats and the two calls, one after the
                // other, write disjoint row ranges.
                unsafe {
                    matmul_rows(cpu, format, &w, rows, 0..split, &panel, fast.as_mut_ptr());
                    matmul_rows(
                        cpu,
                        format,
                        &w,
                        rows,
                        split..rows,
                        &panel,
                        fast.as_mut_ptr(),
                    );
                }
                let mut reference = vec![0.0f32; batch * rows];
                for b in 0..batch {
                    for r in 0..rows {
                        reference[b * rows + r] = quant::vec_dot(
                            ty,
                            &w[r * row_bytes..(r + 1) * row_bytes],
                            &blocks[b * act_row_bytes..(b + 1) * act_row_bytes],
                            n,
                        )
                        .unwrap();
                    }
                }
                let typical =
                    (reference.iter().map(|v| v * v).sum::<f32>() / reference.len() as f32).sqrt();
                for (i, (&f, &r)) in fast.iter().zip(&reference).enumerate() {
                    let tolerance = 2e-5 * r.abs().max(typical) + f32::MIN_POSITIVE;
                    assert!(
                        (f - r).abs() <= tolerance,
                        "{ty} n={n} rows={rows} batch={batch} output {i}: {f} vs {r}"
                    );
                }
                // The same outputs, bit for bit, from one call over all rows (another tiling).
                let mut whole = vec![f32::NAN; batch * rows];
                // SAFETY: `whole` holds (batch, rows) floats, all written by this one call.
                unsafe { matmul_rows(cpu, format, &w, rows, 0..rows, &panel, whole.as_mut_ptr()) };
                assert_eq!(
                    whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{ty}: tiling changed a result"
                );
            }
        }
    }
}
