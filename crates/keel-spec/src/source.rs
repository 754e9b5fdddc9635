//! Source text: decoding the bytes of a file and pointing into it.
//!
//! Every place keel shows is found in time proportional to a small constant, never to the
//! length of the line or the file: [`SourceText`] builds a table of line starts and of every
//! [`STRIDE`]th character once, and [`write_snippet`] shows at most [`SNIPPET_CONTEXT`]
//! characters either side of the offending text, so a file of one 1 MB line with thousands
//! of problems still reads and reports in linear time.

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

/// Bytes that are not text in any encoding conda reads, and where the first bad one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeError {
    /// Byte offset of the first byte that does not decode (after a byte-order mark).
    pub(crate) offset: usize,
    /// Its 1-based line: line breaks counted in the text before it.
    pub(crate) line: usize,
    /// Its 1-based column, in characters of the text before it on its line.
    pub(crate) column: usize,
}

impl DecodeError {
    /// The error at `offset`, placed by the text that decoded before it.
    fn at(offset: usize, valid_before: &str) -> Self {
        let line_start = valid_before.rfind('\n').map_or(0, |i| i + 1);
        Self {
            offset,
            line: valid_before.matches('\n').count() + 1,
            column: valid_before[line_start..].chars().count() + 1,
        }
    }
}

/// Decodes the bytes of an environment file as conda does: UTF-8 (a byte-order mark is
/// dropped), falling back to UTF-16 with a byte-order mark. The error places the first byte
/// that is not text: for UTF-16 files, the first unpaired surrogate; otherwise, the first byte
/// that is not UTF-8.
pub(crate) fn decode(bytes: &[u8]) -> Result<String, DecodeError> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return utf8(rest, 3);
    }
    let (little_endian, rest) = if let Some(rest) = bytes.strip_prefix(b"\xFF\xFE") {
        (true, rest)
    } else if let Some(rest) = bytes.strip_prefix(b"\xFE\xFF") {
        (false, rest)
    } else {
        return utf8(bytes, 0);
    };
    let units = rest.chunks(2).map(|pair| match *pair {
        [a, b] if little_endian => u16::from_le_bytes([a, b]),
        [a, b] => u16::from_be_bytes([a, b]),
        // An odd final byte: no unit decodes from it.
        _ => 0xDC00,
    });
    let mut text = String::with_capacity(rest.len() / 2);
    let mut units_read = 0;
    for decoded in char::decode_utf16(units) {
        match decoded {
            Ok(c) => {
                units_read += c.len_utf16();
                text.push(c);
            }
            Err(_) => return Err(DecodeError::at(2 + units_read * 2, &text)),
        }
    }
    Ok(text)
}

/// UTF-8 after a prefix of `skipped` bytes (a byte-order mark).
fn utf8(bytes: &[u8], skipped: usize) -> Result<String, DecodeError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_owned()),
        Err(error) => {
            let valid = error.valid_up_to();
            let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            Err(DecodeError::at(skipped + valid, before))
        }
    }
}

/// Drops a leading byte-order mark from text that was already decoded.
pub(crate) fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Characters between two entries of the character table of [`SourceText`].
const STRIDE: usize = 64;

/// Line and column lookups over a decoded text, each in time independent of the text's size
/// (a binary search, then at most [`STRIDE`] characters walked).
#[derive(Debug)]
pub(crate) struct SourceText<'a> {
    text: &'a str,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
    /// Character index at which each line starts.
    line_start_chars: Vec<usize>,
    /// The last character of each line that is not white space, with its 1-based column.
    line_last: Vec<Option<(char, usize)>>,
    /// Byte offset of every `STRIDE`th character.
    checkpoints: Vec<usize>,
    /// The number of characters in the text.
    chars: usize,
}

impl<'a> SourceText<'a> {
    /// Indexes `text` in one pass.
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        let mut line_start_chars = vec![0];
        let mut line_last = Vec::new();
        let mut checkpoints = Vec::with_capacity(text.len() / STRIDE + 1);
        let mut last = None;
        let mut chars = 0;
        for (byte, c) in text.char_indices() {
            if chars % STRIDE == 0 {
                checkpoints.push(byte);
            }
            chars += 1;
            if c == '\n' {
                line_starts.push(byte + 1);
                line_start_chars.push(chars);
                line_last.push(last.take());
            } else if !c.is_whitespace() {
                let column = chars - line_start_chars.last().copied().unwrap_or(0);
                last = Some((c, column));
            }
        }
        line_last.push(last);
        Self {
            text,
            line_starts,
            line_start_chars,
            line_last,
            checkpoints,
            chars,
        }
    }

    /// The number of lines: line breaks plus one (an empty last line after a final break
    /// counts, as an error at the end of the file points there).
    pub(crate) fn lines(&self) -> usize {
        self.line_starts.len()
    }

    /// The text of a 1-based line, without its line break; empty past the end.
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

    /// The 1-based column of the last visible character of a line when that character is
    /// `-` or `:` (the indicator before an empty value).
    pub(crate) fn trailing_indicator(&self, line: usize) -> Option<usize> {
        match self.line_last.get(line.wrapping_sub(1)) {
            Some(Some(('-' | ':', column))) => Some(*column),
            _ => None,
        }
    }

    /// The byte offset of character `index` of the text (the text's length past its end).
    fn byte_of_char(&self, index: usize) -> usize {
        if index >= self.chars {
            return self.text.len();
        }
        let start = self.checkpoints[index / STRIDE];
        self.text[start..]
            .char_indices()
            .nth(index % STRIDE)
            .map_or(self.text.len(), |(byte, _)| start + byte)
    }

    /// The index of the character that holds byte `offset` (the number of characters past
    /// the end).
    fn char_of_byte(&self, offset: usize) -> usize {
        let offset = floor_char_boundary(self.text, offset);
        let k = self.checkpoints.partition_point(|&b| b <= offset);
        let Some(k) = k.checked_sub(1) else {
            return 0;
        };
        k * STRIDE + self.text[self.checkpoints[k]..offset].chars().count()
    }

    /// The byte offset of a 1-based line and 1-based character column, clamped to the end of
    /// the line; `None` for a line past the end.
    pub(crate) fn offset(&self, line: usize, column: usize) -> Option<usize> {
        let index = line.checked_sub(1)?;
        let start = *self.line_starts.get(index)?;
        let first = self.line_start_chars[index];
        let length = self.char_of_byte(start + self.line(line).len()) - first;
        Some(self.byte_of_char(first + column.saturating_sub(1).min(length)))
    }

    /// The location of a 1-based line and 1-based character column, covering `len_chars`
    /// characters. The place is clamped into the file: the column to one past the end of its
    /// line, a line past the end to the end of the text.
    pub(crate) fn location(&self, line: usize, column: usize, len_chars: usize) -> Location {
        let Some(index) = line
            .checked_sub(1)
            .filter(|index| *index < self.line_starts.len())
        else {
            let last = self.lines();
            let start = self.line_starts[last - 1] + self.line(last).len();
            let column = self.char_of_byte(start) - self.line_start_chars[last - 1] + 1;
            return Location {
                line: last,
                column,
                offset: self.text.len(),
                len: 0,
            };
        };
        let start_of_line = self.line_starts[index];
        let first = self.line_start_chars[index];
        let length = self.char_of_byte(start_of_line + self.line(line).len()) - first;
        let before = column.saturating_sub(1).min(length);
        let start = self.byte_of_char(first + before);
        let end = self.byte_of_char(first + before.saturating_add(len_chars.max(1)).min(length));
        Location {
            line,
            column: before + 1,
            offset: start,
            len: end.saturating_sub(start),
        }
    }
}

/// The largest character boundary at or before `offset` (the text's length past its end).
fn floor_char_boundary(text: &str, offset: usize) -> usize {
    if offset >= text.len() {
        return text.len();
    }
    (0..=offset)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// The most characters a snippet shows before the offending text, of it, and after it.
pub(crate) const SNIPPET_CONTEXT: usize = 80;

/// What a snippet shows of a location's line, as byte offsets into the text: from `start`
/// to `end`, the offending text from `offset` to `covered`; `cut_before`/`cut_after` say
/// whether the line goes on past either end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start: usize,
    pub(crate) offset: usize,
    pub(crate) covered: usize,
    pub(crate) end: usize,
    pub(crate) cut_before: bool,
    pub(crate) cut_after: bool,
}

/// The window of `location`'s line a snippet shows: at most [`SNIPPET_CONTEXT`] characters
/// before the offending text, of it, and after it, found by walking only those characters.
pub(crate) fn window(text: &str, location: &Location) -> Window {
    let offset = floor_char_boundary(text, location.offset);
    let covered_end = floor_char_boundary(text, offset.saturating_add(location.len));
    let is_break = |c: char| c == '\n' || c == '\r';
    let mut start = offset;
    let mut cut_before = false;
    for (count, (i, c)) in text[..offset].char_indices().rev().enumerate() {
        if c == '\n' {
            break;
        }
        if count == SNIPPET_CONTEXT {
            cut_before = true;
            break;
        }
        start = i;
    }
    let covered = text[offset..covered_end]
        .char_indices()
        .take_while(|(_, c)| !is_break(*c))
        .take(SNIPPET_CONTEXT)
        .last()
        .map_or(offset, |(i, c)| offset + i + c.len_utf8());
    let mut end = covered;
    let mut cut_after = false;
    for (count, (i, c)) in text[covered..].char_indices().enumerate() {
        if is_break(c) {
            break;
        }
        if count == SNIPPET_CONTEXT {
            cut_after = true;
            break;
        }
        end = covered + i + c.len_utf8();
    }
    Window {
        start,
        offset,
        covered,
        end,
        cut_before,
        cut_after,
    }
}

/// Writes the line of `location` with a caret line under the offending text, in the style of
/// rustc: `  39 | <line>` then `     | ^^^`. A long line is cut to its [`window`], marked with
/// `…`, so the cost of a snippet does not grow with the line.
pub(crate) fn write_snippet(
    f: &mut fmt::Formatter<'_>,
    text: &str,
    location: &Location,
) -> fmt::Result {
    let window = window(text, location);
    let before = text[window.start..window.offset].chars().count();
    let covered = text[window.offset..window.covered].chars().count();
    let gutter = location.line.to_string();
    let pad = " ".repeat(gutter.len());
    // Tabs are shown as a visible arrow so that the caret lines up and the tab can be seen.
    let shown: String = window
        .cut_before
        .then_some('…')
        .into_iter()
        .chain(text[window.start..window.end].chars())
        .chain(window.cut_after.then_some('…'))
        .map(|c| if c == '\t' { '→' } else { c })
        .collect();
    writeln!(f, "{pad} |")?;
    writeln!(f, "{gutter} | {shown}")?;
    let indent = before + usize::from(window.cut_before);
    write!(
        f,
        "{pad} | {}{}",
        " ".repeat(indent),
        "^".repeat(covered.max(1))
    )
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
        assert!(decode(b"\xFF\x00\x01").is_err());
    }

    /// Hardening issue #13: invalid UTF-8 is placed at its byte's line and column.
    #[test]
    fn invalid_utf8_is_placed_at_its_byte() {
        let error = decode(b"name: a\ndependencies: [\xC3\x28]\n").unwrap_err();
        assert_eq!(
            error,
            DecodeError {
                offset: 23,
                line: 2,
                column: 16
            }
        );
        let error = decode(b"\xEF\xBB\xBF\xE9").unwrap_err();
        assert_eq!(
            error,
            DecodeError {
                offset: 3,
                line: 1,
                column: 1
            }
        );
    }

    /// Hardening issue #13: a lone surrogate in a UTF-16 file is placed at its unit.
    #[test]
    fn lone_surrogate_in_utf16_is_placed_at_its_unit() {
        let units = "a:\nbé".encode_utf16().chain([0xD800, 0x41]);
        let bytes: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(units.flat_map(u16::to_le_bytes))
            .collect();
        let error = decode(&bytes).unwrap_err();
        assert_eq!(
            error,
            DecodeError {
                offset: 12,
                line: 2,
                column: 3
            }
        );
    }

    #[test]
    fn lines_and_locations_handle_crlf() {
        let source = SourceText::new("a: 1\r\nbé: x\r\n");
        assert_eq!(source.line(2), "bé: x");
        let location = source.location(2, 5, 1);
        assert_eq!(location.offset, 6 + "bé: ".len());
    }

    /// Lookups through the character table agree with walking the text, for every line and
    /// column of a text with multi-byte characters on lines longer than the table's stride.
    #[test]
    fn table_lookups_agree_with_walking_the_text() {
        let line = "é".repeat(STRIDE + 7) + "x:" + &"ab".repeat(STRIDE);
        let text = format!("{line}\n\n{line}\r\nlast -");
        let source = SourceText::new(&text);
        for number in 1..=source.lines() {
            let shown = source.line(number);
            let start = text
                .split('\n')
                .take(number - 1)
                .map(|l| l.len() + 1)
                .sum::<usize>();
            for column in 1..=shown.chars().count() + 3 {
                let walked = shown
                    .char_indices()
                    .nth(column - 1)
                    .map_or(shown.len(), |(b, _)| b);
                assert_eq!(source.offset(number, column), Some(start + walked));
                let location = source.location(number, column, 2);
                assert_eq!(location.offset, start + walked);
                assert!(location.column <= shown.chars().count() + 1);
            }
        }
        assert_eq!(source.trailing_indicator(4), Some(6));
        assert_eq!(source.trailing_indicator(1), None);
        assert_eq!(source.offset(5, 1), None);
    }

    /// Hardening issue #13: the window of a place on a long line holds at most
    /// `SNIPPET_CONTEXT` characters either side of the offending text, and all of a short line.
    #[test]
    fn snippet_window_of_a_long_line_is_bounded() {
        let text = format!("a\n{}X{}\nb", "é".repeat(1000), "y".repeat(1000));
        let offset = 2 + "é".len() * 1000;
        let location = Location {
            line: 2,
            column: 1001,
            offset,
            len: 1,
        };
        let window = window(&text, &location);
        assert_eq!(
            text[window.start..window.offset].chars().count(),
            SNIPPET_CONTEXT
        );
        assert_eq!(&text[window.offset..window.covered], "X");
        assert_eq!(
            text[window.covered..window.end].chars().count(),
            SNIPPET_CONTEXT
        );
        assert!(window.cut_before && window.cut_after);
        let short = "name: x\ndependencies: [a=>>1]\r\n";
        let location = Location {
            line: 2,
            column: 16,
            offset: 23,
            len: 5,
        };
        let window = super::window(short, &location);
        assert_eq!(&short[window.start..window.end], "dependencies: [a=>>1]");
        assert!(!window.cut_before && !window.cut_after);
    }

    #[test]
    fn places_past_the_end_are_clamped_into_the_file() {
        let source = SourceText::new("a: 1\nbé");
        assert_eq!(
            source.location(9, 4, 1),
            Location {
                line: 2,
                column: 3,
                offset: 8,
                len: 0
            }
        );
        assert_eq!(source.location(1, 99, 1).column, 5);
        assert_eq!(SourceText::new("").location(3, 1, 1).line, 1);
    }
}
