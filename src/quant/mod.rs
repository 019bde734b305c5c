//! Block formats: layout, dequantization, activation quantization and reference dot products.

mod types;

pub use types::GgmlType;
