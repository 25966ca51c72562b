//! Stream framing: bytes from a TCP connection in, whole lines out, with a bound.
//!
//! A line longer than the bound is dropped whole (reported once, as
//! [`FrameError::LineTooLong`]) and the stream resynchronises at the next `\n`, so one bad
//! client line never stalls or desynchronises a connection.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::panic
)]

use bytes::{Buf, Bytes, BytesMut};

/// Why bytes were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A line exceeded the maximum length and was dropped.
    #[error("line longer than the maximum length")]
    LineTooLong,
}

/// Splits a byte stream into `\n`-terminated lines of at most `max_line` bytes.
#[derive(Debug, Clone)]
pub struct LineFramer {
    max_line: usize,
    /// Dropping bytes until the next `\n`.
    discarding: bool,
    /// Bytes of `buf` already searched for `\n`.
    scanned: usize,
}

impl LineFramer {
    /// A framer for lines of at most `max_line` bytes (without the line ending).
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            discarding: false,
            scanned: 0,
        }
    }

    /// The next complete line (without `\n` or `\r\n`), `Ok(None)` when more bytes are
    /// needed, or an error once per dropped line. Empty lines are returned empty.
    pub fn next_line(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        loop {
            let from = self.scanned.min(buf.len());
            let found = buf.get(from..).and_then(|rest| memchr::memchr(b'\n', rest));
            match found {
                Some(i) => {
                    let end = from + i;
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        buf.advance(end + 1);
                        continue;
                    }
                    let mut line = buf.split_to(end + 1).freeze();
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.len() > self.max_line {
                        return Err(FrameError::LineTooLong);
                    }
                    return Ok(Some(line));
                }
                None => {
                    if self.discarding {
                        buf.clear();
                        self.scanned = 0;
                        return Ok(None);
                    }
                    // `+ 1` leaves room for a `\r` before the `\n` that may come next.
                    if buf.len() > self.max_line + 1 {
                        buf.clear();
                        self.scanned = 0;
                        self.discarding = true;
                        return Err(FrameError::LineTooLong);
                    }
                    self.scanned = buf.len();
                    return Ok(None);
                }
            }
        }
    }

    /// At end of stream: the last line if it had no `\n`.
    pub fn finish(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        self.scanned = 0;
        if std::mem::take(&mut self.discarding) || buf.is_empty() {
            buf.clear();
            return Ok(None);
        }
        let mut line = buf.split().freeze();
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.len() > self.max_line {
            return Err(FrameError::LineTooLong);
        }
        Ok(Some(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one after another and renders every frame.
    fn frames(max: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut f = LineFramer::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let drain = |f: &mut LineFramer, buf: &mut BytesMut, out: &mut Vec<String>| loop {
            match f.next_line(buf) {
                Ok(Some(l)) => out.push(String::from_utf8_lossy(&l).into_owned()),
                Ok(None) => break,
                Err(e) => out.push(format!("<{e}>")),
            }
        };
        for c in chunks {
            buf.extend_from_slice(c);
            drain(&mut f, &mut buf, &mut out);
        }
        match f.finish(&mut buf) {
            Ok(Some(l)) => out.push(String::from_utf8_lossy(&l).into_owned()),
            Ok(None) => {}
            Err(e) => out.push(format!("<{e}>")),
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_endings() {
        assert_eq!(
            frames(100, &[b"a:1|c\nb:2|c\r\n\nc:3|c"]),
            ["a:1|c", "b:2|c", "", "c:3|c"]
        );
    }

    #[test]
    fn too_long_lines_are_dropped_once_and_the_stream_recovers() {
        let long = "x".repeat(50);
        let input = format!("ok:1|c\n{long}\nafter:1|c\n");
        assert_eq!(
            frames(10, &[input.as_bytes()]),
            [
                "ok:1|c",
                "<line longer than the maximum length>",
                "after:1|c"
            ]
        );
        // The long line arrives in pieces: still reported once.
        let pieces: Vec<&[u8]> = input.as_bytes().chunks(3).collect();
        assert_eq!(
            frames(10, &pieces),
            [
                "ok:1|c",
                "<line longer than the maximum length>",
                "after:1|c"
            ]
        );
    }

    #[test]
    fn exactly_max_with_crlf_is_kept() {
        assert_eq!(frames(5, &[b"abcde\r\n"]), ["abcde"]);
        assert_eq!(
            frames(5, &[b"abcdef\n"]),
            ["<line longer than the maximum length>"]
        );
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let input: &[u8] = b"a:1|c\nbb:2|g\r\nccc:3|ms|#k:v\n\nlast:4|c";
        let whole = frames(64, &[input]);
        for at in 0..=input.len() {
            let (x, y) = input.split_at(at);
            assert_eq!(frames(64, &[x, y]), whole, "split at {at}");
        }
        // And byte by byte.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(frames(64, &bytes), whole);
    }

    #[test]
    fn every_prefix_never_yields_a_partial_line() {
        let input: &[u8] = b"a:1|c\nbb:2|g\n";
        for end in 0..=input.len() {
            let mut f = LineFramer::new(64);
            let mut buf = BytesMut::from(input.get(..end).unwrap());
            while let Ok(Some(l)) = f.next_line(&mut buf) {
                assert!(
                    input
                        .windows(l.len() + 1)
                        .any(|w| w.get(..l.len()) == Some(&l[..]) && w.last() == Some(&b'\n'))
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn chunking_never_changes_the_result(
            data in proptest::collection::vec(proptest::sample::select(vec![b'a', b'\n', b'\r', b':', b'|']), 0..300),
            cut in 0usize..300,
            max in 1usize..40,
        ) {
            let cut = cut.min(data.len());
            let (x, y) = data.split_at(cut);
            proptest::prop_assert_eq!(frames(max, &[x, y]), frames(max, &[&data]));
        }
    }
}
