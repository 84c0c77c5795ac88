//! The phrase automaton, compacted for the hot path.
//!
//! aho-corasick builds the automaton (case-insensitive, every phrase reported where
//! it ends, overlapping). Its DFA pads each state's row to a power of two and is
//! ~2 MB for the embedded phrases; walking it cost ~50 L1 cache misses per reply
//! (callgrind's cache simulation), more time than the instructions themselves. Here
//! the same transitions are copied into a dense table with exactly one column per
//! byte class, reachable states only, match states first (so "is this a match state"
//! is one comparison), laid out column by column (see [`PhraseDfa`]).
//! Written by hand because no crate exposes such a table; the transitions
//! themselves all come from aho-corasick, and a test checks the two agree.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind, StartKind, dfa::DFA};
use std::mem::MaybeUninit;

/// A dense DFA over byte classes that reports, at each byte, the phrases ending there.
///
/// The table is column-major: `trans[column_offset[byte] + state]` is the next state,
/// where states are plain indices (u16 while they fit, the common case) and each
/// byte's column offset is pre-multiplied by the number of states. So the step from
/// one state to the next is one add and one load, no multiply, and u16 entries halve
/// the table (the embedded phrases: ~390 KiB, inside this machine's 512 KiB L2, where
/// the row-major u32 table, 784 KiB, was not). Shallow states (breadth-first order)
/// of one byte share cache lines, which is where ordinary text spends its time.
pub(crate) struct PhraseDfa {
    /// Byte → its column's offset (column index × number of states).
    column_offset: [u32; 256],
    table: Table,
    start: u32,
    /// Number of states (the length of each column).
    states: u32,
    /// States below this index are match states.
    match_limit: u32,
    /// For match state `i`, the phrase ids ending there.
    matches: Box<[Box<[u32]>]>,
}

/// How often each byte occurs in the text of a reply, roughly: letters (either case)
/// by their frequency in English text (R. Lewand, *Cryptological Mathematics*, 2000,
/// as tabulated on Wikipedia's "Letter frequency" page), a space about every sixth
/// byte, digits and common punctuation rarer, anything else rarer still. Only the
/// order of the resulting likelihoods matters (see [`PhraseDfa::new`]).
fn byte_weights() -> [f32; 256] {
    const LETTERS: [f32; 26] = [
        8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4, 6.7, 7.5, 1.9, 0.095,
        6.0, 6.3, 9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074,
    ];
    let mut weight = [0.0001f32; 256];
    for b in 0x21..0x7fu8 {
        weight[usize::from(b)] = 0.002;
    }
    for (i, f) in LETTERS.iter().enumerate() {
        // Letters are about 80% of the bytes; lower case far more often than upper.
        weight[usize::from(b'a') + i] = f / 100.0 * 0.8 * 0.9;
        weight[usize::from(b'A') + i] = f / 100.0 * 0.8 * 0.1;
    }
    weight[usize::from(b' ')] = 0.16;
    for b in b'0'..=b'9' {
        weight[usize::from(b)] = 0.005;
    }
    for b in *b".,-:;()[]<>" {
        weight[usize::from(b)] = 0.005;
    }
    weight
}

/// The likelihood recorded for aho-corasick state `s` (0 if none yet).
fn likelihood_of(likelihood: &[f32], s: StateID) -> f32 {
    likelihood.get(s.as_usize()).copied().unwrap_or(0.0)
}

/// Transitions as narrow as the number of states allows.
enum Table {
    Narrow(Box<[u16]>),
    Wide(Box<[u32]>),
}

impl PhraseDfa {
    /// The automaton of `phrases` (non-empty, matched ignoring ASCII case); phrase ids
    /// are indices into `phrases`.
    pub(crate) fn new(phrases: &[String]) -> Result<Self, String> {
        Self::with_narrow_limit(phrases, u64::from(u16::MAX) + 1)
    }

    /// As [`PhraseDfa::new`], with u16 transitions only up to `narrow_limit` states
    /// (tests force the u32 table with a low limit).
    fn with_narrow_limit(phrases: &[String], narrow_limit: u64) -> Result<Self, String> {
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
        // With each state, how often ordinary text is likely to reach it: the most
        // likely path's product of byte frequencies. Breadth first, a state's
        // shallower parents come before it; deeper ones (failure transitions) only
        // give it less.
        let weight = byte_weights();
        let mut likelihood: Vec<f32> = Vec::new();
        let mut order = vec![start];
        mark(&mut index, start);
        let mut i = 0;
        while i < order.len() {
            let here = likelihood_of(&likelihood, order[i]).max(f32::from(i == 0));
            for b in 0..=255u8 {
                let n = next(order[i], b);
                if mark(&mut index, n) {
                    order.push(n);
                }
                let via = here * weight[usize::from(b)];
                if likelihood.len() <= n.as_usize() {
                    likelihood.resize(n.as_usize() + 1, 0.0);
                }
                likelihood[n.as_usize()] = likelihood[n.as_usize()].max(via);
            }
            i += 1;
        }
        // Match states first (their number is the match limit), then the others; in
        // each group the likeliest first, so that the states ordinary text walks
        // through share the fewest cache lines of each column.
        let (mut states, mut rest): (Vec<StateID>, Vec<StateID>) =
            order.into_iter().partition(|&s| dfa.is_match(s));
        let likeliest_first = |a: &StateID, b: &StateID| {
            (a != &start)
                .cmp(&(b != &start))
                .then(likelihood_of(&likelihood, *b).total_cmp(&likelihood_of(&likelihood, *a)))
        };
        states.sort_by(likeliest_first);
        rest.sort_by(likeliest_first);
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
        let width = representative.len() as u64;
        let count = states.len() as u64;
        if count * width > u64::from(u32::MAX) {
            return Err(format!("{} transitions: too many phrases", count * width));
        }
        let mut column_offset = [0u32; 256];
        for (b, offset) in column_offset.iter_mut().enumerate() {
            *offset = u32::from(classes[b]) * count as u32;
        }
        let mut trans: Vec<u32> = Vec::with_capacity((count * width) as usize);
        for &(b, _) in &representative {
            for &s in &states {
                trans.push(index[next(s, b).as_usize()]);
            }
        }
        let table = if count <= narrow_limit {
            Table::Narrow(trans.iter().map(|&t| t as u16).collect())
        } else {
            Table::Wide(trans.into_boxed_slice())
        };
        let matches = states[..match_count]
            .iter()
            .map(|&s| {
                (0..dfa.match_len(s))
                    .map(|i| dfa.match_pattern(s, i).as_u32())
                    .collect()
            })
            .collect();
        Ok(PhraseDfa {
            column_offset,
            table,
            start: index[start.as_usize()],
            states: count as u32,
            match_limit: match_count as u32,
            matches,
        })
    }

    /// Bytes used by the tables.
    pub(crate) fn memory_usage(&self) -> usize {
        let table = match &self.table {
            Table::Narrow(t) => t.len() * 2,
            Table::Wide(t) => t.len() * 4,
        };
        table + self.matches.iter().map(|m| m.len() * 4 + 16).sum::<usize>()
    }

    /// Match states: [`PhraseDfa::for_each_match`] reports states below this number.
    pub(crate) fn match_states(&self) -> u32 {
        self.match_limit
    }

    /// The ids of the phrases that end when the walk is in match state `state`.
    pub(crate) fn phrases_of(&self, state: u32) -> &[u32] {
        &self.matches[state as usize]
    }

    /// Calls `found` with the match state (see [`PhraseDfa::phrases_of`]) at each byte
    /// of `text` where some phrase ends: every occurrence is reported at least once
    /// (some may be reported twice, and not necessarily in text order — callers
    /// collect them as a set).
    #[inline]
    pub(crate) fn for_each_match(&self, text: &[u8], found: impl FnMut(u32)) {
        match &self.table {
            Table::Narrow(t) => self.walk(t, text, found),
            Table::Wide(t) => self.walk(t, text, found),
        }
    }

    /// Texts at least this long are walked in three streams, shorter ones from half
    /// this long in two (see [`PhraseDfa::walk_streams`]), shorter ones in one:
    /// below ~16 bytes a chunk, the streams' set-up and meeting would not pay.
    const THREE_STREAMS_FROM: usize = 48;
    const TWO_STREAMS_FROM: usize = 24;
    /// How many of its first states each stream after the first records, for the
    /// stream before it to meet.
    const RECORDED: usize = 64;

    #[inline]
    fn walk<T: Copy + Into<u32>>(&self, table: &[T], text: &[u8], found: impl FnMut(u32)) {
        if text.len() >= Self::THREE_STREAMS_FROM {
            self.walk_streams::<T, 3>(table, text, found);
        } else if text.len() >= Self::TWO_STREAMS_FROM {
            self.walk_streams::<T, 2>(table, text, found);
        } else {
            self.walk_streams::<T, 1>(table, text, found);
        }
    }

    /// Each step of a DFA walk waits for the one before (load latency, not the
    /// instruction count, bounds it), so the text is cut into `S` chunks walked as
    /// independent, interleaved streams the CPU overlaps.
    ///
    /// A stream starting from the start state in the middle of the text is in the
    /// state of the longest suffix of what it has read that is a phrase prefix: every
    /// match it reports is a real occurrence, but near its start it may miss phrases
    /// begun in the chunk before. So each stream then walks on into the next chunk —
    /// with the state of a walk from the very start — until it is in the same state as
    /// that chunk's stream at the same byte: from there the two walks are identical and
    /// the next stream has reported (or will report) everything. Since a state depends
    /// on at most as many last bytes as the longest phrase has, they meet within that
    /// many bytes of the chunk boundary; if they have not met within the recorded
    /// states (a phrase longer than those, or than a chunk), the walk simply goes on
    /// to the end of the text.
    #[inline]
    fn walk_streams<T: Copy + Into<u32>, const S: usize>(
        &self,
        table: &[T],
        text: &[u8],
        mut found: impl FnMut(u32),
    ) {
        debug_assert_eq!(
            table.len(),
            self.column_offset.iter().max().map_or(0, |&m| m as usize) + self.states as usize
        );
        let base = table.as_ptr();
        let step = |state: u32, b: u8| -> u32 {
            // The byte's column is found without waiting for the state, and the state
            // indexes it in the load's address: the walk's chain of dependent steps is
            // the load alone, with no add and no bounds check on it.
            // SAFETY: every column offset is `class × states` with `class` below the
            // number of columns, and every state (the start state and each table
            // entry) is below `states`, so `offset + state < states × columns =
            // table.len()` (`PhraseDfa::with_narrow_limit` builds them so).
            unsafe {
                let column = base.add(self.column_offset[usize::from(b)] as usize);
                (*column.add(state as usize)).into()
            }
        };
        let mut report = |state: u32| {
            if state < self.match_limit {
                found(state);
            }
        };
        if S == 1 {
            let mut state = self.start;
            for &b in text {
                state = step(state, b);
                report(state);
            }
            return;
        }
        let chunk = text.len() / S;
        let chunks: [&[u8]; S] = std::array::from_fn(|k| &text[k * chunk..(k + 1) * chunk]);
        let mut states = [self.start; S];
        // Left uninitialised: zeroing these bytes was a `memset` call per text (~60
        // instructions); only the first `record` entries are written and read.
        let mut recorded = [[MaybeUninit::<u32>::uninit(); Self::RECORDED]; S];
        let record = chunk.min(Self::RECORDED);
        for i in 0..record {
            for k in 0..S {
                states[k] = step(states[k], chunks[k][i]);
                recorded[k][i].write(states[k]);
                report(states[k]);
            }
        }
        #[allow(clippy::needless_range_loop)] // `i` indexes every chunk in turn
        for i in record..chunk {
            for k in 0..S {
                states[k] = step(states[k], chunks[k][i]);
                report(states[k]);
            }
        }
        // The last stream reads the bytes the chunks left over.
        for &b in &text[S * chunk..] {
            states[S - 1] = step(states[S - 1], b);
            report(states[S - 1]);
        }
        // Stream 0 is a walk from the start; each stream goes on until it meets the
        // next (which from then on is a walk from the start too).
        for k in 0..S - 1 {
            let mut state = states[k];
            let next = (k + 1) * chunk;
            for (j, &b) in text[next..].iter().enumerate() {
                state = step(state, b);
                // SAFETY: entries `0..record` of every stream were written above.
                if j < record && state == unsafe { recorded[k + 1][j].assume_init() } {
                    break;
                }
                report(state);
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
        reference_by(&reference_automaton(phrases), text)
    }

    fn reference_automaton(phrases: &[String]) -> AhoCorasick {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(phrases)
            .unwrap()
    }

    fn reference_by(ac: &AhoCorasick, text: &str) -> Vec<u32> {
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
        dfa.for_each_match(text.as_bytes(), |m| {
            ids.extend_from_slice(dfa.phrases_of(m))
        });
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
        let narrow = PhraseDfa::new(&phrases).unwrap();
        let wide = PhraseDfa::with_narrow_limit(&phrases, 0).unwrap();
        assert!(matches!(narrow.table, Table::Narrow(_)));
        assert!(matches!(wide.table, Table::Wide(_)));
        for text in [
            "451 4.7.500 Server BUSY. Please TRY again later (S3150)",
            "blocked using zen.SPAMHAUS.org; spam",
            "",
            "ü Ü 5.7.1",
            "aaaain ain busybusy",
        ] {
            assert_eq!(ours(&narrow, text), reference(&phrases, text), "{text:?}");
            assert_eq!(ours(&wide, text), reference(&phrases, text), "{text:?}");
        }
    }

    /// A phrase at every position of long texts: wherever it falls (inside a chunk,
    /// across chunk boundaries, in the leftover bytes), it is found — also when a
    /// phrase is longer than a chunk or than the recorded states (the streams may then
    /// not meet, and the walk goes on to the end).
    #[test]
    fn streams_find_a_phrase_at_every_position() {
        let long = "a phrase longer than the sixty-four recorded states of one stream";
        let mut phrases = phrases();
        phrases.push(long.to_owned());
        let dfa = PhraseDfa::new(&phrases).unwrap();
        let ac = reference_automaton(&phrases);
        for len in [15, 23, 24, 25, 31, 47, 48, 49, 50, 60, 61, 100, 257, 300] {
            for phrase in ["try again later", "(s3150)", "spamhaus", "ain", long] {
                if phrase.len() > len {
                    continue;
                }
                for at in 0..=len - phrase.len() {
                    let mut text = "x".repeat(len);
                    text.replace_range(at..at + phrase.len(), phrase);
                    assert_eq!(ours(&dfa, &text), reference_by(&ac, &text), "{text:?}");
                }
            }
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
