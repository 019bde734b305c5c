//! The GGUF reader.

use std::collections::HashMap;
use std::path::Path;

use super::{GgufError, Value};
use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
pub const MAX_STRING_BYTES: u64 = 16 << 20;
pub const MAX_ARRAY_ELEMENTS: u64 = 64 << 20;
const MAX_ARRAY_DEPTH: u32 = 3;
pub const MAX_TENSORS: u64 = 1 << 20;
const MAX_KV_PAIRS: u64 = 1 << 20;
const MAX_DIMS: u32 = 4;
const MAX_ELEMENTS: u64 = 1 << 50;

/// The file's bytes: mapped (the default) or read into memory.
#[derive(Debug)]
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// One tensor of the directory, checked against the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] (ne0) is the row length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Elements per row.
    pub fn row_len(&self) -> u64 {
        self.dims[0]
    }

    /// Number of rows: the product of every dimension after the first.
    pub fn n_rows(&self) -> u64 {
        self.dims[1..].iter().product()
    }
}

/// A parsed GGUF file whose tensor data stays in the map.
#[derive(Debug)]
pub struct GgufFile {
    storage: Storage,
    pub version: u32,
    pub alignment: u64,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Opens and parses `path`, mapping it (`use_mmap`) or reading it into memory.
    pub fn open(path: &Path, use_mmap: bool) -> Result<Self, GgufError> {
        let io_err = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let storage = if use_mmap {
            let file = std::fs::File::open(path).map_err(io_err)?;
            // SAFETY: the map is read-only (PROT_READ, MAP_SHARED) and this library never writes
            // the file. Like every mmap-based model loader, we rely on the host not truncating
            // or rewriting the file while it is loaded (use_mmap false reads it instead).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
            Storage::Mapped(map)
        } else {
            Storage::Owned(std::fs::read(path).map_err(io_err)?)
        };
        Self::parse(storage)
    }

    /// Parses a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self, GgufError> {
        let bytes = storage.bytes();
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4, || "the magic number".into())?;
        if magic != MAGIC {
            let mut m = [0u8; 4];
            m.copy_from_slice(magic);
            return Err(GgufError::BadMagic(m));
        }
        let version = r.u32(|| "the version".into())?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64(|| "the tensor count".into())?;
        let n_kv = r.u64(|| "the metadata count".into())?;
        check_limit("the tensor count", n_tensors, MAX_TENSORS)?;
        check_limit("the metadata count", n_kv, MAX_KV_PAIRS)?;

        // Every key-value pair takes at least 12 bytes, every tensor info at least 24.
        let mut metadata = Vec::with_capacity(n_kv.min(r.remaining() / 12) as usize);
        let mut key_index = HashMap::new();
        for _ in 0..n_kv {
            let key = r.string(|| "a metadata key".into())?;
            let type_id = r.u32(|| format!("the type of metadata key '{key}'"))?;
            let value = r.value(&key, type_id, 0)?;
            if key_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Malformed(format!(
                    "metadata key '{key}' appears twice"
                )));
            }
            metadata.push((key, value));
        }

        let alignment = match key_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Malformed(format!(
                        "general.alignment is {v:?}; it must be a power of two between 1 and 1 MiB"
                    )));
                }
            },
        };

        struct RawTensor {
            name: String,
            dims: Vec<u64>,
            ggml_type: GgmlType,
            relative_offset: u64,
            n_elements: u64,
            n_bytes: u64,
        }
        let mut raw = Vec::with_capacity(n_tensors.min(r.remaining() / 24) as usize);
        let mut tensor_index = HashMap::new();
        for _ in 0..n_tensors {
            let name = r.string(|| "a tensor name".into())?;
            let n_dims = r.u32(|| format!("the rank of tensor '{name}'"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Malformed(format!(
                    "tensor '{name}' has {n_dims} dimensions; smallmind reads 1 to {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let dim = r.u64(|| format!("dimension {d} of tensor '{name}'"))?;
                if dim == 0 {
                    return Err(GgufError::Malformed(format!(
                        "tensor '{name}' has a zero-sized dimension {d}"
                    )));
                }
                dims.push(dim);
            }
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= MAX_ELEMENTS)
                .ok_or_else(|| GgufError::LimitExceeded {
                    what: format!("the element count of tensor '{name}' ({dims:?})"),
                    value: dims.iter().fold(1u64, |a, &d| a.saturating_mul(d)),
                    limit: MAX_ELEMENTS,
                })?;
            let type_id = r.u32(|| format!("the type of tensor '{name}'"))?;
            let ggml_type = GgmlType::from_id(type_id)
                .filter(|t| !matches!(t, GgmlType::Q8_1 | GgmlType::Q8_K))
                .ok_or_else(|| GgufError::UnsupportedTensorType {
                    tensor: name.clone(),
                    type_id,
                })?;
            let row_bytes = ggml_type.row_bytes(dims[0]).ok_or_else(|| {
                GgufError::Malformed(format!(
                    "tensor '{name}' has rows of {} elements, not a multiple of the {} block size {}",
                    dims[0],
                    ggml_type.name(),
                    ggml_type.block_elements()
                ))
            })?;
            let n_bytes = row_bytes.checked_mul(n_elements / dims[0]).ok_or_else(|| {
                GgufError::Malformed(format!("the byte size of tensor '{name}' overflows"))
            })?;
            let relative_offset = r.u64(|| format!("the offset of tensor '{name}'"))?;
            if relative_offset % alignment != 0 {
                return Err(GgufError::Malformed(format!(
                    "tensor '{name}' starts at data offset {relative_offset}, not a multiple of the alignment {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), raw.len()).is_some() {
                return Err(GgufError::Malformed(format!(
                    "tensor name '{name}' appears twice"
                )));
            }
            raw.push(RawTensor {
                name,
                dims,
                ggml_type,
                relative_offset,
                n_elements,
                n_bytes,
            });
        }

        let file_len = bytes.len() as u64;
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for t in raw {
            let end = data_offset
                .checked_add(t.relative_offset)
                .and_then(|start| start.checked_add(t.n_bytes).map(|end| (start, end)));
            match end {
                Some((start, end)) if end <= file_len => tensors.push(TensorInfo {
                    name: t.name,
                    dims: t.dims,
                    ggml_type: t.ggml_type,
                    offset: start,
                    n_elements: t.n_elements,
                    n_bytes: t.n_bytes,
                }),
                _ => {
                    return Err(GgufError::Malformed(format!(
                        "tensor '{}' ({} bytes at data offset {}) lies outside the file of {file_len} bytes (data section starts at {data_offset}); the file is truncated or corrupt",
                        t.name, t.n_bytes, t.relative_offset
                    )));
                }
            }
        }

        Ok(Self {
            storage,
            version,
            alignment,
            metadata,
            tensors,
            data_offset,
            key_index,
            tensor_index,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Tells the OS that the pages holding `range` of a mapped file (`range.start` at a page
    /// boundary) are not needed for now, so they leave this process's resident memory; a
    /// later read maps them again from the file. A file read into memory keeps its bytes.
    pub fn release_pages(&self, range: std::ops::Range<usize>) {
        if let Storage::Mapped(map) = &self.storage {
            let (start, end) = (range.start, range.end.min(map.len()));
            if start < end {
                // SAFETY: the map is read-only, so it has no dirty pages and dropping them loses
                // no data: a later read faults them in again from the file, unchanged (the file
                // must not change while mapped, as for any read of the map). The range lies
                // inside the map: `end` was clamped to map.len() above.
                let _ = unsafe {
                    map.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    )
                };
            }
        }
    }

    pub fn file_len(&self) -> u64 {
        self.bytes().len() as u64
    }

    /// A tensor's data, borrowed from the map.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes()[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get_u64(key).and_then(|v| u32::try_from(v).ok())
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        self.get(key)?.as_array()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}

fn check_limit(what: &str, value: u64, limit: u64) -> Result<(), GgufError> {
    if value > limit {
        return Err(GgufError::LimitExceeded {
            what: what.to_string(),
            value,
            limit,
        });
    }
    Ok(())
}

/// A cursor over the file that checks every read against the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    /// `what` describes the field for the error message; it is only called on failure.
    fn take(&mut self, n: u64, what: impl Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.bytes.len() as u64,
            });
        }
        let slice = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: impl Fn() -> String) -> Result<[u8; N], GgufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: impl Fn() -> String) -> Result<u32, GgufError> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl Fn() -> String) -> Result<u64, GgufError> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: impl Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("the length of {}", what()))?;
        if len > MAX_STRING_BYTES {
            check_limit(&format!("the length of {}", what()), len, MAX_STRING_BYTES)?;
        }
        let offset = self.pos;
        let raw = self.take(len, &what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| {
            GgufError::Malformed(format!("{} at offset {offset} is not valid UTF-8", what()))
        })
    }

    fn value(&mut self, key: &str, type_id: u32, depth: u32) -> Result<Value, GgufError> {
        let what = || format!("the value of metadata key '{key}'");
        let what = &what;
        Ok(match type_id {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(GgufError::Malformed(format!(
                        "metadata key '{key}' has bool value {b}; it must be 0 or 1"
                    )));
                }
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::LimitExceeded {
                        what: format!("the array nesting depth of metadata key '{key}'"),
                        value: depth as u64 + 1,
                        limit: MAX_ARRAY_DEPTH as u64,
                    });
                }
                let elem_type = self.u32(|| format!("the element type of array '{key}'"))?;
                let count = self.u64(|| format!("the length of array '{key}'"))?;
                check_limit(
                    &format!("the length of array '{key}'"),
                    count,
                    MAX_ARRAY_ELEMENTS,
                )?;
                // Each element takes at least one byte: refuse before allocating.
                if count > self.remaining() {
                    return Err(GgufError::Truncated {
                        what: format!("the {count} elements of array '{key}'"),
                        offset: self.pos as u64,
                        needed: count,
                        file_len: self.bytes.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(key, elem_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    type_id,
                });
            }
        })
    }
}
