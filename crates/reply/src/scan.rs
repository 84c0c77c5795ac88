//! One pass over a reply line for everything that sends it off the fast parse path
//! (see `parse::parse_plain_line`): control bytes (line breaks, tabs, binary), `#`,
//! two spaces in a row, and the reply's own `NNN-` continuation prefix inside the
//! line.
//!
//! Before this, a single-line reply was scanned five times (a control-byte check,
//! a `#` search, a double-space search, a `-` search and the trims), each a call of
//! its own costing more in set-up than in bytes for a ~130-byte line. Here one SSE2
//! loop compares 16 bytes with all four at once. Written by hand: memchr searches
//! for up to three bytes per call and cannot test a range (bytes below 0x20), and no
//! crate in this workspace offers a safe multi-byte-class scan. The scalar version
//! is the reference (and the fallback off x86-64); tests check the two agree.

/// What [`scan`] found in a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct LineScan {
    /// A byte below 0x20: a line break, a tab, or another control byte.
    pub(crate) control: bool,
    /// A `#` (Exchange's `#SMTP#` must then be looked for).
    pub(crate) hash: bool,
    /// Two spaces in a row.
    pub(crate) double_space: bool,
    /// The three bytes `code` followed by `-`, ending after the line's first four
    /// bytes: a continuation prefix inside the line (Gmail's flattened form).
    pub(crate) code_dash: bool,
}

/// Scan `b` for what [`LineScan`] reports; `code` is the reply's three code digits.
#[inline]
pub(crate) fn scan(b: &[u8], code: [u8; 3]) -> LineScan {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if b.len() >= 32 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `scan_avx2` needs AVX2, which the CPU has (checked just above). It
        // does no unchecked memory access.
        return unsafe { scan_avx2(b, code) };
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    if b.len() >= 16 {
        // SAFETY: `scan_sse2` needs SSE2, which this build targets (the cfg above;
        // SSE2 is part of the x86-64 baseline). It does no unchecked memory access.
        return unsafe { scan_sse2(b, code) };
    }
    scan_scalar(b, code)
}

/// The reference: byte by byte.
pub(crate) fn scan_scalar(b: &[u8], code: [u8; 3]) -> LineScan {
    let mut s = LineScan::default();
    for (i, &c) in b.iter().enumerate() {
        s.control |= c < 0x20;
        s.hash |= c == b'#';
        s.double_space |= c == b' ' && i > 0 && b[i - 1] == b' ';
        s.code_dash |= is_code_dash(b, i, code);
    }
    s
}

/// Whether `b[i]` is a `-` after the three code digits, past the line's first four
/// bytes (a `-` at index 3 is the first line's own separator).
#[inline]
fn is_code_dash(b: &[u8], i: usize, code: [u8; 3]) -> bool {
    b[i] == b'-' && i > 3 && b[i - 3..i] == code
}

/// 16 bytes at a time: one comparison per class, masks accumulated; `-` positions
/// are confirmed one by one (they are few). When the length is not a multiple of
/// 16, the last block is the line's last 16 bytes, overlapping the block before —
/// every test here is idempotent, so seeing bytes twice changes nothing. Needs
/// `b.len() >= 16`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[target_feature(enable = "sse2")]
fn scan_sse2(b: &[u8], code: [u8; 3]) -> LineScan {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set_epi64x,
        _mm_set1_epi8, _mm_setzero_si128,
    };
    debug_assert!(b.len() >= 16);
    // A safe load (the compiler makes it one unaligned load).
    let load = |block: &[u8; 16]| -> __m128i {
        let x = u128::from_le_bytes(*block);
        _mm_set_epi64x((x >> 64) as i64, x as i64)
    };
    let (below_space, hash, dash, space) = (
        _mm_set1_epi8(0x1f),
        _mm_set1_epi8(b'#' as i8),
        _mm_set1_epi8(b'-' as i8),
        _mm_set1_epi8(b' ' as i8),
    );
    let (mut controls, mut hashes) = (_mm_setzero_si128(), _mm_setzero_si128());
    let (mut pairs, mut code_dash) = (0u32, false);
    // One block at `at`; `carry` is 1 when the byte before it is a space. Returns
    // the block's space mask.
    let mut block = |v: __m128i, at: usize, carry: u32| -> u32 {
        // Unsigned `v <= 0x1f`: min(v, 0x1f) == v.
        controls = _mm_or_si128(controls, _mm_cmpeq_epi8(_mm_min_epu8(v, below_space), v));
        hashes = _mm_or_si128(hashes, _mm_cmpeq_epi8(v, hash));
        let spaces = _mm_movemask_epi8(_mm_cmpeq_epi8(v, space)) as u32;
        pairs |= spaces & ((spaces << 1) | carry);
        let mut dashes = _mm_movemask_epi8(_mm_cmpeq_epi8(v, dash)) as u32;
        while dashes != 0 {
            code_dash |= is_code_dash(b, at + dashes.trailing_zeros() as usize, code);
            dashes &= dashes - 1;
        }
        spaces
    };
    let mut blocks = b.chunks_exact(16);
    let mut carry = 0;
    for (i, chunk) in (&mut blocks).enumerate() {
        let chunk: &[u8; 16] = chunk.try_into().expect("chunks of 16");
        carry = block(load(chunk), i * 16, carry) >> 15;
    }
    if !blocks.remainder().is_empty() {
        let at = b.len() - 16;
        let tail: &[u8; 16] = b[at..].try_into().expect("16 bytes");
        block(load(tail), at, u32::from(b[at - 1] == b' '));
    }
    LineScan {
        control: _mm_movemask_epi8(controls) != 0,
        hash: _mm_movemask_epi8(hashes) != 0,
        double_space: pairs != 0,
        code_dash,
    }
}

/// [`scan_sse2`] 32 bytes at a time. Needs `b.len() >= 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn scan_avx2(b: &[u8], code: [u8; 3]) -> LineScan {
    use std::arch::x86_64::{
        __m256i, _mm256_cmpeq_epi8, _mm256_min_epu8, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set_epi64x, _mm256_set1_epi8, _mm256_setzero_si256,
    };
    debug_assert!(b.len() >= 32);
    // A safe load (the compiler makes it one unaligned load).
    let load = |block: &[u8; 32]| -> __m256i {
        let q =
            |i: usize| i64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().expect("eight bytes"));
        _mm256_set_epi64x(q(3), q(2), q(1), q(0))
    };
    let (below_space, hash, dash, space) = (
        _mm256_set1_epi8(0x1f),
        _mm256_set1_epi8(b'#' as i8),
        _mm256_set1_epi8(b'-' as i8),
        _mm256_set1_epi8(b' ' as i8),
    );
    let (mut controls, mut hashes) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let (mut pairs, mut code_dash) = (0u32, false);
    let mut block = |v: __m256i, at: usize, carry: u32| -> u32 {
        controls = _mm256_or_si256(
            controls,
            _mm256_cmpeq_epi8(_mm256_min_epu8(v, below_space), v),
        );
        hashes = _mm256_or_si256(hashes, _mm256_cmpeq_epi8(v, hash));
        let spaces = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, space)) as u32;
        pairs |= spaces & ((spaces << 1) | carry);
        let mut dashes = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, dash)) as u32;
        while dashes != 0 {
            code_dash |= is_code_dash(b, at + dashes.trailing_zeros() as usize, code);
            dashes &= dashes - 1;
        }
        spaces
    };
    let mut blocks = b.chunks_exact(32);
    let mut carry = 0;
    for (i, chunk) in (&mut blocks).enumerate() {
        let chunk: &[u8; 32] = chunk.try_into().expect("chunks of 32");
        carry = block(load(chunk), i * 32, carry) >> 31;
    }
    if !blocks.remainder().is_empty() {
        let at = b.len() - 32;
        let tail: &[u8; 32] = b[at..].try_into().expect("32 bytes");
        block(load(tail), at, u32::from(b[at - 1] == b' '));
    }
    LineScan {
        control: _mm256_movemask_epi8(controls) != 0,
        hash: _mm256_movemask_epi8(hashes) != 0,
        double_space: pairs != 0,
        code_dash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_class() {
        let code = *b"550";
        let clean = "550 5.1.1 The email account that you tried to reach does not exist - gsmtp";
        assert_eq!(scan(clean.as_bytes(), code), LineScan::default());
        for (line, want) in [
            ("550 5.1.1 The email account that\tyou tried", "control"),
            ("550 5.1.1 The email account that you tried\r\n", "control"),
            ("550 5.1.1 The email account that you tried #SMTP#", "hash"),
            ("550 5.1.1 The email account that you  tried", "space"),
            ("550 5.1.1 The email account that 550-5.1.1 you", "dash"),
            ("550-5.1.1 The email account that you tried x", ""),
            ("550 5.1.1 The email account that 551-5.1.1 you", ""),
        ] {
            let s = scan(line.as_bytes(), code);
            assert_eq!(s, scan_scalar(line.as_bytes(), code), "{line:?}");
            let found = [
                (s.control, "control"),
                (s.hash, "hash"),
                (s.double_space, "space"),
                (s.code_dash, "dash"),
            ]
            .iter()
            .filter(|(hit, _)| *hit)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(",");
            assert_eq!(found, want, "{line:?}");
        }
    }

    /// Every class at every position of lines of many lengths (block edges, the
    /// overlapping last block, pairs across blocks).
    #[test]
    fn agrees_with_the_scalar_scan_at_every_position() {
        let code = *b"451";
        for len in 0..100usize {
            for needle in [&b"\n"[..], b"#", b"  ", b"451-", b"\x01", b"\xff", b" -"] {
                for at in 0..=len.saturating_sub(needle.len()) {
                    let mut line = vec![b'x'; len];
                    if at + needle.len() <= len {
                        line[at..at + needle.len()].copy_from_slice(needle);
                    }
                    let want = scan_scalar(&line, code);
                    let text = String::from_utf8_lossy(&line);
                    assert_eq!(scan(&line, code), want, "{text:?}");
                    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
                    if len >= 16 {
                        // SAFETY: SSE2 is part of this build's target (the cfg).
                        assert_eq!(unsafe { scan_sse2(&line, code) }, want, "{text:?}");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_scalar_scan(
            line in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(b" #-45\t\r\n\x01\x1f\x20\x7f\x80\xffax".to_vec()),
                    proptest::num::u8::ANY,
                ],
                0..100,
            )
        ) {
            let code = *b"455";
            proptest::prop_assert_eq!(scan(&line, code), scan_scalar(&line, code));
        }
    }
}
