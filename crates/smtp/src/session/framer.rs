//! Line framing of the input: splits buffered bytes into CRLF-terminated lines, refuses
//! bare CR and bare LF (the SMTP smuggling defence), and discards over-long lines without
//! buffering them, so memory stays bounded whatever the peer sends.

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// What the framer found in the buffered input.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Frame {
    /// A complete line ending in CRLF with no other CR or LF, at `buf[start..end]`
    /// (CRLF included). Valid until the next call to [`Framer::next`].
    Line { start: usize, end: usize },
    /// A line longer than the limit ended (with a proper CRLF); its bytes were discarded.
    TooLong,
    /// A bare CR or bare LF was received: the session must close.
    Bare,
    /// No complete line is buffered.
    Partial,
}

/// The input buffer and the framing state.
#[derive(Debug, Default)]
pub(super) struct Framer {
    /// Received bytes; `buf[pos..]` is not yet framed.
    buf: Vec<u8>,
    /// Start of the unframed input.
    pos: usize,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
    /// While discarding: the last discarded byte was CR.
    last_cr: bool,
}

impl Framer {
    /// Appends received bytes.
    pub(super) fn push(&mut self, input: &[u8]) {
        self.buf.extend_from_slice(input);
    }

    /// Bytes buffered and not yet framed.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Memory held by the buffer (for tests of the bounds).
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets all buffered input (after the session closed).
    pub(super) fn clear(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
    }

    /// The bytes of a line returned by [`Framer::next`].
    pub(super) fn bytes(&self, start: usize, end: usize) -> &[u8] {
        self.buf.get(start..end).unwrap_or_default()
    }

    /// Frames the next line; `limit` is the longest line allowed, CRLF included.
    pub(super) fn next(&mut self, limit: usize) -> Frame {
        let limit = limit.max(2);
        if self.discarding {
            return self.discard();
        }
        let avail = &self.buf[self.pos..];
        match avail.iter().position(|&b| b == LF) {
            Some(i) => {
                let line = &avail[..=i];
                // Must end in CRLF, with no CR anywhere else.
                let crlf = i >= 1 && line[i - 1] == CR;
                if !crlf || line[..i - 1].contains(&CR) {
                    return Frame::Bare;
                }
                let start = self.pos;
                self.pos += i + 1;
                if line.len() > limit {
                    Frame::TooLong
                } else {
                    Frame::Line {
                        start,
                        end: self.pos,
                    }
                }
            }
            None => {
                // No LF: a CR anywhere but at the very end is already bare.
                if let Some(i) = avail.iter().position(|&b| b == CR) {
                    if i + 1 < avail.len() {
                        return Frame::Bare;
                    }
                }
                if avail.len() >= limit {
                    // The line will be too long whatever comes: skip it from here on.
                    self.discarding = true;
                    self.last_cr = false;
                    return self.discard();
                }
                self.compact();
                Frame::Partial
            }
        }
    }

    /// Skips input up to and including the LF of an over-long line.
    fn discard(&mut self) -> Frame {
        let avail = &self.buf[self.pos..];
        for (i, &b) in avail.iter().enumerate() {
            if self.last_cr && b != LF {
                return Frame::Bare;
            }
            if b == LF {
                if !self.last_cr {
                    return Frame::Bare;
                }
                self.pos += i + 1;
                self.discarding = false;
                self.last_cr = false;
                return Frame::TooLong;
            }
            self.last_cr = b == CR;
        }
        self.pos = self.buf.len();
        self.compact();
        Frame::Partial
    }

    /// Drops the framed bytes from the buffer (only when waiting for input, so line
    /// positions handed out stay valid while lines are processed).
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // Give back memory after a big pipelined burst.
        if self.buf.capacity() > 64 * 1024 && self.buf.len() < 16 * 1024 {
            self.buf.shrink_to(16 * 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[&[u8]], limit: usize) -> Vec<Result<Vec<u8>, Frame>> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for chunk in input {
            f.push(chunk);
            loop {
                match f.next(limit) {
                    Frame::Line { start, end } => out.push(Ok(f.bytes(start, end).to_vec())),
                    Frame::Partial => break,
                    Frame::Bare => {
                        out.push(Err(Frame::Bare));
                        return out;
                    }
                    other => out.push(Err(other)),
                }
            }
        }
        out
    }

    #[test]
    fn splits_lines_across_chunks() {
        let got = frames(&[b"ab", b"c\r", b"\nde\r\nf", b"\r\n"], 100);
        assert_eq!(
            got,
            vec![
                Ok(b"abc\r\n".to_vec()),
                Ok(b"de\r\n".to_vec()),
                Ok(b"f\r\n".to_vec())
            ]
        );
    }

    #[test]
    fn bare_lf_and_cr() {
        assert_eq!(frames(&[b"a\nb\r\n"], 100), vec![Err(Frame::Bare)]);
        assert_eq!(frames(&[b"a\rb\r\n"], 100), vec![Err(Frame::Bare)]);
        assert_eq!(frames(&[b"a\r", b"b"], 100), vec![Err(Frame::Bare)]);
        assert_eq!(frames(&[b"a\rb"], 100), vec![Err(Frame::Bare)]);
        assert_eq!(frames(&[b"\n"], 100), vec![Err(Frame::Bare)]);
        assert_eq!(frames(&[b"a\r\r\n"], 100), vec![Err(Frame::Bare)]);
    }

    #[test]
    fn long_lines_are_discarded_in_bounded_memory() {
        let mut f = Framer::default();
        for _ in 0..1000 {
            f.push(&[b'x'; 1000]);
            assert_eq!(f.next(512), Frame::Partial);
            assert!(f.buf.len() <= 1000);
        }
        f.push(b"\r");
        assert_eq!(f.next(512), Frame::Partial);
        f.push(b"\nok\r\n");
        assert_eq!(f.next(512), Frame::TooLong);
        assert!(matches!(f.next(512), Frame::Line { .. }));
        // Exactly at the limit is fine, one more is too long.
        let got = frames(&[b"1234\r\n12345\r\n"], 6);
        assert_eq!(got, vec![Ok(b"1234\r\n".to_vec()), Err(Frame::TooLong)]);
        // A bare LF ending a discarded line is still caught.
        assert_eq!(frames(&[&[b'x'; 20], b"\n"], 6), vec![Err(Frame::Bare)]);
        assert_eq!(
            frames(&[&[b'x'; 20], b"\r", b"x"], 6),
            vec![Err(Frame::Bare)]
        );
    }
}
