//! GPT-2's reversible mapping of bytes to printable characters, in which byte-level BPE
//! vocabularies are written.

use std::sync::LazyLock;

/// BYTE_TO_CHAR[b] is the character standing for byte b.
static BYTE_TO_CHAR: LazyLock<[char; 256]> = LazyLock::new(|| {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next_unprintable = 256u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("below 0x100")
        } else {
            let c = char::from_u32(next_unprintable).expect("below 0x200");
            next_unprintable += 1;
            c
        };
    }
    table
});

pub fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[b as usize]
}

/// The byte a mapped character stands for.
pub fn char_to_byte(c: char) -> Option<u8> {
    let code = c as u32;
    if code < 0x100 {
        let b = code as u8;
        return (BYTE_TO_CHAR[b as usize] == c).then_some(b);
    }
    (0..=255u8).find(|&b| BYTE_TO_CHAR[b as usize] == c)
}

/// The text of `bytes` in the byte-level alphabet.
pub fn encode_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_256_bytes_round_trip_through_distinct_characters() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(char_to_byte('日'), None);
    }
}
