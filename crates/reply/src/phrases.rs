//! The phrase automaton, compacted for the hot path.
//!
//! aho-corasick builds the automaton (case-insensitive, every phrase reported where
//! it ends, overlapping). Its DFA pads each state's row to a power of two and is
//! ~2 MB for the embedded phrases; walking it cost ~50 L1 cache misses per reply
//! (callgrind's cache simulation), more time than the instructions themselves. Here
//! the same transitions are copied into a dense table with exactly one column per
//! byte class, rows of reachable states only, match states first (so "is this a
//! match state" is one comparison), state ids pre-multiplied by the row length.
//! Written by hand because no crate exposes such a table; the transitions
//! themselves all come from aho-corasick, and a test checks the two agree.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind, StartKind, dfa::DFA};

/// A dense DFA over byte classes that reports, at each byte, the phrases ending there.
pub(crate) struct PhraseDfa {
    /// Byte → column.
    classes: [u8; 256],
    /// `trans[state + class]` = next state; states are row offsets (index × columns).
    trans: Box<[u32]>,
    start: u32,
    /// States below this offset are match states.
    match_limit: u32,
    columns: u32,
    /// For match state `i` (offset / columns), the phrase ids ending there.
    matches: Box<[Box<[u32]>]>,
}

impl PhraseDfa {
    /// The automaton of `phrases` (non-empty, matched ignoring ASCII case); phrase ids
    /// are indices into `phrases`.
    pub(crate) fn new(phrases: &[String]) -> Result<Self, String> {
        let dfa = DFA::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Unanchored)
            .prefilter(false)
            .build(phrases)
            .map_err(|e| e.to_string())?;
        let start = dfa.start_state(Anchored::No).map_err(|e| e.to_string())?;
        let next = |s: StateID, b: u8| dfa.next_state(Anchored::No, s, b);

        // Every reachable state, breadth first from the start. aho-corasick's state ids
        // are row offsets, so a plain vector maps them to ours.
        const UNSEEN: u32 = u32::MAX;
        let mut index: Vec<u32> = Vec::new();
        let mark = |index: &mut Vec<u32>, s: StateID| -> bool {
            if index.len() <= s.as_usize() {
                index.resize(s.as_usize() + 1, UNSEEN);
            }
            let fresh = index[s.as_usize()] == UNSEEN;
            index[s.as_usize()] = 0;
            fresh
        };
        let mut order = vec![start];
        mark(&mut index, start);
        let mut i = 0;
        while i < order.len() {
            for b in 0..=255u8 {
                let n = next(order[i], b);
                if mark(&mut index, n) {
                    order.push(n);
                }
            }
            i += 1;
        }
        // Match states first (their number is the match limit), then the others.
        let (mut states, rest): (Vec<StateID>, Vec<StateID>) =
            order.into_iter().partition(|&s| dfa.is_match(s));
        let match_count = states.len();
        states.extend(rest);
        for (i, &s) in states.iter().enumerate() {
            index[s.as_usize()] = i as u32;
        }

        // Byte classes: bytes whose transitions agree in every state share a column.
        // Bytes are taken most frequent first, so the columns of ordinary text sit
        // together at the start of each row (fewer cache lines touched per reply).
        let frequent = b" etaoinsrhldcumfpgwybvkxjqz.,-:;()[]<>0123456789";
        let byte_order = frequent
            .iter()
            .copied()
            .chain((0..=255u8).filter(|b| !frequent.contains(b)));
        let column_hash = |b: u8| {
            states.iter().fold(0u64, |h, &s| {
                (h ^ next(s, b).as_u64()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            })
        };
        let mut classes = [0u8; 256];
        let mut representative: Vec<(u8, u64)> = Vec::new();
        for b in byte_order {
            let hash = column_hash(b);
            let same = representative
                .iter()
                .position(|&(r, h)| h == hash && states.iter().all(|&s| next(s, b) == next(s, r)));
            classes[usize::from(b)] = match same {
                Some(class) => class as u8,
                None => {
                    representative.push((b, hash));
                    (representative.len() - 1) as u8
                }
            };
        }
        let width = representative.len() as u32;
        let total = states.len() as u64 * u64::from(width);
        if total > u64::from(u32::MAX) {
            return Err(format!("{total} transitions: too many phrases"));
        }
        let mut trans = Vec::with_capacity(total as usize);
        for &s in &states {
            for &(b, _) in &representative {
                trans.push(index[next(s, b).as_usize()] * width);
            }
        }
        let matches = states[..match_count]
            .iter()
            .map(|&s| {
                (0..dfa.match_len(s))
                    .map(|i| dfa.match_pattern(s, i).as_u32())
                    .collect()
            })
            .collect();
        Ok(PhraseDfa {
            classes,
            trans: trans.into_boxed_slice(),
            start: index[start.as_usize()] * width,
            match_limit: match_count as u32 * width,
            columns: width,
            matches,
        })
    }

    /// Bytes used by the tables.
    pub(crate) fn memory_usage(&self) -> usize {
        self.trans.len() * 4 + self.matches.iter().map(|m| m.len() * 4 + 16).sum::<usize>()
    }

    /// Calls `found` with the ids of the phrases ending at each byte of `text` where
    /// some do (a phrase occurring twice is reported twice).
    #[inline]
    pub(crate) fn for_each_match(&self, text: &[u8], mut found: impl FnMut(&[u32])) {
        let mut state = self.start;
        for &b in text {
            let class = u32::from(self.classes[usize::from(b)]);
            state = self.trans[(state + class) as usize];
            if state < self.match_limit {
                found(&self.matches[(state / self.columns) as usize]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aho_corasick::AhoCorasick;

    /// The phrases the reference (aho-corasick's own overlapping search) finds.
    fn reference(phrases: &[String], text: &str) -> Vec<u32> {
        let ac = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(phrases)
            .unwrap();
        let mut ids: Vec<u32> = ac
            .find_overlapping_iter(text)
            .map(|m| m.pattern().as_u32())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn ours(dfa: &PhraseDfa, text: &str) -> Vec<u32> {
        let mut ids = Vec::new();
        dfa.for_each_match(text.as_bytes(), |m| ids.extend_from_slice(m));
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn phrases() -> Vec<String> {
        [
            "server busy",
            "busy",
            "spam",
            "spamhaus",
            "(s3150)",
            "try again later",
            "ain",
            "5.7.1",
            "ü",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn agrees_with_aho_corasick() {
        let phrases = phrases();
        let dfa = PhraseDfa::new(&phrases).unwrap();
        for text in [
            "451 4.7.500 Server BUSY. Please TRY again later (S3150)",
            "blocked using zen.SPAMHAUS.org; spam",
            "",
            "ü Ü 5.7.1",
            "aaaain ain busybusy",
        ] {
            assert_eq!(ours(&dfa, text), reference(&phrases, text), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_aho_corasick_on_any_text(
            text in "([a-zA-Z .()0-9üÜ]|server|busy|spam|haus|again|later|5\\.7\\.1|\\(s3150\\)){0,40}"
        ) {
            let phrases = phrases();
            let dfa = PhraseDfa::new(&phrases).unwrap();
            proptest::prop_assert_eq!(ours(&dfa, &text), reference(&phrases, &text));
        }
    }
}
