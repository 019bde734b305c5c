//! Character classes of the pre-tokenizer regexes, by Unicode general category (as
//! llama.cpp's unicode tables classify them).

use unicode_general_category::{GeneralCategory as G, get_general_category};

/// The classes a pre-tokenizer asks about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    pub letter: bool,
    pub number: bool,
    pub whitespace: bool,
    pub punctuation: bool,
    /// An assigned code point (llama.cpp treats unassigned ones, and the end of text, as
    /// belonging to no class).
    pub defined: bool,
}

pub fn flags(c: Option<char>) -> Flags {
    let Some(c) = c else { return Flags::default() };
    let category = get_general_category(c);
    Flags {
        letter: matches!(
            category,
            G::UppercaseLetter
                | G::LowercaseLetter
                | G::TitlecaseLetter
                | G::ModifierLetter
                | G::OtherLetter
        ),
        number: matches!(
            category,
            G::DecimalNumber | G::LetterNumber | G::OtherNumber
        ),
        whitespace: c.is_whitespace(),
        punctuation: matches!(
            category,
            G::ConnectorPunctuation
                | G::DashPunctuation
                | G::OpenPunctuation
                | G::ClosePunctuation
                | G::InitialPunctuation
                | G::FinalPunctuation
                | G::OtherPunctuation
        ),
        defined: category != G::Unassigned,
    }
}
