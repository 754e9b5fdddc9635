//! Source text: decoding the bytes of a file and pointing into it.

use std::fmt;

use serde::Serialize;

/// A place in an environment file: 1-based line and column (in characters), plus the byte
/// range it covers in the decoded text, for tools that draw their own snippets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Location {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number in characters, starting at 1.
    pub column: usize,
    /// Byte offset of the start in the decoded text (after a byte-order mark is removed).
    pub offset: usize,
    /// Length in bytes of the offending text; at least 1 where the text is not empty.
    pub len: usize,
}

/// Decodes the bytes of an environment file as conda does: UTF-8 (a byte-order mark is
/// dropped), falling back to UTF-16 with a byte-order mark.
pub(crate) fn decode(bytes: &[u8]) -> Option<String> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return String::from_utf8(rest.to_vec()).ok();
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Some(text.to_owned());
    }
    let (little_endian, rest) = if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        (true, rest)
    } else if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        (false, rest)
    } else {
        return None;
    };
    if rest.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = rest
        .chunks_exact(2)
        .map(|pair| {
            let pair = [pair[0], pair[1]];
            if little_endian {
                u16::from_le_bytes(pair)
            } else {
                u16::from_be_bytes(pair)
            }
        })
        .collect();
    String::from_utf16(&units).ok()
}

/// Drops a leading byte-order mark from text that was already decoded.
pub(crate) fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Line lookups over a decoded text.
#[derive(Debug)]
pub(crate) struct SourceText<'a> {
    text: &'a str,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
}

impl<'a> SourceText<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { text, line_starts }
    }

    /// The text of a 1-based line, without its line break.
    pub(crate) fn line(&self, line: usize) -> &'a str {
        let Some(&start) = self.line_starts.get(line.wrapping_sub(1)) else {
            return "";
        };
        let end = self
            .line_starts
            .get(line)
            .map_or(self.text.len(), |next| next - 1);
        let line = &self.text[start..end.max(start)];
        line.strip_suffix('\r').unwrap_or(line)
    }

    /// The location of a 1-based line and 1-based character column, covering `len_chars`
    /// characters (clamped to the end of the line).
    pub(crate) fn location(&self, line: usize, column: usize, len_chars: usize) -> Location {
        let Some(&line_start) = self.line_starts.get(line.wrapping_sub(1)) else {
            return Location {
                line,
                column,
                offset: self.text.len(),
                len: 0,
            };
        };
        let text = self.line(line);
        let start = char_to_byte(text, column.saturating_sub(1));
        let end = char_to_byte(text, column.saturating_sub(1) + len_chars.max(1));
        Location {
            line,
            column,
            offset: line_start + start,
            len: end.saturating_sub(start),
        }
    }
}

fn char_to_byte(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(byte, _)| byte)
}

/// Writes the line of `location` with a caret line under the offending text, in the style of
/// rustc: `  39 | <line>` then `     | ^^^`.
pub(crate) fn write_snippet(
    f: &mut fmt::Formatter<'_>,
    text: &str,
    location: &Location,
) -> fmt::Result {
    let source = SourceText::new(text);
    let line = source.line(location.line);
    let gutter = location.line.to_string();
    let pad = " ".repeat(gutter.len());
    // Tabs are shown as a visible arrow so that the caret lines up and the tab can be seen.
    let shown: String = line
        .chars()
        .map(|c| if c == '\t' { '→' } else { c })
        .collect();
    writeln!(f, "{pad} |")?;
    writeln!(f, "{gutter} | {shown}")?;
    let before = location.column.saturating_sub(1).min(line.chars().count());
    let rest = text.get(location.offset..).unwrap_or("");
    let covered = rest.get(..location.len.min(rest.len())).unwrap_or(rest);
    let covered = covered.split(['\n', '\r']).next().unwrap_or("");
    let width = covered.chars().count().max(1);
    write!(f, "{pad} | {}{}", " ".repeat(before), "^".repeat(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_utf8_with_bom_and_utf16() {
        assert_eq!(decode(b"\xEF\xBB\xBFname: a\n").unwrap(), "name: a\n");
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("name: é".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&utf16).unwrap(), "name: é");
        assert!(decode(b"\xFF\x00\x01").is_none());
    }

    #[test]
    fn lines_and_locations_handle_crlf() {
        let source = SourceText::new("a: 1\r\nbé: x\r\n");
        assert_eq!(source.line(2), "bé: x");
        let location = source.location(2, 5, 1);
        assert_eq!(location.offset, 6 + "bé: ".len());
    }
}
