//! GPT-2's pre-tokenizer, written out by hand.
//!
//! GPT-2 (and tiktoken's `gpt2` / `r50k_base` encodings) split text into pieces with
//!
//! ```text
//! 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//! ```
//!
//! and run BPE inside each piece only. A regex engine with look-ahead is the slow part of
//! tiktoken; this scanner gives the same pieces in one forward pass. The alternatives are tried
//! in the regex's order:
//! 1. an apostrophe followed by a lowercase contraction suffix (`s t m d re ve ll`);
//! 2. an optional single ASCII space, then a run of letters, or numbers, or "other" characters
//!    (neither whitespace nor letter nor number);
//! 3. a whitespace run: to the end of the text if it reaches it, otherwise all but its last
//!    character (`\s+(?!\S)`, so the last space can prefix the next word), or a single
//!    whitespace character when the run has length one (`\s+`).

use unicode_general_category::{GeneralCategory, get_general_category};

/// The character classes the GPT-2 pattern distinguishes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// `\p{L}`: general categories Lu, Ll, Lt, Lm, Lo.
    Letter,
    /// `\p{N}`: general categories Nd, Nl, No.
    Number,
    /// `\s`: the Unicode White_Space property.
    Space,
    /// Everything else.
    Other,
}

/// Classes of the 128 ASCII characters, so the common case is one table load.
const ASCII_CLASS: [Class; 128] = {
    let mut table = [Class::Other; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = match b as u8 {
            b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
            b'0'..=b'9' => Class::Number,
            // White_Space in ASCII: \t \n \x0B \x0C \r and space.
            b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => Class::Space,
            _ => Class::Other,
        };
        b += 1;
    }
    table
};

fn class(c: char) -> Class {
    if c.is_ascii() {
        return ASCII_CLASS[c as usize];
    }
    if c.is_whitespace() {
        return Class::Space;
    }
    use GeneralCategory::*;
    match get_general_category(c) {
        UppercaseLetter | LowercaseLetter | TitlecaseLetter | ModifierLetter | OtherLetter => {
            Class::Letter
        }
        DecimalNumber | LetterNumber | OtherNumber => Class::Number,
        _ => Class::Other,
    }
}

/// Iterator over the pre-tokenizer pieces of a text; the pieces concatenate back to the text.
pub(crate) struct Pieces<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Pieces<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }
}

/// Byte length of the run of characters of class `class_of_run` at the start of `s`.
fn run_len(s: &str, class_of_run: Class) -> usize {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii() {
            if ASCII_CLASS[bytes[i] as usize] != class_of_run {
                return i;
            }
            i += 1;
        } else {
            let c = s[i..].chars().next().expect("i is a char boundary");
            if class(c) != class_of_run {
                return i;
            }
            i += c.len_utf8();
        }
    }
    i
}

/// Length in bytes of the piece that starts at the beginning of `rest` (non-empty).
fn piece_len(rest: &str) -> usize {
    let bytes = rest.as_bytes();
    let mut chars = rest.chars();
    let first = chars.next().expect("piece_len on empty text");

    // 1. Contractions ('s 't 'm 'd 're 've 'll), lowercase only, as in GPT-2.
    if first == '\'' {
        if let Some(b"re" | b"ve" | b"ll") = bytes.get(1..3) {
            return 3;
        }
        if let Some(b's' | b't' | b'm' | b'd') = bytes.get(1) {
            return 2;
        }
    }

    // 2. ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`.
    let first_class = class(first);
    if first == ' ' {
        if let Some(second) = chars.next() {
            let second_class = class(second);
            if second_class != Class::Space {
                return 1 + run_len(&rest[1..], second_class);
            }
        }
    } else if first_class != Class::Space {
        return run_len(rest, first_class);
    }

    // 3. Whitespace: `\s+(?!\S)` then `\s+`.
    let run = run_len(rest, Class::Space);
    if run == rest.len() {
        return run;
    }
    // Start of the run's last character.
    let last_start = rest[..run].char_indices().next_back().map_or(0, |(i, _)| i);
    if last_start > 0 { last_start } else { run }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = &self.text[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let len = piece_len(rest);
        self.pos += len;
        Some(&rest[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<&str> {
        Pieces::new(text).collect()
    }

    #[test]
    fn splits_like_the_gpt2_pattern() {
        assert_eq!(
            pieces("Hello, world! I'm here."),
            ["Hello", ",", " world", "!", " I", "'m", " here", "."]
        );
        // A run of spaces leaves its last space to the next word.
        assert_eq!(pieces("a   b"), ["a", "  ", " b"]);
        // Trailing whitespace is one piece.
        assert_eq!(pieces("a  \n"), ["a", "  \n"]);
        // A single non-space whitespace before a word stands alone.
        assert_eq!(pieces("a\nb"), ["a", "\n", "b"]);
        assert_eq!(pieces("a \n b"), ["a", " \n", " b"]);
        // Uppercase contractions are not contractions.
        assert_eq!(pieces("DON'T"), ["DON", "'", "T"]);
        assert_eq!(pieces("x?'s"), ["x", "?'", "s"]);
        assert_eq!(pieces(" 's"), [" '", "s"]);
        assert_eq!(pieces("abc123 456"), ["abc", "123", " 456"]);
        assert_eq!(pieces("日本語 テスト"), ["日本語", " テスト"]);
        assert_eq!(pieces(""), Vec::<&str>::new());
        assert_eq!(pieces(" "), [" "]);
        assert_eq!(pieces("\u{3000}x"), ["\u{3000}", "x"]);
    }
}
