//! Opening inputs: plain, gzip or zstd, recognised by their magic bytes (not the file
//! name, so rotated `mail.log.2.gz` and KumoMTA's extension-less zstd segments both work).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// How an input is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decompression {
    None,
    Gzip,
    Zstd,
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Open a file, decompressing it when needed.
pub fn open_path(path: &Path) -> io::Result<(Box<dyn BufRead + Send>, Decompression)> {
    let file = File::open(path)?;
    open_reader(Box::new(file))
}

/// Wrap any byte source (e.g. stdin), decompressing it when its first bytes say so.
pub fn open_reader(
    source: Box<dyn Read + Send>,
) -> io::Result<(Box<dyn BufRead + Send>, Decompression)> {
    let mut buffered = BufReader::with_capacity(1 << 20, source);
    let head = buffered.fill_buf()?;
    if head.starts_with(&GZIP_MAGIC) {
        let decoder = flate2::bufread::MultiGzDecoder::new(buffered);
        Ok((
            Box::new(BufReader::with_capacity(1 << 20, decoder)),
            Decompression::Gzip,
        ))
    } else if head.starts_with(&ZSTD_MAGIC) {
        let decoder = zstd::stream::read::Decoder::with_buffer(buffered)?;
        Ok((
            Box::new(BufReader::with_capacity(1 << 20, decoder)),
            Decompression::Zstd,
        ))
    } else {
        Ok((Box::new(buffered), Decompression::None))
    }
}

/// The longest line kept, in bytes (1 MiB). A syslog line is at most a few KiB (rsyslog
/// cuts messages at 8 KiB by default); a longer one is binary data or a runaway writer,
/// and is skipped as [`super::SkipReason::TooLong`] without being held in memory.
pub const MAX_LINE: usize = 1 << 20;

/// Read through the next `\n` into `line`, keeping at most `max` bytes of the line (its
/// `\n` too, when one was reached): the rest of a longer line is read and dropped, so
/// memory stays bounded whatever the input. `line` may hold the start of the line
/// already (it counts towards `max`). Returns the bytes consumed (0 at the end of the
/// input) and whether the line was cut.
pub fn read_line_capped(
    input: &mut dyn BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<(usize, bool)> {
    let mut consumed = 0;
    let mut cut = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        let end = memchr::memchr(b'\n', available);
        let content = end.unwrap_or(available.len());
        let keep = content.min(max.saturating_sub(line.len()));
        cut |= keep < content;
        line.extend_from_slice(&available[..keep]);
        let take = end.map_or(content, |i| i + 1);
        input.consume(take);
        consumed += take;
        if end.is_some() {
            line.push(b'\n');
            break;
        }
    }
    Ok((consumed, cut))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn lines_are_read_whole_up_to_the_cap_and_the_rest_is_dropped() {
        let long = "x".repeat(10_000);
        let text = format!("short\n{long}\nafter\nno end");
        // A small buffer, so that lines span many refills.
        let mut input = BufReader::with_capacity(7, text.as_bytes());
        let mut line = Vec::new();
        let mut next = |max| {
            line.clear();
            let (n, cut) = read_line_capped(&mut input, &mut line, max).unwrap();
            (n, cut, String::from_utf8(line.clone()).unwrap())
        };
        assert_eq!(next(100), (6, false, "short\n".to_string()));
        assert_eq!(next(100), (10_001, true, format!("{}\n", "x".repeat(100))));
        assert_eq!(next(100), (6, false, "after\n".to_string()));
        assert_eq!(next(6), (6, false, "no end".to_string()));
        assert_eq!(next(100), (0, false, String::new()));
        // A line of exactly `max` bytes is not cut; one byte more is.
        let mut input = BufReader::with_capacity(3, "abcd\nabcde\nab".as_bytes());
        let mut line = Vec::new();
        assert_eq!(
            read_line_capped(&mut input, &mut line, 4).unwrap(),
            (5, false)
        );
        line.clear();
        assert_eq!(
            read_line_capped(&mut input, &mut line, 4).unwrap(),
            (6, true)
        );
        assert_eq!(line, b"abcd\n");
        // The start of a line already held counts towards the cap.
        line.clear();
        line.extend_from_slice(b"xyz");
        assert_eq!(
            read_line_capped(&mut input, &mut line, 4).unwrap(),
            (2, true)
        );
        assert_eq!(line, b"xyza");
    }

    fn read_all(mut r: Box<dyn BufRead + Send>) -> String {
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn gzip_and_zstd_are_recognised_by_content() {
        let text = "line one\nline two\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let (r, kind) = open_reader(Box::new(io::Cursor::new(gz))).unwrap();
        assert_eq!(kind, Decompression::Gzip);
        assert_eq!(read_all(r), text);

        let zs = zstd::encode_all(text.as_bytes(), 3).unwrap();
        let (r, kind) = open_reader(Box::new(io::Cursor::new(zs))).unwrap();
        assert_eq!(kind, Decompression::Zstd);
        assert_eq!(read_all(r), text);

        let (r, kind) = open_reader(Box::new(io::Cursor::new(text.as_bytes().to_vec()))).unwrap();
        assert_eq!(kind, Decompression::None);
        assert_eq!(read_all(r), text);
    }
}
