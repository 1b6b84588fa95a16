//! Splits filter and action text into tokens, each with its character position.

use crate::error::{ParseError, ParseErrorKind};

/// Reserved words: they cannot be bare property names (write `[in]` for a property called
/// `in`). Matched case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    And,
    Or,
    Not,
    Is,
    Null,
    In,
    Like,
    Escape,
    Exists,
    True,
    False,
}

const KEYWORDS: &[(&str, Keyword)] = &[
    ("AND", Keyword::And),
    ("OR", Keyword::Or),
    ("NOT", Keyword::Not),
    ("IS", Keyword::Is),
    ("NULL", Keyword::Null),
    ("IN", Keyword::In),
    ("LIKE", Keyword::Like),
    ("ESCAPE", Keyword::Escape),
    ("EXISTS", Keyword::Exists),
    ("TRUE", Keyword::True),
    ("FALSE", Keyword::False),
];

impl Keyword {
    pub(crate) fn lookup(word: &str) -> Option<Keyword> {
        KEYWORDS
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(word))
            .map(|(_, kw)| *kw)
    }

    pub(crate) fn text(self) -> &'static str {
        KEYWORDS
            .iter()
            .find(|(_, kw)| *kw == self)
            .map(|(k, _)| *k)
            .expect("every keyword has a text")
    }
}

/// Symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sym {
    LParen,
    RParen,
    Comma,
    Dot,
    Semicolon,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// A regular identifier (letter, then letters, digits, underscores), not a keyword.
    Ident(String),
    /// A `[delimited]` or `"quoted"` identifier, escapes resolved.
    Delimited(String),
    Keyword(Keyword),
    /// An integer constant without sign; may exceed `i64::MAX` by one (for `-9223372036854775808`).
    Int(u64),
    /// A decimal or scientific constant.
    Double(f64),
    /// A `'string'` constant, escapes resolved.
    Str(String),
    /// `@name`, without the `@`.
    Param(String),
    Sym(Sym),
    End,
}

impl Tok {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("name {s:?}"),
            Tok::Delimited(s) => format!("name [{s}]"),
            Tok::Keyword(k) => k.text().to_owned(),
            Tok::Int(n) => n.to_string(),
            Tok::Double(x) => format!("{x:?}"),
            Tok::Str(_) => "a string".to_owned(),
            Tok::Param(p) => format!("@{p}"),
            Tok::Sym(s) => format!("'{}'", sym_text(*s)),
            Tok::End => "end of text".to_owned(),
        }
    }
}

pub(crate) fn sym_text(s: Sym) -> &'static str {
    match s {
        Sym::LParen => "(",
        Sym::RParen => ")",
        Sym::Comma => ",",
        Sym::Dot => ".",
        Sym::Semicolon => ";",
        Sym::Eq => "=",
        Sym::Ne => "<>",
        Sym::Lt => "<",
        Sym::Le => "<=",
        Sym::Gt => ">",
        Sym::Ge => ">=",
        Sym::Plus => "+",
        Sym::Minus => "-",
        Sym::Star => "*",
        Sym::Slash => "/",
        Sym::Percent => "%",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    /// Character offset of the token's first character.
    pub at: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Tokenizes `text`; the last token is always [`Tok::End`].
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at, kind| Err(ParseError::new(at, kind));
    while i < chars.len() {
        let c = chars[i];
        let at = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident_continue(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match Keyword::lookup(&word) {
                Some(kw) => Tok::Keyword(kw),
                None => Tok::Ident(word),
            }
        } else if c.is_ascii_digit() {
            let (tok, next) = number(&chars, i)?;
            i = next;
            tok
        } else if c == '\'' {
            let (s, next) = quoted(&chars, i, '\'', '\'')
                .ok_or(ParseError::new(at, ParseErrorKind::UnterminatedString))?;
            i = next;
            Tok::Str(s)
        } else if c == '"' {
            let (s, next) = quoted(&chars, i, '"', '"')
                .ok_or(ParseError::new(at, ParseErrorKind::UnterminatedIdentifier))?;
            i = next;
            Tok::Delimited(s)
        } else if c == '[' {
            let (s, next) = quoted(&chars, i, '[', ']')
                .ok_or(ParseError::new(at, ParseErrorKind::UnterminatedIdentifier))?;
            i = next;
            Tok::Delimited(s)
        } else if c == '@' {
            let start = i + 1;
            i = start;
            while i < chars.len() && is_ident_continue(chars[i]) {
                i += 1;
            }
            if i == start {
                return err(at, ParseErrorKind::UnexpectedChar('@'));
            }
            Tok::Param(chars[start..i].iter().collect())
        } else {
            let two = |d: char| chars.get(i + 1) == Some(&d);
            let (sym, len) = match c {
                '(' => (Sym::LParen, 1),
                ')' => (Sym::RParen, 1),
                ',' => (Sym::Comma, 1),
                '.' => (Sym::Dot, 1),
                ';' => (Sym::Semicolon, 1),
                '=' => (Sym::Eq, 1),
                '<' if two('>') => (Sym::Ne, 2),
                '<' if two('=') => (Sym::Le, 2),
                '<' => (Sym::Lt, 1),
                '>' if two('=') => (Sym::Ge, 2),
                '>' => (Sym::Gt, 1),
                '!' if two('=') => (Sym::Ne, 2),
                '+' => (Sym::Plus, 1),
                '-' => (Sym::Minus, 1),
                '*' => (Sym::Star, 1),
                '/' => (Sym::Slash, 1),
                '%' => (Sym::Percent, 1),
                other => return err(at, ParseErrorKind::UnexpectedChar(other)),
            };
            i += len;
            Tok::Sym(sym)
        };
        out.push(Token { tok, at });
    }
    out.push(Token {
        tok: Tok::End,
        at: chars.len(),
    });
    Ok(out)
}

/// Reads text between `open` and `close`, where a doubled `close` stands for itself. Returns
/// the text and the index after the closing character, or `None` if it never closes.
fn quoted(chars: &[char], start: usize, open: char, close: char) -> Option<(String, usize)> {
    debug_assert_eq!(chars[start], open);
    let mut s = String::new();
    let mut i = start + 1;
    loop {
        let c = *chars.get(i)?;
        if c == close {
            if chars.get(i + 1) == Some(&close) {
                s.push(close);
                i += 2;
                continue;
            }
            return Some((s, i + 1));
        }
        s.push(c);
        i += 1;
    }
}

/// Reads `digits [. digits] [(e|E) [+|-] digits]`. Without a point or exponent it is an
/// integer constant, otherwise a double.
fn number(chars: &[char], start: usize) -> Result<(Tok, usize), ParseError> {
    let digits = |mut i: usize| {
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        i
    };
    let mut i = digits(start);
    let mut float = false;
    if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(|c| c.is_ascii_digit()) {
        float = true;
        i = digits(i + 1);
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if !chars.get(j).is_some_and(|c| c.is_ascii_digit()) {
            return Err(ParseError::new(start, ParseErrorKind::BadNumber));
        }
        float = true;
        i = digits(j);
    }
    if chars
        .get(i)
        .is_some_and(|&c| is_ident_continue(c) || c == '.')
    {
        return Err(ParseError::new(start, ParseErrorKind::BadNumber));
    }
    let text: String = chars[start..i].iter().collect();
    let out_of_range = || ParseError::new(start, ParseErrorKind::NumberOutOfRange);
    let tok = if float {
        let x: f64 = text.parse().map_err(|_| out_of_range())?;
        if !x.is_finite() {
            return Err(out_of_range());
        }
        Tok::Double(x)
    } else {
        let n: u64 = text.parse().map_err(|_| out_of_range())?;
        if n > i64::MAX as u64 + 1 {
            return Err(out_of_range());
        }
        Tok::Int(n)
    };
    Ok((tok, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        tokenize(text).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn tokens_and_positions() {
        let t = tokenize("sys.Label <> 'it''s' AND [a]]b] != \"q\"\"x\"").unwrap();
        let at: Vec<usize> = t.iter().map(|t| t.at).collect();
        assert_eq!(at, vec![0, 3, 4, 10, 13, 21, 25, 32, 35, 41]);
        assert_eq!(t[4].tok, Tok::Str("it's".into()));
        assert_eq!(t[6].tok, Tok::Delimited("a]b".into()));
        assert_eq!(t[7].tok, Tok::Sym(Sym::Ne));
        assert_eq!(t[8].tok, Tok::Delimited("q\"x".into()));
        assert_eq!(t[9].tok, Tok::End);
    }

    #[test]
    fn numbers() {
        assert_eq!(toks("1894")[0], Tok::Int(1894));
        assert_eq!(toks("1894.1204")[0], Tok::Double(1894.1204));
        assert_eq!(toks("101.5E5")[0], Tok::Double(101.5e5));
        assert_eq!(toks("0.5E-2")[0], Tok::Double(0.005));
        assert_eq!(toks("1e3")[0], Tok::Double(1000.0));
        assert_eq!(toks("9223372036854775808")[0], Tok::Int(1 << 63));
        let kind = |s| tokenize(s).unwrap_err().kind;
        assert_eq!(
            kind("9223372036854775809"),
            ParseErrorKind::NumberOutOfRange
        );
        assert_eq!(kind("1e999"), ParseErrorKind::NumberOutOfRange);
        assert_eq!(kind("12abc"), ParseErrorKind::BadNumber);
        assert_eq!(kind("1e"), ParseErrorKind::BadNumber);
        assert_eq!(kind("1.2.3"), ParseErrorKind::BadNumber);
    }

    #[test]
    fn keywords_are_case_insensitive_and_unicode_names_work() {
        assert_eq!(
            toks("aNd Or nOt"),
            vec![
                Tok::Keyword(Keyword::And),
                Tok::Keyword(Keyword::Or),
                Tok::Keyword(Keyword::Not),
                Tok::End
            ]
        );
        assert_eq!(toks("größe_1")[0], Tok::Ident("größe_1".into()));
        assert_eq!(toks("@Param_1")[0], Tok::Param("Param_1".into()));
    }

    #[test]
    fn errors() {
        let e = tokenize("a = 'open").unwrap_err();
        assert_eq!(e, ParseError::new(4, ParseErrorKind::UnterminatedString));
        let e = tokenize("[open").unwrap_err();
        assert_eq!(e.kind, ParseErrorKind::UnterminatedIdentifier);
        let e = tokenize("a # b").unwrap_err();
        assert_eq!(e, ParseError::new(2, ParseErrorKind::UnexpectedChar('#')));
        assert_eq!(
            tokenize("@ x").unwrap_err().kind,
            ParseErrorKind::UnexpectedChar('@')
        );
    }
}
