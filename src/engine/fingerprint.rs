//! A cheap identity for a model file: a saved KV cache is only valid for the exact weights
//! that produced it. Hashing the whole file would add a second to every load, so we hash
//! the header (metadata and tensor directory, which name every tensor's type, shape and
//! offset) and evenly spaced samples of the tensor data.

use crate::gguf::GgufFile;

const SAMPLES: u64 = 64;
const SAMPLE_BYTES: u64 = 4096;

/// FNV-1a, 64-bit.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// 32 hex digits identifying the file's contents.
pub fn of_file(file: &GgufFile) -> String {
    let bytes = file.bytes();
    let len = bytes.len() as u64;
    let header_end = file.data_offset.min(len) as usize;
    let mut a = fnv1a(0xcbf2_9ce4_8422_2325, &len.to_le_bytes());
    a = fnv1a(a, &bytes[..header_end]);
    let mut b = fnv1a(0x8422_2325_cbf2_9ce4, &bytes[..header_end.min(4096)]);
    let data_len = len - header_end as u64;
    for i in 0..SAMPLES {
        let start = header_end as u64 + data_len * i / SAMPLES;
        let end = (start + SAMPLE_BYTES).min(len);
        let sample = &bytes[start as usize..end as usize];
        a = fnv1a(a, sample);
        b = fnv1a(b, sample);
    }
    format!("{a:016x}{b:016x}")
}
