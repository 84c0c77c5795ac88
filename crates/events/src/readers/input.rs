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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
