//! The binary layouts of a saved chat file and of its KV section. Every integer is
//! little-endian; every length is checked against the bytes that remain before anything is
//! allocated, and errors name the byte offset.
//!
//! A saved chat file:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SMLMCHAT` |
//! | 8 | 4 | u32 file version (1) |
//! | 12 | 4 | u32 flags: bit 0 = a KV section follows; other bits must be 0 |
//! | 16 | 8 | u64 J, the length of the JSON |
//! | 24 | J | the session envelope, UTF-8 JSON (as `smallmind_chat_export`, never with "kv_snapshot") |
//! | 24+J | 8 | u64 FNV-1a 64 of bytes 0 .. 24+J |
//! | 32+J | .. | the KV section when flag bit 0 is set; nothing may follow it |
//!
//! The KV section (the same bytes, base64, are an export's "kv_snapshot"):
//!
//! | size | field |
//! |---|---|
//! | 4 | magic `SMKV` |
//! | 4 | u32 section version (1) |
//! | 4 | u32 F, length of the model fingerprint (at most 256) |
//! | F | the model fingerprint (`smallmind_engine_info`'s "fingerprint") |
//! | 4 | u32 kv_type: 0 = f16, 1 = f32 |
//! | 4 | u32 n_layer |
//! | 4 | u32 kv_dim (values per position per layer, for K and for V) |
//! | 8 | u64 the engine's context_length |
//! | 8 | u64 the chat's KV limit in positions (max_kv_tokens or context_length) |
//! | 8 | u64 N, positions stored |
//! | 4 N | u32 token id of each position |
//! | 8 | u64 S, the number of forward passes that computed them |
//! | 4 S | u32 positions of each pass (they add up to N; replaying them after an eviction recomputes the rows bit for bit) |
//! | .. | per layer: K (N, kv_dim) then V (N, kv_dim), each value f16 (2 bytes) or f32 (4) |
//! | 8 | u64 FNV-1a 64 of every byte of the section before it |

use crate::engine::{KvCache, KvType};
use crate::error::{Error, ErrorKind, Result};

pub const FILE_MAGIC: &[u8; 8] = b"SMLMCHAT";
pub const FILE_VERSION: u32 = 1;
const FLAG_KV: u32 = 1;
const KV_MAGIC: &[u8; 4] = b"SMKV";
pub const KV_VERSION: u32 = 1;
const MAX_FINGERPRINT: usize = 256;
const MAX_LAYERS: usize = 4096;
const MAX_KV_DIM: usize = 1 << 20;
/// JSON over 1 GiB is not a chat we wrote.
const MAX_JSON: u64 = 1 << 30;

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// What a KV snapshot is valid for, and the cache itself.
#[derive(Debug, Clone)]
pub struct KvSnapshot {
    pub fingerprint: String,
    pub context_length: usize,
    pub max_positions: usize,
    pub cache: KvCache,
}

impl KvSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let c = &self.cache;
        let mut out = Vec::with_capacity(64 + c.len() * (4 + c.bytes_per_position()));
        out.extend_from_slice(KV_MAGIC);
        out.extend_from_slice(&KV_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.fingerprint.len() as u32).to_le_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        let ty: u32 = match c.kv_type() {
            KvType::F16 => 0,
            KvType::F32 => 1,
        };
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&(c.n_layer() as u32).to_le_bytes());
        out.extend_from_slice(&(c.kv_dim() as u32).to_le_bytes());
        out.extend_from_slice(&(self.context_length as u64).to_le_bytes());
        out.extend_from_slice(&(self.max_positions as u64).to_le_bytes());
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        for &t in c.tokens() {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out.extend_from_slice(&(c.segments().len() as u64).to_le_bytes());
        for &s in c.segments() {
            out.extend_from_slice(&s.to_le_bytes());
        }
        c.write_rows(&mut out);
        let sum = fnv1a64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Reads a KV section; `base` is its offset in the file (for messages).
    pub fn decode(bytes: &[u8], base: usize, what: &str) -> Result<Self> {
        let mut r = Reader {
            bytes,
            pos: 0,
            base,
            what,
        };
        if r.take(4, "the KV section's magic")? != KV_MAGIC {
            return Err(r.error_at(0, "the KV section does not start with \"SMKV\""));
        }
        let version = r.u32("the KV section's version")?;
        if version != KV_VERSION {
            return Err(r.error_at(
                4,
                &format!(
                    "the KV section has version {version}; this smallmind reads version {KV_VERSION}"
                ),
            ));
        }
        let f_len = r.u32("the fingerprint's length")? as usize;
        if f_len > MAX_FINGERPRINT {
            return Err(r.error_at(8, &format!("a fingerprint of {f_len} bytes is not ours")));
        }
        let fingerprint = std::str::from_utf8(r.take(f_len, "the fingerprint")?)
            .map_err(|_| r.error_at(12, "the fingerprint is not UTF-8"))?
            .to_string();
        let ty_at = r.pos;
        let ty = match r.u32("kv_type")? {
            0 => KvType::F16,
            1 => KvType::F32,
            other => return Err(r.error_at(ty_at, &format!("kv_type {other} is unknown"))),
        };
        let layers_at = r.pos;
        let n_layer = r.u32("n_layer")? as usize;
        let kv_dim = r.u32("kv_dim")? as usize;
        if n_layer == 0 || n_layer > MAX_LAYERS || kv_dim == 0 || kv_dim > MAX_KV_DIM {
            return Err(r.error_at(
                layers_at,
                &format!("n_layer {n_layer} and kv_dim {kv_dim} are out of range"),
            ));
        }
        let context_length = r.u64("context_length")?;
        let max_at = r.pos;
        let max_positions = r.u64("the KV limit")?;
        let n_at = r.pos;
        let n = r.u64("the number of positions")?;
        let remaining = (bytes.len() - r.pos) as u64;
        let per_position = 4 + 2 * n_layer as u64 * kv_dim as u64 * ty.bytes_per_value() as u64;
        if n > max_positions || n.saturating_mul(per_position).saturating_add(8) > remaining {
            return Err(r.error_at(
                n_at,
                &format!(
                    "{n} positions of {per_position} bytes (limit {max_positions}) do not fit the {remaining} bytes that remain: the file is truncated or corrupt"
                ),
            ));
        }
        let _ = max_at;
        let n = n as usize;
        let tokens: Vec<u32> = r
            .take(4 * n, "the token ids")?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let seg_at = r.pos;
        let n_segments = r.u64("the number of forward passes")?;
        if n_segments > n as u64 {
            return Err(r.error_at(
                seg_at,
                &format!("{n_segments} forward passes for {n} positions"),
            ));
        }
        let segments: Vec<u32> = r
            .take(4 * n_segments as usize, "the forward-pass lengths")?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let rows_len = n * (per_position as usize - 4);
        let rows = r.take(rows_len, "the K/V rows")?;
        let sum_at = r.pos;
        let stored = r.u64("the KV section's checksum")?;
        if r.pos != bytes.len() {
            return Err(r.error_at(
                r.pos,
                &format!(
                    "{} unexpected bytes follow the KV section",
                    bytes.len() - r.pos
                ),
            ));
        }
        if fnv1a64(&bytes[..sum_at]) != stored {
            return Err(r.error_at(
                sum_at,
                "the KV section's checksum does not match its contents: the file is corrupt",
            ));
        }
        let cache = KvCache::from_rows(
            ty,
            n_layer,
            kv_dim,
            max_positions as usize,
            tokens,
            segments,
            rows,
        )
        .map_err(|m| r.error_at(n_at, &m))?;
        Ok(Self {
            fingerprint,
            context_length: context_length as usize,
            max_positions: max_positions as usize,
            cache,
        })
    }
}

/// A saved file: the envelope JSON and, optionally, the KV section (as bytes).
pub fn encode_file(json: &str, kv_section: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + json.len() + kv_section.map_or(0, <[u8]>::len));
    out.extend_from_slice(FILE_MAGIC);
    out.extend_from_slice(&FILE_VERSION.to_le_bytes());
    let flags = if kv_section.is_some() { FLAG_KV } else { 0 };
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    let sum = fnv1a64(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    if let Some(kv) = kv_section {
        out.extend_from_slice(kv);
    }
    out
}

/// The parts of a saved file.
pub struct DecodedFile<'a> {
    pub json: &'a str,
    /// The KV section and its offset in the file.
    pub kv_section: Option<(&'a [u8], usize)>,
}

/// Splits a saved file into its JSON and KV section, checking the header and checksum.
pub fn decode_file<'a>(bytes: &'a [u8], what: &str) -> Result<DecodedFile<'a>> {
    let mut r = Reader {
        bytes,
        pos: 0,
        base: 0,
        what,
    };
    if bytes.len() < 8 || &bytes[..8] != FILE_MAGIC {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "{what} is not a saved smallmind chat: it does not start with \"SMLMCHAT\" (nor is it an exported JSON envelope)"
            ),
        ));
    }
    r.pos = 8;
    let version = r.u32("the file version")?;
    if version > FILE_VERSION {
        return Err(r.error_at(
            8,
            &format!(
                "the file was written by a newer smallmind (file version {version}); this version reads file version {FILE_VERSION}"
            ),
        ));
    }
    if version == 0 {
        return Err(r.error_at(8, "file version 0 does not exist"));
    }
    let flags = r.u32("the flags")?;
    if flags & !FLAG_KV != 0 {
        return Err(r.error_at(12, &format!("unknown flags {flags:#x}")));
    }
    let json_len = r.u64("the JSON length")?;
    let remaining = (bytes.len() - r.pos) as u64;
    if json_len > MAX_JSON || json_len + 8 > remaining {
        return Err(r.error_at(
            16,
            &format!(
                "the JSON is said to be {json_len} bytes but {remaining} bytes remain: the file is truncated or corrupt"
            ),
        ));
    }
    let json_bytes = r.take(json_len as usize, "the JSON")?;
    let sum_at = r.pos;
    let stored = r.u64("the header checksum")?;
    if fnv1a64(&bytes[..sum_at]) != stored {
        return Err(r.error_at(
            sum_at,
            "the checksum of the header and JSON does not match: the file is corrupt",
        ));
    }
    let json = std::str::from_utf8(json_bytes)
        .map_err(|e| r.error_at(24 + e.valid_up_to(), "the JSON is not valid UTF-8"))?;
    let kv_section = if flags & FLAG_KV != 0 {
        if r.pos == bytes.len() {
            return Err(r.error_at(
                r.pos,
                "the flags announce a KV section but the file ends here: it is truncated",
            ));
        }
        Some((&bytes[r.pos..], r.pos))
    } else {
        if r.pos != bytes.len() {
            return Err(r.error_at(
                r.pos,
                &format!("{} unexpected bytes follow the JSON", bytes.len() - r.pos),
            ));
        }
        None
    };
    Ok(DecodedFile { json, kv_section })
}

struct Reader<'a, 'w> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes` in the file.
    base: usize,
    what: &'w str,
}

impl<'a> Reader<'a, '_> {
    fn error_at(&self, pos: usize, message: &str) -> Error {
        Error::new(
            ErrorKind::Io,
            format!("{}: at byte {}: {message}", self.what, self.base + pos),
        )
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        if self.bytes.len() - self.pos < n {
            return Err(self.error_at(
                self.pos,
                &format!(
                    "the file ends before {field} ({n} bytes needed, {} remain): it is truncated",
                    self.bytes.len() - self.pos
                ),
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> KvCache {
        let rows: Vec<u8> = (0..2 * 2 * 3 * 4 * 2).map(|i| i as u8).collect();
        KvCache::from_rows(KvType::F16, 2, 4, 100, vec![5, 6, 7], vec![2, 1], &rows).unwrap()
    }

    fn snapshot() -> KvSnapshot {
        KvSnapshot {
            fingerprint: "abc".into(),
            context_length: 100,
            max_positions: 100,
            cache: cache(),
        }
    }

    #[test]
    fn a_kv_section_round_trips_exactly() {
        let bytes = snapshot().encode();
        let back = KvSnapshot::decode(&bytes, 0, "t").unwrap();
        assert_eq!(back.fingerprint, "abc");
        assert_eq!(back.cache.tokens(), &[5, 6, 7]);
        assert_eq!(back.encode(), bytes);
        // magic 4 + version 4 + len 4 + "abc" 3 + ty, layers, dim 12 + 3 u64 24 + tokens 12
        // + segments 8 + 2 * 4 + rows 2 layers * 2 * 3 * 4 * 2 bytes + checksum 8
        assert_eq!(bytes.len(), 4 + 4 + 4 + 3 + 12 + 24 + 12 + 16 + 96 + 8);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused_with_its_offset() {
        let kv = snapshot().encode();
        let file = encode_file("{\"a\":1}", Some(&kv));
        for len in 0..file.len() {
            let cut = &file[..len];
            let result = decode_file(cut, "f").and_then(|d| match d.kv_section {
                Some((s, at)) => KvSnapshot::decode(s, at, "f").map(|_| ()),
                None => Ok(()),
            });
            let err = result.expect_err("a truncated file is refused");
            assert_eq!(err.kind, ErrorKind::Io);
            assert!(
                err.message.contains("at byte") || err.message.contains("SMLMCHAT"),
                "{len}: {}",
                err.message
            );
        }
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            let result = decode_file(&bad, "f").and_then(|d| match d.kv_section {
                Some((s, at)) => KvSnapshot::decode(s, at, "f").map(|_| ()),
                None => Ok(()),
            });
            assert!(result.is_err(), "flipping byte {i} is detected");
        }
    }

    #[test]
    fn a_newer_file_version_is_refused_naming_both() {
        let mut file = encode_file("{}", None);
        file[8] = 9;
        let err = decode_file(&file, "f").err().unwrap();
        assert!(
            err.message.contains("file version 9") && err.message.contains("file version 1"),
            "{}",
            err.message
        );
    }
}
