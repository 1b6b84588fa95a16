//! A one-line progress display on standard error, shown only on a terminal.

use std::io::{IsTerminal, Write};

/// Rewrites the progress line.
pub fn line(text: &str) {
    let mut e = std::io::stderr();
    if e.is_terminal() {
        let _ = write!(e, "\r\x1b[2K{text}");
        let _ = e.flush();
    }
}

/// Clears the progress line.
pub fn clear() {
    line("");
}
