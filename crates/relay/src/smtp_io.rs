//! Byte-level SMTP helpers shared by ingress and egress: bounded line reading,
//! our own reply reader (keeps enhanced codes exactly as written, unlike
//! smtp-proto's which saturates 4.7.500 to 4.7.255), and dot-stuffing.

use std::io;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite};

/// Anything we can speak SMTP over: a TCP stream or a TLS stream over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A boxed transport.
pub type BoxIo = Box<dyn Io>;

/// A piece of a line.
#[derive(Debug, PartialEq, Eq)]
pub struct LinePiece {
    /// True when the piece ends with LF (the line is complete).
    pub complete: bool,
    /// True when the stream ended.
    pub eof: bool,
}

/// Append bytes up to and including the next LF to `buf`, but at most `max`
/// bytes in this call, so a client sending an endless line costs bounded memory.
pub async fn read_line_piece<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<LinePiece> {
    let start = buf.len();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(LinePiece {
                complete: false,
                eof: true,
            });
        }
        let room = max.saturating_sub(buf.len() - start);
        let window = &available[..available.len().min(room)];
        if let Some(pos) = memchr::memchr(b'\n', window) {
            buf.extend_from_slice(&window[..=pos]);
            r.consume(pos + 1);
            return Ok(LinePiece {
                complete: true,
                eof: false,
            });
        }
        let n = window.len();
        buf.extend_from_slice(window);
        r.consume(n);
        if buf.len() - start >= max {
            return Ok(LinePiece {
                complete: false,
                eof: false,
            });
        }
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Each line as received, without CRLF (code and separator included).
    pub lines: Vec<String>,
}

impl Reply {
    /// The full reply, lines joined with CRLF as on the wire (what `explain` reads).
    pub fn text(&self) -> String {
        self.lines.join("\r\n")
    }

    /// 2xx
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Lines after the code, for EHLO capability parsing.
    pub fn raw(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for l in &self.lines {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// Longest reply line we keep (RFC 5321 says 512; real servers send more).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply (a long EHLO list is ~20).
const MAX_REPLY_LINES: usize = 100;

/// Read one reply. Errors on EOF, malformed codes or an oversized reply.
pub async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Reply> {
    let mut lines = Vec::new();
    let mut code = 0u16;
    loop {
        let mut buf = Vec::new();
        let piece = read_line_piece(r, &mut buf, MAX_REPLY_LINE).await?;
        if piece.eof && buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by peer",
            ));
        }
        if !piece.complete {
            // Drop the rest of an overlong line but keep what we have.
            let mut skip = Vec::new();
            while !read_line_piece(r, &mut skip, MAX_REPLY_LINE)
                .await?
                .complete
            {
                skip.clear();
            }
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        let this_code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an SMTP reply: {line:?}"),
                )
            })?;
        if lines.is_empty() {
            code = this_code;
        }
        let more = line.as_bytes().get(3) == Some(&b'-');
        lines.push(line);
        if !more || lines.len() >= MAX_REPLY_LINES {
            return Ok(Reply { code, lines });
        }
    }
}

/// Append `body` to `out` as DATA content: lines normalised to CRLF, leading
/// dots doubled, ending with CRLF "." CRLF.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn multi_line_reply_keeps_three_digit_enhanced_codes() {
        let wire = b"451-4.7.500 Server busy. Please try again later from [127.0.0.2].\r\n451 4.7.500 (S77714) [host.outlook.com]\r\n";
        let mut r = &wire[..];
        let reply = read_reply(&mut r).await.unwrap();
        assert_eq!(reply.code, 451);
        assert_eq!(reply.lines.len(), 2);
        assert!(reply.text().contains("4.7.500 (S77714)"));
    }

    #[tokio::test]
    async fn garbage_and_eof_are_errors_not_panics() {
        let mut r = &b"hello\r\n"[..];
        assert!(read_reply(&mut r).await.is_err());
        let mut r = &b""[..];
        assert!(read_reply(&mut r).await.is_err());
    }

    #[tokio::test]
    async fn long_lines_are_read_in_bounded_pieces() {
        let data = vec![b'a'; 10_000];
        let mut r = &data[..];
        let mut buf = Vec::new();
        let p = read_line_piece(&mut r, &mut buf, 4096).await.unwrap();
        assert!(!p.complete);
        assert_eq!(buf.len(), 4096);
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_fixes_bare_lf() {
        let mut out = Vec::new();
        dot_stuff(b"a\n.b\r\n..c", &mut out);
        assert_eq!(out, b"a\r\n..b\r\n...c\r\n.\r\n");
    }
}
