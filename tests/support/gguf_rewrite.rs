//! Copies a GGUF file with some metadata changed: the chat template replaced or removed, and
//! some tokens renamed (text and type). Tensor infos and data are copied byte for byte, so
//! the copy is the same model with a different template or vocabulary spelling.
#![allow(dead_code)]

use std::path::Path;

/// What to change.
#[derive(Debug, Clone, Default)]
pub struct Changes<'a> {
    /// `None`: keep the file's template. `Some(None)`: remove it. `Some(Some(t))`: use `t`.
    pub chat_template: Option<Option<&'a str>>,
    /// (token id, new text, new token type).
    pub tokens: Vec<(usize, &'a str, i32)>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        out
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).expect("a UTF-8 string")
    }
    /// Skips one value of type `ty`.
    fn skip_value(&mut self, ty: u32) {
        match ty {
            0 | 1 | 7 => {
                self.take(1);
            }
            2 | 3 => {
                self.take(2);
            }
            4..=6 => {
                self.take(4);
            }
            10..=12 => {
                self.take(8);
            }
            8 => {
                self.string();
            }
            9 => {
                let elem = self.u32();
                let n = self.u64();
                for _ in 0..n {
                    self.skip_value(elem);
                }
            }
            other => panic!("unknown GGUF value type {other}"),
        }
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes `src` with `changes` applied to `dst`.
pub fn rewrite(src: &Path, dst: &Path, changes: &Changes<'_>) {
    let bytes = std::fs::read(src).expect("read the GGUF file");
    let mut r = Reader {
        bytes: &bytes,
        pos: 0,
    };
    assert_eq!(r.take(4), b"GGUF");
    let version = r.u32();
    let n_tensors = r.u64();
    let n_kv = r.u64();
    let mut kvs: Vec<Vec<u8>> = Vec::new();
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = r.string();
        let ty = r.u32();
        let start = r.pos;
        let mut out = Vec::new();
        put_string(&mut out, &key);
        out.extend_from_slice(&ty.to_le_bytes());
        match key.as_str() {
            "tokenizer.chat_template" if changes.chat_template.is_some() => {
                r.skip_value(ty);
                continue;
            }
            "tokenizer.ggml.tokens" if !changes.tokens.is_empty() => {
                let elem = r.u32();
                let n = r.u64() as usize;
                let mut texts: Vec<String> = (0..n).map(|_| r.string()).collect();
                for &(id, text, _) in &changes.tokens {
                    texts[id] = text.to_string();
                }
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(n as u64).to_le_bytes());
                for t in &texts {
                    put_string(&mut out, t);
                }
            }
            "tokenizer.ggml.token_type" if !changes.tokens.is_empty() => {
                let elem = r.u32();
                assert_eq!(elem, 5, "token types are i32");
                let n = r.u64() as usize;
                let mut types: Vec<i32> = (0..n)
                    .map(|_| i32::from_le_bytes(r.take(4).try_into().unwrap()))
                    .collect();
                for &(id, _, ty) in &changes.tokens {
                    types[id] = ty;
                }
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(n as u64).to_le_bytes());
                for t in types {
                    out.extend_from_slice(&t.to_le_bytes());
                }
            }
            _ => {
                r.skip_value(ty);
                if key == "general.alignment" {
                    alignment = u64::from(u32::from_le_bytes(
                        bytes[start..start + 4].try_into().unwrap(),
                    ));
                }
                out.extend_from_slice(&bytes[start..r.pos]);
            }
        }
        kvs.push(out);
    }
    if let Some(Some(template)) = changes.chat_template {
        let mut out = Vec::new();
        put_string(&mut out, "tokenizer.chat_template");
        out.extend_from_slice(&8u32.to_le_bytes());
        put_string(&mut out, template);
        kvs.push(out);
    }
    let infos_start = r.pos;
    for _ in 0..n_tensors {
        r.string();
        let n_dims = r.u32();
        r.take(8 * n_dims as usize + 4 + 8);
    }
    let infos = &bytes[infos_start..r.pos];
    let align = |n: u64| n.div_ceil(alignment) * alignment;
    let data_start = align(r.pos as u64) as usize;

    let mut out = Vec::with_capacity(bytes.len() + 4096);
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&n_tensors.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for kv in &kvs {
        out.extend_from_slice(kv);
    }
    out.extend_from_slice(infos);
    out.resize(align(out.len() as u64) as usize, 0);
    out.extend_from_slice(&bytes[data_start..]);
    std::fs::write(dst, out).expect("write the rewritten GGUF file");
}
