//! AVX-512 VNNI matrix × activations over weights repacked at load into groups of 16
//! interleaved rows, for the 32-element block formats (Q4_0, Q4_1, Q5_0, Q8_0).
//!
//! In the file each row's blocks follow one another, so a dot product sums 64 products per
//! `vpdpbusd` lane-wise for one row and needs a float multiply per block and a horizontal
//! sum per output. Here one 512-bit register holds four consecutive weights of each of 16
//! rows: one `vpdpbusd` with four activation bytes broadcast adds four products to 16 rows'
//! sums at once, eight of them finish a block for 16 rows, and one float multiply-add per
//! block applies the 16 rows' scales. Outputs leave as 16 floats, no horizontal sum.
//!
//! Repacked layout, per group of 16 rows, per block (32 elements), in this order:
//! - quants: Q8_0 — 8 vectors, lane i's 4 bytes of vector k are row i's quants 4k..4k + 4
//!   plus 128 (unsigned); Q4_0, Q4_1, Q5_0 — 4 vectors, lane i's byte t of vector m holds
//!   row i's element 8m + t in its low nibble and 8m + 4 + t in its high nibble;
//! - Q5_0 only: 8 masks of 64 bits, bit 4i + t of mask k the fifth bit of row i's element
//!   4k + t;
//! - 16 f16 scales d; Q4_1 only: 16 f16 mins m.
//!
//! Integer sums are exact and each output is Σ over blocks, in block order, of
//! `float(isum) · (d_w · d_a)` (+ `m_w · s_a` for Q4_1) — the same operations whatever the
//! thread count or batch split, so results are bit-identical across them; against the scalar
//! reference they differ only in float rounding order.

use std::arch::x86_64::*;
use std::sync::Arc;

use super::ThreadPool;
use super::cpu::Avx512Vnni;
use crate::quant::{BlockQ8_0, BlockQ8_1, BlockQ8_K, GgmlType};

/// Rows per interleaved group.
pub(crate) const GROUP_ROWS: usize = 16;
/// Elements per block.
const BLOCK: usize = 32;
/// Activation rows whose outputs are accumulated in registers together.
const MAX_BATCH_TILE: usize = 8;
/// The same for Q4_K, whose tiles keep two integer sums per activation row besides it.
const MAX_Q4K_TILE: usize = 4;
/// Activation rows kept hot in cache while a thread's weight groups pass over them.
const BATCH_BLOCK: usize = 64;

/// The weight formats that repack into interleaved groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    /// 256-element blocks of eight 32-element sub-blocks with 6-bit scales and mins.
    Q4K,
}

impl Format {
    /// The interleaved format of a `rows` × `cols` matrix of type `ty`, when it has one.
    pub fn of(ty: GgmlType, rows: usize, cols: usize) -> Option<Self> {
        let format = match ty {
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 => Self::Q4_1,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4_K => Self::Q4K,
            _ => return None,
        };
        (rows.is_multiple_of(GROUP_ROWS)
            && cols.is_multiple_of(format.block_elements())
            && cols > 0)
            .then_some(format)
    }

    /// Bytes of a `rows` × `cols` matrix repacked.
    const fn packed_len(self, rows: usize, cols: usize) -> usize {
        rows / GROUP_ROWS * (cols / self.block_elements()) * self.group_block_bytes()
    }

    /// Elements per block.
    const fn block_elements(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q8_0 => BLOCK,
            Self::Q4K => 256,
        }
    }

    /// The activation type ggml pairs with the weight type.
    pub fn activation_type(self) -> GgmlType {
        match self {
            Self::Q4_1 => GgmlType::Q8_1,
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4K => GgmlType::Q8_K,
        }
    }

    /// Bytes of one block of one row as stored in the file.
    const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
        }
    }

    /// Bytes of one block of one group (16 rows × a block's elements and their scales).
    const fn group_block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 256 + 32,
            Self::Q4_1 => 256 + 64,
            Self::Q5_0 => 256 + 64 + 32,
            Self::Q8_0 => 512 + 32,
            Self::Q4K => Q4K_QUANTS + 2 * Q4K_SCALES + 64,
        }
    }

    /// The unsigned shift of the stored quants (q + 8, q + 16, q + 128; Q4_1 and Q4_K have
    /// none, their mins are a separate term).
    const fn shift(self) -> i32 {
        match self {
            Self::Q4_0 => 8,
            Self::Q4_1 => 0,
            Self::Q5_0 => 16,
            Self::Q8_0 => 128,
            Self::Q4K => 0,
        }
    }
}

/// Q4_K group block: the 16 rows' nibbles, eight 32-element sub-blocks laid out as a Q4_0
/// block each (256 bytes), then the 6-bit scales as bytes, sub-block-major (scale of row i
/// in sub-block s at 16s + i), the mins the same way, then 16 f16 d and 16 f16 dmin.
const Q4K_QUANTS: usize = 8 * 256;
const Q4K_SCALES: usize = 8 * 16;

/// Format ids for const generics (enums cannot be const parameters on stable Rust); kernels
/// turn the id back into a [`Format`] at compile time with `const { format_of(FMT) }`.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q8_0: u8 = 3;
const Q4K: u8 = 4;

/// The format of a kernel id; any other id fails to compile where a kernel uses it.
const fn format_of(id: u8) -> Format {
    match id {
        Q4_0 => Format::Q4_0,
        Q4_1 => Format::Q4_1,
        Q5_0 => Format::Q5_0,
        Q8_0 => Format::Q8_0,
        Q4K => Format::Q4K,
        _ => panic!("not an interleaved format id"),
    }
}

/// A weight matrix in interleaved groups (see the module documentation).
pub struct PackedMatrix {
    /// Packing needed the CPU its kernels run on.
    cpu: Avx512Vnni,
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    /// The arena's bytes, shared with every other matrix of its model.
    arena: Arc<PackedBytes>,
    /// (rows / 16, cols / block elements, group block bytes) of `arena`.
    range: std::ops::Range<usize>,
}

/// The transparent huge page size of x86-64.
const HUGE_PAGE_BYTES: usize = 2 << 20;

/// The repacked matrices of one model, back to back in one allocation filled once at load.
///
/// One arena of at least a huge page is an anonymous mapping advised for transparent huge
/// pages. Decode streams every weight once per token, and on huge pages it misses the TLB
/// 512 times less often; the load faults in 512 times fewer pages, each zeroed in one pass
/// (measured on a 2-vCPU VM: 100 MiB first touched in 10–12 ms on huge pages against
/// 38–48 ms on small ones). The matrices sit back to back, so only the arena's last huge
/// page is partly unused; a mapping per matrix would round each up to 2 MiB and zero it
/// whole.
pub struct PackedArena {
    bytes: PackedBytes,
    /// Bytes filled so far.
    used: usize,
    /// Each matrix repacked, in order, with where it lies.
    matrices: Vec<(PackedLayout, std::ops::Range<usize>)>,
}

/// What a repacked matrix is, apart from its bytes.
struct PackedLayout {
    cpu: Avx512Vnni,
    format: Format,
    rows: usize,
    cols: usize,
}

/// The arena's memory.
enum PackedBytes {
    Mapped(memmap2::MmapMut),
    Heap(Vec<u8>),
}

impl PackedBytes {
    /// `len` zero bytes, or None when the system has not that much memory to give.
    fn zeroed(len: usize) -> Option<Self> {
        if len >= HUGE_PAGE_BYTES {
            // A whole number of huge pages, so the kernel places the mapping on a 2 MiB
            // boundary; the unused tail past the last huge page touched is never resident.
            if let Ok(map) = memmap2::MmapOptions::new()
                .len(len.next_multiple_of(HUGE_PAGE_BYTES))
                .map_anon()
            {
                #[cfg(target_os = "linux")]
                let _ = map.advise(memmap2::Advice::HugePage);
                return Some(Self::Mapped(map));
            }
        }
        // A failed allocation would abort the host process; a failed reservation is an error.
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(len).ok()?;
        bytes.resize(len, 0);
        Some(Self::Heap(bytes))
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Heap(bytes) => bytes,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Heap(bytes) => bytes,
        }
    }
}

/// Bytes a `rows` × `cols` matrix of `ty` takes in the arena, when the CPU and the type have
/// an interleaved kernel.
pub fn packed_len(ty: GgmlType, rows: usize, cols: usize) -> Option<usize> {
    Avx512Vnni::detect()?;
    Some(Format::of(ty, rows, cols)?.packed_len(rows, cols))
}

impl PackedArena {
    /// An arena for matrices of `capacity` bytes in all (the sum of their [`packed_len`]s),
    /// or None when the system has not that much memory to give.
    pub fn with_capacity(capacity: usize) -> Option<Self> {
        Some(Self {
            bytes: PackedBytes::zeroed(capacity)?,
            used: 0,
            matrices: Vec::new(),
        })
    }

    /// Repacks `rows` rows of `cols` elements of `ty`, as stored in the file (`data` is
    /// rows × row bytes), on `pool` into the arena's next bytes, when the CPU and the type
    /// have an interleaved kernel (false otherwise). `release(bytes)` is told, in order,
    /// each stretch of `data` that has been read, so the caller can drop the source pages
    /// as it goes.
    pub fn repack(
        &mut self,
        pool: &ThreadPool,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &[u8],
        release: &mut dyn FnMut(std::ops::Range<usize>),
    ) -> bool {
        let (Some(cpu), Some(format)) = (Avx512Vnni::detect(), Format::of(ty, rows, cols)) else {
            return false;
        };
        let len = format.packed_len(rows, cols);
        let blocks = cols / format.block_elements();
        let row_bytes = blocks * format.block_bytes();
        assert_eq!(
            data.len(),
            rows * row_bytes,
            "weight bytes are rows × row bytes"
        );
        let range = self.used..self.used + len;
        let out = self
            .bytes
            .as_mut_slice()
            .get_mut(range.clone())
            .expect("the arena was sized for every matrix packed into it");
        let group_bytes = blocks * format.group_block_bytes();
        let source_group_bytes = GROUP_ROWS * row_bytes;
        for (s, stretch) in out.chunks_mut(GROUPS_PER_STRETCH * group_bytes).enumerate() {
            let first_group = s * GROUPS_PER_STRETCH;
            pool.for_chunks_mut(stretch, group_bytes, 4, |first, run| {
                for (i, out) in run.chunks_exact_mut(group_bytes).enumerate() {
                    let g = first_group + first + i;
                    pack_group_fast(
                        cpu,
                        format,
                        &data[g * source_group_bytes..][..source_group_bytes],
                        out,
                    );
                }
            });
            let end_group = first_group + stretch.len() / group_bytes;
            release(first_group * source_group_bytes..end_group * source_group_bytes);
        }
        self.used = range.end;
        let layout = PackedLayout {
            cpu,
            format,
            rows,
            cols,
        };
        self.matrices.push((layout, range));
        true
    }

    /// The matrices repacked, in the order they were.
    pub fn into_matrices(self) -> Vec<PackedMatrix> {
        let arena = Arc::new(self.bytes);
        self.matrices
            .into_iter()
            .map(|(layout, range)| PackedMatrix {
                cpu: layout.cpu,
                format: layout.format,
                rows: layout.rows,
                cols: layout.cols,
                arena: Arc::clone(&arena),
                range,
            })
            .collect()
    }
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

/// Repacks one group: `source` is 16 rows as in the file, `out` the group's blocks. The
/// reference for [`pack_group_fast`].
#[cfg(test)]
fn pack_group(format: Format, source: &[u8], out: &mut [u8]) {
    if format == Format::Q4K {
        return pack_group_q4k(source, out);
    }
    let gbb = format.group_block_bytes();
    let row_bytes = source.len() / GROUP_ROWS;
    let block_bytes = row_bytes / (out.len() / gbb);
    let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (j, out) in out.chunks_exact_mut(gbb).enumerate() {
        let (quants, rest) = out.split_at_mut(if format == Format::Q8_0 { 512 } else { 256 });
        let (masks, scales) = rest.split_at_mut(if format == Format::Q5_0 { 64 } else { 0 });
        for i in 0..GROUP_ROWS {
            let block = &source[i * row_bytes + j * block_bytes..][..block_bytes];
            // Every block begins with its f16 scale; Q4_1's min follows it.
            scales[2 * i..2 * i + 2].copy_from_slice(&block[..2]);
            let put = |quants: &mut [u8], v: usize, bytes: u32| {
                quants[64 * v + 4 * i..64 * v + 4 * i + 4].copy_from_slice(&bytes.to_le_bytes())
            };
            let nibbles = match format {
                Format::Q4K => unreachable!("packed by pack_group_q4k"),
                Format::Q8_0 => {
                    for k in 0..8 {
                        put(quants, k, word(&block[2 + 4 * k..]) ^ 0x8080_8080);
                    }
                    continue;
                }
                Format::Q4_0 => &block[2..18],
                Format::Q4_1 => {
                    scales[32 + 2 * i..32 + 2 * i + 2].copy_from_slice(&block[2..4]);
                    &block[4..20]
                }
                Format::Q5_0 => {
                    let qh = word(&block[2..6]);
                    for k in 0..8 {
                        let bits = u64::from((qh >> (4 * k)) & 0xf) << (4 * i);
                        let mask = &mut masks[8 * k..8 * k + 8];
                        let merged = u64::from_le_bytes(mask.try_into().expect("8 bytes")) | bits;
                        mask.copy_from_slice(&merged.to_le_bytes());
                    }
                    &block[6..22]
                }
            };
            // Elements 0..16 are the low nibbles of the 16 bytes, 16..32 the high ones;
            // vector m holds elements 8m..8m + 4 (low) and 8m + 4..8m + 8 (high).
            for m in 0..4 {
                let at = 8 * (m % 2);
                let (a, b) = (word(&nibbles[at..]), word(&nibbles[at + 4..]));
                let bytes = if m < 2 {
                    (a & 0x0f0f_0f0f) | ((b & 0x0f0f_0f0f) << 4)
                } else {
                    ((a >> 4) & 0x0f0f_0f0f) | (b & 0xf0f0_f0f0)
                };
                put(quants, m, bytes);
            }
        }
    }
}

/// Writes 32 elements (values 0..=15) of row `i` into a Q4_0-layout block of 16 rows
/// (`quants`, 256 bytes): byte t of lane i of vector m holds element 8m + t in its low nibble
/// and 8m + 4 + t in its high nibble.
fn put_nibble_block(quants: &mut [u8], i: usize, q: &[u8; 32]) {
    for m in 0..4 {
        for t in 0..4 {
            quants[64 * m + 4 * i + t] = q[8 * m + t] | (q[8 * m + 4 + t] << 4);
        }
    }
}

/// Repacks one group of Q4_K rows (see [`Q4K_QUANTS`] for the layout).
fn pack_group_q4k(source: &[u8], out: &mut [u8]) {
    let gbb = Format::Q4K.group_block_bytes();
    let row_bytes = source.len() / GROUP_ROWS;
    for (j, out) in out.chunks_exact_mut(gbb).enumerate() {
        let (quants, rest) = out.split_at_mut(Q4K_QUANTS);
        let (scales, rest) = rest.split_at_mut(Q4K_SCALES);
        let (mins, halves) = rest.split_at_mut(Q4K_SCALES);
        for i in 0..GROUP_ROWS {
            let block = &source[i * row_bytes + j * 144..][..144];
            halves[2 * i..2 * i + 2].copy_from_slice(&block[0..2]);
            halves[32 + 2 * i..32 + 2 * i + 2].copy_from_slice(&block[2..4]);
            let sm: &[u8; 12] = block[4..16].try_into().expect("12 scale bytes");
            let qs = &block[16..144];
            for sub in 0..8 {
                let (sc, m) = q4k_scale_min(sub, sm);
                scales[16 * sub + i] = sc;
                mins[16 * sub + i] = m;
                // Sub-blocks 2c and 2c + 1 are the low and high nibbles of bytes 32c..32c + 32.
                let bytes = &qs[32 * (sub / 2)..32 * (sub / 2) + 32];
                let q: [u8; 32] = std::array::from_fn(|e| {
                    if sub % 2 == 0 {
                        bytes[e] & 0x0f
                    } else {
                        bytes[e] >> 4
                    }
                });
                put_nibble_block(&mut quants[256 * sub..256 * sub + 256], i, &q);
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K block (ggml's get_scale_min_k4).
fn q4k_scale_min(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// [`pack_group`] with AVX-512 gathers: lane i of a gather reads row i's 4 bytes at one place
/// of its block, so each vector of the layout is one gather and a few logical operations
/// (the scalar form spends most of the load time of a model).
fn pack_group_fast(_cpu: Avx512Vnni, format: Format, source: &[u8], out: &mut [u8]) {
    if format == Format::Q4K {
        return pack_group_q4k(source, out);
    }
    let gbb = format.group_block_bytes();
    let blocks = out.len() / gbb;
    let row_bytes = blocks * format.block_bytes();
    assert_eq!(out.len(), blocks * gbb, "whole group blocks");
    assert_eq!(
        source.len(),
        GROUP_ROWS * row_bytes,
        "16 rows of those blocks"
    );
    assert!(
        i32::try_from(source.len()).is_ok(),
        "row offsets fit the gathers' i32 indices"
    );
    // SAFETY: `_cpu` proves avx512f and avx512bw, the features the kernel enables; the sizes
    // its reads and writes rely on are asserted above.
    unsafe { pack_group_avx512(format, source, row_bytes, out) }
}

/// Safety: `source` is 16 rows of `row_bytes` = blocks × block bytes, `out` blocks × group
/// block bytes, and `source.len()` fits an i32.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pack_group_avx512(format: Format, source: &[u8], row_bytes: usize, out: &mut [u8]) {
    let (gbb, block_bytes) = (format.group_block_bytes(), format.block_bytes());
    let row_starts = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes as i32),
    );
    let low_nibbles = _mm512_set1_epi32(0x0f0f_0f0f);
    for (j, out) in out.chunks_exact_mut(gbb).enumerate() {
        // SAFETY: lane i of a gather at byte `at` < block bytes − 3 of block j reads bytes
        // i·row_bytes + j·block_bytes + at .. + 4 of `source`, inside row i's block j; every
        // store below writes inside this group block of `out` (gbb bytes: quants, Q5_0's
        // masks, scales, Q4_1's mins).
        unsafe {
            let block = source.as_ptr().add(j * block_bytes);
            let gather = |at: usize| _mm512_i32gather_epi32::<1>(row_starts, block.add(at).cast());
            let at = out.as_mut_ptr();
            let store = |offset: usize, v: __m512i| _mm512_storeu_si512(at.add(offset).cast(), v);
            // Every block begins with its f16 scale; Q4_1's min follows it.
            let head = gather(0);
            let scales_at = match format {
                Format::Q8_0 => {
                    let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
                    for k in 0..8 {
                        store(64 * k, _mm512_xor_si512(gather(2 + 4 * k), flip));
                    }
                    512
                }
                Format::Q4K => unreachable!("packed by pack_group_q4k"),
                Format::Q4_0 | Format::Q4_1 | Format::Q5_0 => {
                    let nibbles_at = match format {
                        Format::Q4_0 => 2,
                        Format::Q4_1 => 4,
                        Format::Q5_0 | Format::Q8_0 | Format::Q4K => 6,
                    };
                    // Vector m takes words a, b = dwords 2(m % 2), 2(m % 2) + 1 of the nibbles:
                    // low nibbles of both for m < 2, high nibbles for m ≥ 2.
                    let words = [0, 1, 2, 3].map(|d| gather(nibbles_at + 4 * d));
                    for m in 0..4 {
                        let (a, b) = (words[2 * (m % 2)], words[2 * (m % 2) + 1]);
                        let v = if m < 2 {
                            _mm512_or_si512(
                                _mm512_and_si512(a, low_nibbles),
                                _mm512_slli_epi32::<4>(_mm512_and_si512(b, low_nibbles)),
                            )
                        } else {
                            _mm512_or_si512(
                                _mm512_and_si512(_mm512_srli_epi32::<4>(a), low_nibbles),
                                _mm512_andnot_si512(low_nibbles, b),
                            )
                        };
                        store(64 * m, v);
                    }
                    if format == Format::Q5_0 {
                        // Mask k, bits 4i..4i + 4: bits 4k..4k + 4 of row i's qh. Each lane's
                        // nibble becomes a byte, and byte pairs merge as lo | hi << 4.
                        let qh = gather(2);
                        let pair_weights = _mm_set1_epi16(0x1001);
                        for k in 0..8 {
                            let nibble = _mm512_and_si512(
                                _mm512_srlv_epi32(qh, _mm512_set1_epi32(4 * k as i32)),
                                _mm512_set1_epi32(0xf),
                            );
                            let bytes = _mm512_cvtepi32_epi8(nibble);
                            let pairs = _mm_maddubs_epi16(bytes, pair_weights);
                            let mask = _mm_packus_epi16(pairs, pairs);
                            _mm_storel_epi64(at.add(256 + 8 * k).cast(), mask);
                        }
                        256 + 64
                    } else {
                        256
                    }
                }
            };
            _mm256_storeu_si256(at.add(scales_at).cast(), _mm512_cvtepi32_epi16(head));
            if format == Format::Q4_1 {
                let mins = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(head));
                _mm256_storeu_si256(at.add(scales_at + 32).cast(), mins);
            }
        }
    }
}

/// Groups repacked between two releases of source pages: about 1–2 MiB of the file, so the
/// source pages held at once stay few while each parallel job is long enough to share.
const GROUPS_PER_STRETCH: usize = 128;

impl PackedMatrix {
    /// Bytes the repacked matrix holds.
    pub fn bytes(&self) -> usize {
        self.range.len()
    }

    /// (rows / 16, cols / block elements, group block bytes)
    fn data(&self) -> &[u8] {
        &self.arena.as_slice()[self.range.clone()]
    }
}

/// Activation rows quantized to the format's activation type, with what the kernel reads
/// per block beside the quants.
#[derive(Debug, Default)]
pub struct Activations {
    /// (rows, blocks): the block's scale d as f32.
    scale: Vec<f32>,
    /// (rows, blocks): Σq, which times the weights' unsigned shift is subtracted.
    sums: Vec<i32>,
    /// (rows, blocks): s = d · Σq as stored (Q8_1 only; the Q4_1 min term).
    offset: Vec<f32>,
    /// (rows, blocks, 8): Σq of each 32-element sub-block (Q8_K only; the Q4_K min term).
    sub_sums: Vec<i32>,
    rows: usize,
    blocks: usize,
    /// Bytes of one quantized activation row and where its first block's quants begin.
    row_bytes: usize,
    block_bytes: usize,
    quants_at: usize,
}

impl Activations {
    /// Reads the blocks of `rows` activation rows of `cols` elements, already quantized to
    /// `act_ty` (Q8_0, Q8_1 or Q8_K; `quantized` is rows × row bytes). One fill serves every
    /// format whose activation type is `act_ty`.
    pub fn fill(&mut self, act_ty: GgmlType, quantized: &[u8], rows: usize, cols: usize) {
        let blocks = cols / act_ty.block_elements();
        self.rows = rows;
        self.blocks = blocks;
        self.row_bytes = quantized.len() / rows.max(1);
        self.scale.clear();
        self.sums.clear();
        self.offset.clear();
        self.sub_sums.clear();
        let f16 = |b: [u8; 2]| half::f16::from_le_bytes(b).to_f32();
        match act_ty {
            GgmlType::Q8_1 => {
                (self.block_bytes, self.quants_at) = (36, 4);
                for b in bytemuck::cast_slice::<u8, BlockQ8_1>(quantized) {
                    self.scale.push(f16(b.d));
                    self.offset.push(f16(b.s));
                    self.sums.push(b.qs.iter().map(|&q| q as i32).sum::<i32>());
                }
            }
            GgmlType::Q8_0 => {
                (self.block_bytes, self.quants_at) = (34, 2);
                for b in bytemuck::cast_slice::<u8, BlockQ8_0>(quantized) {
                    self.scale.push(f16(b.d));
                    self.sums.push(b.qs.iter().map(|&q| q as i32).sum::<i32>());
                }
            }
            GgmlType::Q8_K => {
                (self.block_bytes, self.quants_at) = (292, 4);
                for b in bytemuck::cast_slice::<u8, BlockQ8_K>(quantized) {
                    self.scale.push(b.d());
                    self.sums.push((0..16).map(|g| b.bsum(g)).sum());
                    self.sub_sums
                        .extend((0..8).map(|sub| b.bsum(2 * sub) + b.bsum(2 * sub + 1)));
                }
            }
            other => panic!("no interleaved kernel reads activations of type {other}"),
        }
        debug_assert_eq!(self.scale.len(), rows * blocks);
    }
}

/// out[b * rows + r] = Σ w[r]·x[b] for the rows of groups `groups` and every activation row.
///
/// `acts` holds the per-block terms of `quantized`, activation rows of `w.cols` columns in
/// `w.format`'s activation type (checked).
///
/// # Safety
/// `out` must point to (activation rows, w.rows) floats of which no other thread reads or
/// writes the rows of `groups` during the call.
pub unsafe fn matmul_groups(
    w: &PackedMatrix,
    groups: std::ops::Range<usize>,
    quantized: &[u8],
    acts: &Activations,
    out: *mut f32,
) {
    // The kernel's unchecked reads of the activations rest on these.
    let act_ty = w.format.activation_type();
    let act_row_bytes = act_ty.row_bytes(w.cols as u64).map(|b| b as usize);
    assert_eq!(
        acts.blocks * w.format.block_elements(),
        w.cols,
        "activations of the matrix's width"
    );
    assert_eq!(
        act_row_bytes,
        Some(acts.row_bytes),
        "activations of its type"
    );
    assert_eq!(
        quantized.len(),
        acts.rows * acts.row_bytes,
        "every activation row"
    );
    assert_eq!(
        acts.scale.len(),
        acts.rows * acts.blocks,
        "a scale per block"
    );
    assert_eq!(acts.sums.len(), acts.rows * acts.blocks, "a sum per block");
    assert!(act_ty != GgmlType::Q8_1 || acts.offset.len() == acts.scale.len());
    assert!(act_ty != GgmlType::Q8_K || acts.sub_sums.len() == 8 * acts.scale.len());
    assert!(
        groups.end * GROUP_ROWS <= w.rows,
        "groups inside the matrix"
    );
    // SAFETY: `w.cpu` proves the kernels' features (packing needed them); the activations
    // have the sizes the kernel reads (asserted above); the caller gives this call the rows
    // of `groups` of the (activation rows, w.rows) outputs at `out`, all it writes.
    unsafe {
        match w.format {
            Format::Q4_0 => groups_of::<Q4_0>(w.cpu, w, groups, quantized, acts, out),
            Format::Q4_1 => groups_of::<Q4_1>(w.cpu, w, groups, quantized, acts, out),
            Format::Q5_0 => groups_of::<Q5_0>(w.cpu, w, groups, quantized, acts, out),
            Format::Q8_0 => groups_of::<Q8_0>(w.cpu, w, groups, quantized, acts, out),
            Format::Q4K => groups_of::<Q4K>(w.cpu, w, groups, quantized, acts, out),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
unsafe fn groups_of<const FMT: u8>(
    _cpu: Avx512Vnni,
    w: &PackedMatrix,
    groups: std::ops::Range<usize>,
    quantized: &[u8],
    acts: &Activations,
    out: *mut f32,
) {
    let group_bytes = acts.blocks * const { format_of(FMT).group_block_bytes() };
    let data = w.data();
    for first_row in (0..acts.rows).step_by(BATCH_BLOCK) {
        let end_row = (first_row + BATCH_BLOCK).min(acts.rows);
        for g in groups.clone() {
            let group = &data[g * group_bytes..(g + 1) * group_bytes];
            let mut b0 = first_row;
            while b0 < end_row {
                macro_rules! tile {
                    ($kernel:ident, $n:expr, $($c:literal)*) => {
                        match $n {
                            $($c => $kernel::<FMT, $c>(group, quantized, acts, b0, g, w.rows, out),)*
                            _ => unreachable!("tiles hold 1..={} activation rows", $n),
                        }
                    };
                }
                let n = match const { format_of(FMT) } {
                    Format::Q4_0 | Format::Q4_1 | Format::Q5_0 | Format::Q8_0 => {
                        let n = MAX_BATCH_TILE.min(end_row - b0);
                        // SAFETY: the group's bytes and rows b0..b0 + n of the activations
                        // exist (asserted by matmul_groups); the caller owns these outputs.
                        unsafe { tile!(tile, n, 1 2 3 4 5 6 7 8) };
                        n
                    }
                    Format::Q4K => {
                        let n = MAX_Q4K_TILE.min(end_row - b0);
                        // SAFETY: as above.
                        unsafe { tile!(tile_q4k, n, 1 2 3 4) };
                        n
                    }
                };
                b0 += n;
            }
        }
    }
}

/// One group's 16 rows × activation rows b0..b0 + C, every block. Inlined into
/// `groups_of`, which enables its features.
#[inline(always)]
unsafe fn tile<const FMT: u8, const C: usize>(
    group: &[u8],
    quantized: &[u8],
    acts: &Activations,
    b0: usize,
    g: usize,
    n_rows: usize,
    out: *mut f32,
) {
    let format = const { format_of(FMT) };
    let gbb = format.group_block_bytes();
    let blocks = acts.blocks;
    debug_assert_eq!(group.len(), blocks * gbb);
    debug_assert!((b0 + C) * acts.row_bytes <= quantized.len());
    // SAFETY: every pointer below stays inside `group` (blocks × gbb bytes) or inside rows
    // b0..b0 + C of `quantized` and of the per-block activation arrays (checked above; the
    // caller filled them for these rows); the CPU features are enabled by the caller.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); C];
        let nibble_mask = _mm512_set1_epi8(0x0f);
        let fifth_bit = _mm512_set1_epi8(0x10);
        for j in 0..blocks {
            let base = group.as_ptr().add(j * gbb);
            let mut wq = [_mm512_setzero_si512(); 8];
            let scales_at = if format == Format::Q8_0 {
                for (k, v) in wq.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(base.add(64 * k).cast());
                }
                512
            } else {
                debug_assert!(format != Format::Q4K, "Q4_K runs tile_q4k");
                for m in 0..4 {
                    let v = _mm512_loadu_si512(base.add(64 * m).cast());
                    wq[2 * m] = _mm512_and_si512(v, nibble_mask);
                    wq[2 * m + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble_mask);
                }
                if FMT == Q5_0 {
                    for (k, v) in wq.iter_mut().enumerate() {
                        let bits = base.add(256 + 8 * k).cast::<u64>().read_unaligned();
                        *v = _mm512_or_si512(*v, _mm512_maskz_mov_epi8(bits, fifth_bit));
                    }
                    256 + 64
                } else {
                    256
                }
            };
            let d_w = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(scales_at).cast()));
            let m_w = if FMT == Q4_1 {
                _mm512_cvtph_ps(_mm256_loadu_si256(base.add(scales_at + 32).cast()))
            } else {
                _mm512_setzero_ps()
            };
            for (c, acc) in acc.iter_mut().enumerate() {
                let row = b0 + c;
                let side = row * blocks + j;
                let a = quantized
                    .as_ptr()
                    .add(row * acts.row_bytes + j * acts.block_bytes + acts.quants_at);
                let shift = const { format_of(FMT).shift() };
                let mut isum = _mm512_set1_epi32(-shift * *acts.sums.get_unchecked(side));
                for (k, &v) in wq.iter().enumerate() {
                    let four = a.add(4 * k).cast::<i32>().read_unaligned();
                    isum = _mm512_dpbusd_epi32(isum, v, _mm512_set1_epi32(four));
                }
                let scale = _mm512_mul_ps(d_w, _mm512_set1_ps(*acts.scale.get_unchecked(side)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, *acc);
                if FMT == Q4_1 {
                    *acc = _mm512_fmadd_ps(
                        m_w,
                        _mm512_set1_ps(*acts.offset.get_unchecked(side)),
                        *acc,
                    );
                }
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add((b0 + c) * n_rows + g * GROUP_ROWS), *acc);
        }
    }
}

/// [`tile`] for Q4_K: per sub-block, the 16 rows' nibbles are unpacked once and dotted with
/// every activation row's 32 quants; the integer sums take the rows' 6-bit scales, and the
/// mins' term Σ min · (Σq of the sub-block) is summed apart; both meet d and dmin once per
/// 256-element block. Inlined into `groups_of`, which enables its features.
#[inline(always)]
unsafe fn tile_q4k<const FMT: u8, const C: usize>(
    group: &[u8],
    quantized: &[u8],
    acts: &Activations,
    b0: usize,
    g: usize,
    n_rows: usize,
    out: *mut f32,
) {
    let gbb = Format::Q4K.group_block_bytes();
    let blocks = acts.blocks;
    debug_assert_eq!(group.len(), blocks * gbb);
    debug_assert!((b0 + C) * acts.row_bytes <= quantized.len());
    // SAFETY: every pointer below stays inside `group` (blocks × gbb bytes) or inside rows
    // b0..b0 + C of `quantized` and of the per-block activation arrays (asserted by
    // matmul_groups for every row); the CPU features are enabled by the caller.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); C];
        let nibble_mask = _mm512_set1_epi8(0x0f);
        for j in 0..blocks {
            let base = group.as_ptr().add(j * gbb);
            let mut scaled = [_mm512_setzero_si512(); C];
            let mut min_sums = [_mm512_setzero_si512(); C];
            for sub in 0..8 {
                let quants = base.add(256 * sub);
                let mut wq = [_mm512_setzero_si512(); 8];
                for m in 0..4 {
                    let v = _mm512_loadu_si512(quants.add(64 * m).cast());
                    wq[2 * m] = _mm512_and_si512(v, nibble_mask);
                    wq[2 * m + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble_mask);
                }
                let scale =
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(Q4K_QUANTS + 16 * sub).cast()));
                let min = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                    base.add(Q4K_QUANTS + Q4K_SCALES + 16 * sub).cast(),
                ));
                for c in 0..C {
                    let row = b0 + c;
                    let a = quantized.as_ptr().add(
                        row * acts.row_bytes + j * acts.block_bytes + acts.quants_at + 32 * sub,
                    );
                    let mut isum = _mm512_setzero_si512();
                    for (k, &v) in wq.iter().enumerate() {
                        let four = a.add(4 * k).cast::<i32>().read_unaligned();
                        isum = _mm512_dpbusd_epi32(isum, v, _mm512_set1_epi32(four));
                    }
                    scaled[c] = _mm512_add_epi32(scaled[c], _mm512_mullo_epi32(isum, scale));
                    let sub_sum = *acts.sub_sums.get_unchecked((row * blocks + j) * 8 + sub);
                    min_sums[c] = _mm512_add_epi32(
                        min_sums[c],
                        _mm512_mullo_epi32(min, _mm512_set1_epi32(sub_sum)),
                    );
                }
            }
            let halves = base.add(Q4K_QUANTS + 2 * Q4K_SCALES);
            let d_w = _mm512_cvtph_ps(_mm256_loadu_si256(halves.cast()));
            let dmin_w = _mm512_cvtph_ps(_mm256_loadu_si256(halves.add(32).cast()));
            for (c, acc) in acc.iter_mut().enumerate() {
                let d_a = _mm512_set1_ps(*acts.scale.get_unchecked((b0 + c) * blocks + j));
                *acc =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(scaled[c]), _mm512_mul_ps(d_w, d_a), *acc);
                *acc = _mm512_fnmadd_ps(
                    _mm512_cvtepi32_ps(min_sums[c]),
                    _mm512_mul_ps(dmin_w, d_a),
                    *acc,
                );
            }
        }
        for (c, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.add((b0 + c) * n_rows + g * GROUP_ROWS), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_data::values;
    use crate::quant;

    /// A model whose repacked weights exceed what the system can give is an error for the
    /// caller, not an allocation failure that aborts the process.
    #[test]
    fn an_arena_larger_than_memory_is_refused_not_an_abort() {
        assert!(PackedArena::with_capacity(1 << 60).is_none());
        let arena = PackedArena::with_capacity(3 << 20).expect("3 MiB");
        assert_eq!(arena.bytes.as_slice().len(), 4 << 20, "whole huge pages");
        assert!(arena.bytes.as_slice().iter().all(|&b| b == 0));
    }

    #[test]
    fn gathered_packing_is_byte_identical_to_the_scalar_packing() {
        let Some(cpu) = Avx512Vnni::detect() else {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to compare");
            return;
        };
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0] {
            let ty = match format {
                Format::Q4_0 => GgmlType::Q4_0,
                Format::Q4_1 => GgmlType::Q4_1,
                Format::Q5_0 => GgmlType::Q5_0,
                Format::Q8_0 => GgmlType::Q8_0,
                Format::Q4K => unreachable!("Q4_K packs without gathers"),
            };
            for cols in [32usize, 96, 576] {
                let mut source = Vec::new();
                let mut row = Vec::new();
                for r in 0..GROUP_ROWS {
                    // Magnitudes that fill every bit of the quants, scales and fifth bits.
                    let scale = [1.0f32, 1e-3, 6e4, 0.0][r % 4];
                    quant::quantize_row(ty, &values(cols, 7 + r as u64, scale), &mut row).unwrap();
                    source.extend_from_slice(&row);
                }
                // Random bytes too: every bit pattern a file may hold, not only quantizer output.
                let mut state = 0x9e37_79b9_7f4a_7c15u64;
                let noise: Vec<u8> = (0..source.len())
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                for source in [&source, &noise] {
                    let bytes = cols / BLOCK * format.group_block_bytes();
                    let (mut fast, mut reference) = (vec![0u8; bytes], vec![0u8; bytes]);
                    pack_group(format, source, &mut reference);
                    pack_group_fast(cpu, format, source, &mut fast);
                    assert_eq!(fast, reference, "{format:?} cols={cols}");
                }
            }
        }
    }
}
