//! Minimal header-block handling for messages passing through: find a field's
//! value, remove a field. (mail-parser would parse the whole MIME tree; here we
//! only need the top header block, untouched byte for byte otherwise.)

/// Byte length of the header block, including the empty line that ends it.
/// A message with no empty line is all headers.
fn header_block_len(msg: &[u8]) -> usize {
    let mut i = 0;
    while i < msg.len() {
        let end = memchr::memchr(b'\n', &msg[i..]).map_or(msg.len(), |p| i + p + 1);
        let line = &msg[i..end];
        if line == b"\r\n" || line == b"\n" {
            return end;
        }
        i = end;
    }
    msg.len()
}

/// Spans (start, end) of each header field, folded lines included.
fn fields(msg: &[u8]) -> Vec<(usize, usize)> {
    let block = header_block_len(msg);
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < block {
        let end = memchr::memchr(b'\n', &msg[i..block]).map_or(block, |p| i + p + 1);
        let line = &msg[i..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match (line.first(), out.last_mut()) {
            (Some(b' ' | b'\t'), Some(last)) => last.1 = end,
            _ => out.push((i, end)),
        }
        i = end;
    }
    out
}

fn field_name(field: &[u8]) -> &[u8] {
    let colon = memchr::memchr(b':', field).unwrap_or(0);
    field[..colon].trim_ascii()
}

fn field_value(field: &[u8]) -> String {
    let colon = memchr::memchr(b':', field).map_or(field.len(), |c| c + 1);
    let raw = String::from_utf8_lossy(&field[colon..]);
    raw.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The (unfolded) value of the first field called `name`.
pub fn header_value(msg: &[u8], name: &str) -> Option<String> {
    fields(msg)
        .into_iter()
        .map(|(s, e)| &msg[s..e])
        .find(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes()))
        .map(field_value)
}

/// Remove every field called `name`; returns the first value and the new message.
pub fn take_header(msg: &[u8], name: &str) -> (Option<String>, Vec<u8>) {
    let mut value = None;
    let mut out = Vec::with_capacity(msg.len());
    let mut pos = 0;
    for (s, e) in fields(msg) {
        if field_name(&msg[s..e]).eq_ignore_ascii_case(name.as_bytes()) {
            if value.is_none() {
                value = Some(field_value(&msg[s..e]));
            }
            out.extend_from_slice(&msg[pos..s]);
            pos = e;
        }
    }
    out.extend_from_slice(&msg[pos..]);
    (value, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_removes_folded_fields_but_not_in_the_body() {
        let m = b"From: a@b\r\nX-Mxpace-Stream: bulk\r\n  more\r\nSubject: s\r\n\r\nX-Mxpace-Stream: body\r\n";
        assert_eq!(header_value(m, "subject").unwrap(), "s");
        let (v, out) = take_header(m, "x-mxpace-stream");
        assert_eq!(v.unwrap(), "bulk more");
        assert_eq!(
            out,
            b"From: a@b\r\nSubject: s\r\n\r\nX-Mxpace-Stream: body\r\n"
        );
    }

    #[test]
    fn bare_lf_and_headerless_input_do_not_panic() {
        assert_eq!(header_value(b"A: 1\nB: 2\n\nbody", "b").unwrap(), "2");
        assert_eq!(header_value(b"", "b"), None);
        assert_eq!(take_header(b"no colon line", "x").1, b"no colon line");
    }
}
