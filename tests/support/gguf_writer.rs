//! A small GGUF writer for tests: tiny models and every kind of malformed file.
#![allow(dead_code)]

/// A metadata value to write.
#[derive(Clone, Debug)]
pub enum Meta {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id and elements (all of that type).
    Array(u32, Vec<Meta>),
    U64(u64),
    I64(i64),
    F64(f64),
    /// A raw type id followed by raw bytes, for malformed values.
    Raw(u32, Vec<u8>),
}

impl Meta {
    fn type_id(&self) -> u32 {
        match self {
            Meta::U8(_) => 0,
            Meta::I8(_) => 1,
            Meta::U16(_) => 2,
            Meta::I16(_) => 3,
            Meta::U32(_) => 4,
            Meta::I32(_) => 5,
            Meta::F32(_) => 6,
            Meta::Bool(_) => 7,
            Meta::Str(_) => 8,
            Meta::Array(..) => 9,
            Meta::U64(_) => 10,
            Meta::I64(_) => 11,
            Meta::F64(_) => 12,
            Meta::Raw(t, _) => *t,
        }
    }

    fn write_payload(&self, out: &mut Vec<u8>) {
        match self {
            Meta::U8(v) => out.push(*v),
            Meta::I8(v) => out.push(*v as u8),
            Meta::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Meta::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
            Meta::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Meta::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Meta::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Meta::Bool(v) => out.push(*v as u8),
            Meta::Str(s) => write_string(out, s.as_bytes()),
            Meta::Array(elem, items) => {
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.write_payload(out);
                }
            }
            Meta::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Meta::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Meta::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Meta::Raw(_, bytes) => out.extend_from_slice(bytes),
        }
    }
}

pub fn write_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

/// A tensor to write: ggml type id, dims (ne0 first), data bytes, and the offset to declare
/// (None: placed after the previous tensor, aligned).
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub type_id: u32,
    pub dims: Vec<u64>,
    pub data: Vec<u8>,
    pub offset: Option<u64>,
}

impl Tensor {
    pub fn f32(name: &str, dims: &[u64], values: &[f32]) -> Self {
        Tensor {
            name: name.into(),
            type_id: 0,
            dims: dims.to_vec(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            offset: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GgufBuilder {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, Meta)>,
    pub tensors: Vec<Tensor>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        Self {
            version: 3,
            alignment: 32,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

impl GgufBuilder {
    pub fn meta(mut self, key: &str, value: Meta) -> Self {
        self.metadata.push((key.into(), value));
        self
    }

    pub fn tensor(mut self, t: Tensor) -> Self {
        self.tensors.push(t);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key.as_bytes());
            out.extend_from_slice(&value.type_id().to_le_bytes());
            value.write_payload(&mut out);
        }
        let mut next = 0u64;
        let mut placed = Vec::new();
        for t in &self.tensors {
            let offset = t.offset.unwrap_or(next);
            placed.push(offset);
            next = (offset + t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
            write_string(&mut out, t.name.as_bytes());
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        let data_start = (out.len() as u64).div_ceil(self.alignment) * self.alignment;
        out.resize(data_start as usize, 0);
        for (t, offset) in self.tensors.iter().zip(placed) {
            let start = (data_start + offset) as usize;
            if out.len() < start + t.data.len() {
                out.resize(start + t.data.len(), 0);
            }
            out[start..start + t.data.len()].copy_from_slice(&t.data);
        }
        out
    }
}

/// The metadata value of a parsed file, as the writer writes it.
pub fn meta_of(value: &smallmind::gguf::Value) -> Meta {
    use smallmind::gguf::Value as V;
    match value {
        V::U8(v) => Meta::U8(*v),
        V::I8(v) => Meta::I8(*v),
        V::U16(v) => Meta::U16(*v),
        V::I16(v) => Meta::I16(*v),
        V::U32(v) => Meta::U32(*v),
        V::I32(v) => Meta::I32(*v),
        V::F32(v) => Meta::F32(*v),
        V::Bool(v) => Meta::Bool(*v),
        V::String(s) => Meta::Str(s.clone()),
        V::Array(items) => {
            let items: Vec<Meta> = items.iter().map(meta_of).collect();
            let elem = items.first().map_or(8, Meta::type_id);
            Meta::Array(elem, items)
        }
        V::U64(v) => Meta::U64(*v),
        V::I64(v) => Meta::I64(*v),
        V::F64(v) => Meta::F64(*v),
    }
}

impl GgufBuilder {
    /// A builder holding every key and tensor of `file`, to rewrite it with changes.
    pub fn from_file(file: &smallmind::gguf::GgufFile) -> Self {
        Self {
            version: file.version,
            alignment: file.alignment,
            metadata: file
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), meta_of(v)))
                .collect(),
            tensors: file
                .tensors
                .iter()
                .map(|t| Tensor {
                    name: t.name.clone(),
                    type_id: t.ggml_type.id(),
                    dims: t.dims.clone(),
                    data: file.tensor_bytes(t).to_vec(),
                    offset: None,
                })
                .collect(),
        }
    }

    /// Replaces the value of `key` (or adds it).
    pub fn set(mut self, key: &str, value: Meta) -> Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.into(), value)),
        }
        self
    }
}
