//! `LIKE` patterns: `%` matches any run of characters, `_` exactly one, an escape character
//! makes the next character literal. Matching is case-sensitive and works on Unicode scalar
//! values.
//!
//! The matcher never backtracks. A pattern is split at its `%`s into fixed-length parts; the
//! first part must match at the start, the last at the end, and each middle part is matched at
//! its leftmost place after the previous one. Leftmost is always right when parts have a fixed
//! length, so the cost is at most text length × pattern length, whatever the pattern:
//! `'%a%a%a%a%a%b'` against a long run of `a`s is as quick as any other.

/// One pattern character: a literal, or `_` (any one character).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atom {
    Char(char),
    Any,
}

impl Atom {
    fn matches(self, c: char) -> bool {
        match self {
            Atom::Char(p) => p == c,
            Atom::Any => true,
        }
    }
}

/// A compiled `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    /// The pattern split at unescaped `%`; one part means no `%` at all.
    parts: Vec<Vec<Atom>>,
}

impl LikePattern {
    /// Compiles `pattern` with an optional escape character. The only way to fail is a pattern
    /// that ends with the escape character.
    pub(crate) fn compile(pattern: &str, escape: Option<char>) -> Result<Self, &'static str> {
        let mut parts = vec![Vec::new()];
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let atom = if Some(c) == escape {
                match chars.next() {
                    Some(next) => Atom::Char(next),
                    None => return Err("the pattern ends with the escape character"),
                }
            } else if c == '%' {
                parts.push(Vec::new());
                continue;
            } else if c == '_' {
                Atom::Any
            } else {
                Atom::Char(c)
            };
            parts.last_mut().expect("never empty").push(atom);
        }
        Ok(LikePattern { parts })
    }

    /// Reads an `ESCAPE` operand: exactly one character.
    pub(crate) fn escape_char(escape: &str) -> Result<char, &'static str> {
        let mut chars = escape.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            _ => Err("the escape must be exactly one character"),
        }
    }

    /// Whether the whole of `text` matches.
    pub(crate) fn is_match(&self, text: &str) -> bool {
        if text.is_ascii() {
            self.match_units(text.as_bytes())
        } else {
            self.match_units(&text.chars().collect::<Vec<char>>())
        }
    }

    /// The matcher over the text's characters: bytes of an ASCII text, else `char`s.
    fn match_units<C: Unit>(&self, text: &[C]) -> bool {
        let parts = &self.parts;
        let first = &parts[0];
        if parts.len() == 1 {
            return text.len() == first.len() && matches_at(text, first);
        }
        let last = &parts[parts.len() - 1];
        if first.len() + last.len() > text.len() {
            return false;
        }
        let end = text.len() - last.len();
        if !matches_at(text, first) || !matches_at(&text[end..], last) {
            return false;
        }
        let mut pos = first.len();
        for part in &parts[1..parts.len() - 1] {
            match find(&text[pos..end], part) {
                Some(i) => pos += i + part.len(),
                None => return false,
            }
        }
        true
    }
}

/// One character of the text: a byte of ASCII text, or a `char`.
trait Unit: Copy {
    fn char(self) -> char;
}

impl Unit for u8 {
    fn char(self) -> char {
        char::from(self)
    }
}

impl Unit for char {
    fn char(self) -> char {
        self
    }
}

/// Whether `part` matches the start of `text`.
fn matches_at<C: Unit>(text: &[C], part: &[Atom]) -> bool {
    text.len() >= part.len() && part.iter().zip(text).all(|(a, c)| a.matches(c.char()))
}

/// The leftmost index in `text` where `part` matches.
fn find<C: Unit>(text: &[C], part: &[Atom]) -> Option<usize> {
    if part.len() > text.len() {
        return None;
    }
    (0..=text.len() - part.len()).find(|&i| matches_at(&text[i..], part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    fn like(text: &str, pattern: &str) -> bool {
        LikePattern::compile(pattern, None).unwrap().is_match(text)
    }

    /// A plain backtracking matcher: exponential in the worst case, obviously right.
    fn reference(text: &[char], pattern: &[char], escape: Option<char>) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((&c, rest)) if Some(c) == escape => match rest.split_first() {
                Some((&lit, rest)) => {
                    text.first() == Some(&lit) && reference(&text[1..], rest, escape)
                }
                None => false,
            },
            Some(('%', rest)) => (0..=text.len()).any(|i| reference(&text[i..], rest, escape)),
            Some(('_', rest)) => !text.is_empty() && reference(&text[1..], rest, escape),
            Some((&c, rest)) => text.first() == Some(&c) && reference(&text[1..], rest, escape),
        }
    }

    #[test]
    fn basics() {
        assert!(like("", ""));
        assert!(like("", "%"));
        assert!(like("", "%%"));
        assert!(!like("", "_"));
        assert!(like("abc", "abc"));
        assert!(!like("abc", "ab"));
        assert!(!like("abc", "ABC"));
        assert!(like("abc", "a%"));
        assert!(like("abc", "%c"));
        assert!(like("abc", "%b%"));
        assert!(like("abc", "a_c"));
        assert!(!like("ac", "a_c"));
        assert!(like("a service bus", "%bus%"));
        assert!(like("aXbYc", "a%b%c"));
        assert!(!like("acb", "a%b%c"));
        assert!(like("aaa", "a%a"));
        assert!(!like("a", "a%a"));
        assert!(like("héllo wörld", "h_llo%w_rld"));
    }

    #[test]
    fn escapes() {
        let p = LikePattern::compile("ABC\\%", Some('\\')).unwrap();
        assert!(p.is_match("ABC%"));
        assert!(!p.is_match("ABCD"));
        let p = LikePattern::compile("a!_b%", Some('!')).unwrap();
        assert!(p.is_match("a_bxyz"));
        assert!(!p.is_match("axbxyz"));
        let p = LikePattern::compile("a!!", Some('!')).unwrap();
        assert!(p.is_match("a!"));
        assert!(LikePattern::compile("abc!", Some('!')).is_err());
        assert_eq!(LikePattern::escape_char("\\"), Ok('\\'));
        assert!(LikePattern::escape_char("").is_err());
        assert!(LikePattern::escape_char("ab").is_err());
    }

    #[test]
    fn no_backtracking_blowup() {
        let text = "a".repeat(100_000);
        let start = Instant::now();
        assert!(!like(&text, "%a%a%a%a%a%b"));
        assert!(!like(&text, "%a%a%a%a%a%b%"));
        assert!(like(&text, "%a%a%a%a%a%"));
        let p = format!("{}b", "%a".repeat(400));
        assert!(!like(&text, &p));
        assert!(!like(&text, &format!("%{}b%", "_".repeat(50))));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    proptest! {
        #[test]
        fn agrees_with_backtracking(
            text in "[ab%_!é]{0,10}",
            pattern in "[ab%_!é]{0,8}",
            escaped in any::<bool>(),
        ) {
            let escape = escaped.then_some('!');
            let tc: Vec<char> = text.chars().collect();
            let pc: Vec<char> = pattern.chars().collect();
            match LikePattern::compile(&pattern, escape) {
                Ok(p) => prop_assert_eq!(p.is_match(&text), reference(&tc, &pc, escape)),
                Err(_) => prop_assert!(pattern.ends_with('!') && escaped),
            }
        }
    }
}
