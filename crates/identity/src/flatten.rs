//! SPF flattening: turn the resolved include tree into ip4/ip6 terms packed into a chain of
//! records that each fit the size limits, and diff two resolutions. Pure: takes the walked
//! tree (or a network list), returns records.

use crate::spf::{Node, Qualifier};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Text budget per record. RFC 7208 §3.4 asks the answer to fit 512 bytes; the owner name,
/// header and string length bytes take the rest, so ~450 bytes of text is the usual target.
pub const MAX_RECORD_BYTES: usize = 450;
/// A character-string holds at most 255 bytes (RFC 1035 §3.3).
pub const MAX_STRING_BYTES: usize = 255;

/// One record of the flattened set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlatRecord {
    /// Owner name.
    pub name: String,
    /// The full record text.
    pub text: String,
    /// The record split into character-strings of at most 255 bytes.
    pub strings: Vec<String>,
}

/// The flattened SPF of a domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flattened {
    /// The domain flattened.
    pub domain: String,
    /// Every network authorised with a pass result, aggregated and sorted.
    pub networks: Vec<IpNet>,
    /// Terms kept as written because they cannot be reduced to addresses.
    pub kept_terms: Vec<String>,
    /// The records to publish: the first at the domain, the rest chained by include.
    pub records: Vec<FlatRecord>,
    /// DNS-querying terms a receiver spends on the flattened set.
    pub lookups: usize,
    /// Problems found while walking (the flattened set is only as good as the tree).
    pub problems: Vec<String>,
}

/// What changed between two resolutions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diff {
    /// Networks now authorised that were not before.
    pub added: Vec<IpNet>,
    /// Networks no longer authorised.
    pub removed: Vec<IpNet>,
}

impl Diff {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Why a set cannot be flattened within the limits.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlattenError {
    /// The tree has no SPF record to flatten.
    #[error("{0} has no usable SPF record to flatten")]
    NoRecord(String),
    /// Too many chained records would be needed.
    #[error("the flattened set needs {needed} DNS lookups, over the limit of 10")]
    TooManyLookups {
        /// Lookups the chain would cost.
        needed: usize,
    },
}

/// Flattens a walked tree. Chained records are named `<prefix><n>.<domain>`.
pub fn flatten(tree: &Node, prefix: &str) -> Result<Flattened, FlattenError> {
    if tree.record.is_none() {
        return Err(FlattenError::NoRecord(tree.domain.clone()));
    }
    let networks = IpNet::aggregate(&tree.all_pass_nets());
    let mut kept: Vec<String> = Vec::new();
    collect_kept(tree, &mut kept);
    let all = find_all(tree).unwrap_or(Qualifier::Neutral);
    pack(
        &tree.domain,
        &networks,
        &kept,
        all,
        prefix,
        tree.all_problems(),
    )
}

fn collect_kept(node: &Node, out: &mut Vec<String>) {
    for t in &node.kept_terms {
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    for c in &node.children {
        collect_kept(c, out);
    }
}

/// The `all` that decides the result: the root's, or the redirect target's.
fn find_all(node: &Node) -> Option<Qualifier> {
    node.all.or_else(|| {
        node.children
            .iter()
            .find(|c| c.via == "redirect")
            .and_then(find_all)
    })
}

/// Packs networks into a chain of records within [`MAX_RECORD_BYTES`].
pub fn pack(
    domain: &str,
    networks: &[IpNet],
    kept: &[String],
    all: Qualifier,
    prefix: &str,
    problems: Vec<String>,
) -> Result<Flattened, FlattenError> {
    let terms: Vec<String> = networks
        .iter()
        .map(|n| match n {
            IpNet::V4(v4) if v4.prefix_len() == 32 => format!("ip4:{}", v4.addr()),
            IpNet::V4(v4) => format!("ip4:{v4}"),
            IpNet::V6(v6) if v6.prefix_len() == 128 => format!("ip6:{}", v6.addr()),
            IpNet::V6(v6) => format!("ip6:{v6}"),
        })
        .collect();
    let chain_name = |i: usize| format!("{prefix}{i}.{domain}");
    let all_term = format!("{}all", all.prefix());

    // Greedy: fill each record; the root carries the kept terms and the final `all`,
    // each record but the last ends with the include of the next.
    let mut bodies: Vec<Vec<String>> = vec![kept.to_vec()];
    for term in terms {
        let idx = bodies.len() - 1;
        let tail_reserve = format!(" include:{} {all_term}", chain_name(idx + 1)).len();
        let current_len = record_len(&bodies[idx]);
        if current_len + 1 + term.len() + tail_reserve > MAX_RECORD_BYTES && !bodies[idx].is_empty()
        {
            bodies.push(Vec::new());
        }
        let last = bodies.len() - 1;
        bodies[last].push(term);
    }
    let n = bodies.len();
    let mut records = Vec::with_capacity(n);
    for (i, mut body) in bodies.into_iter().enumerate() {
        if i + 1 < n {
            body.push(format!("include:{}", chain_name(i + 1)));
        }
        if i == 0 {
            body.push(all_term.clone());
        }
        let name = if i == 0 {
            domain.to_string()
        } else {
            chain_name(i)
        };
        let text = format!("v=spf1 {}", body.join(" "));
        records.push(FlatRecord {
            name,
            strings: split_strings(&text),
            text,
        });
    }
    let kept_lookups = kept.iter().filter(|t| is_lookup_term(t)).count();
    let lookups = kept_lookups + (n - 1);
    if lookups > crate::spf::MAX_LOOKUPS {
        return Err(FlattenError::TooManyLookups { needed: lookups });
    }
    Ok(Flattened {
        domain: domain.to_string(),
        networks: networks.to_vec(),
        kept_terms: kept.to_vec(),
        records,
        lookups,
        problems,
    })
}

fn is_lookup_term(t: &str) -> bool {
    let t = t.trim_start_matches(['+', '-', '~', '?']);
    ["include:", "a", "mx", "ptr", "exists:", "redirect="]
        .iter()
        .any(|p| t.starts_with(p) && !t.starts_with("all"))
}

fn record_len(body: &[String]) -> usize {
    "v=spf1".len() + body.iter().map(|t| 1 + t.len()).sum::<usize>()
}

/// Splits a record into character-strings of at most 255 bytes, cutting before a space when
/// one is near so each string reads as whole terms (receivers join them without separator).
pub fn split_strings(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > MAX_STRING_BYTES {
        let window = &rest[..MAX_STRING_BYTES];
        let cut = window
            .rfind(' ')
            .filter(|&i| i > 0)
            .unwrap_or(MAX_STRING_BYTES);
        out.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    out.push(rest.to_string());
    out
}

/// The networks added and removed between a previous and a current resolution.
pub fn diff(previous: &[IpNet], current: &[IpNet]) -> Diff {
    let prev: BTreeSet<&IpNet> = previous.iter().collect();
    let cur: BTreeSet<&IpNet> = current.iter().collect();
    Diff {
        added: cur.difference(&prev).map(|n| **n).collect(),
        removed: prev.difference(&cur).map(|n| **n).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(n: usize) -> Vec<IpNet> {
        // Non-adjacent /32s so aggregation cannot merge them.
        (0..n)
            .map(|i| {
                format!("198.51.{}.{}/32", i / 100, (i % 100) * 2 + 1)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn many_networks_chain_within_limits() {
        let f = pack(
            "example.com",
            &nets(120),
            &[],
            Qualifier::Fail,
            "_spf",
            vec![],
        )
        .unwrap();
        assert!(f.records.len() > 1);
        assert_eq!(f.records[0].name, "example.com");
        assert!(f.records[0].text.ends_with(" -all"));
        for (i, r) in f.records.iter().enumerate() {
            assert!(
                r.text.len() <= MAX_RECORD_BYTES,
                "{} is {} bytes",
                r.name,
                r.text.len()
            );
            assert!(r.strings.iter().all(|s| s.len() <= MAX_STRING_BYTES));
            assert_eq!(r.strings.concat(), r.text);
            if i + 1 < f.records.len() {
                assert!(
                    r.text
                        .contains(&format!("include:_spf{}.example.com", i + 1))
                );
            } else {
                assert!(!r.text.contains("include:"));
            }
            if i > 0 {
                assert!(
                    !r.text.contains("all"),
                    "chained records must not end evaluation"
                );
            }
        }
        let listed: usize = f
            .records
            .iter()
            .map(|r| r.text.matches("ip4:").count())
            .sum();
        assert_eq!(listed, 120);
        assert_eq!(f.lookups, f.records.len() - 1);
    }

    #[test]
    fn too_many_chained_records_is_an_error() {
        let e = pack(
            "example.com",
            &nets(1000),
            &[],
            Qualifier::Fail,
            "_spf",
            vec![],
        )
        .unwrap_err();
        assert!(matches!(e, FlattenError::TooManyLookups { .. }));
    }

    #[test]
    fn diff_reports_added_and_removed() {
        let a: Vec<IpNet> = vec![
            "192.0.2.1/32".parse().unwrap(),
            "192.0.2.2/32".parse().unwrap(),
        ];
        let b: Vec<IpNet> = vec![
            "192.0.2.2/32".parse().unwrap(),
            "192.0.2.3/32".parse().unwrap(),
        ];
        let d = diff(&a, &b);
        assert_eq!(d.added, vec!["192.0.2.3/32".parse::<IpNet>().unwrap()]);
        assert_eq!(d.removed, vec!["192.0.2.1/32".parse::<IpNet>().unwrap()]);
        assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn long_record_splits_on_spaces() {
        let text = format!("v=spf1 {}", vec!["ip4:203.0.113.77"; 30].join(" "));
        let s = split_strings(&text);
        assert!(s.len() >= 2);
        assert_eq!(s.concat(), text);
        assert!(s[1].starts_with(' '));
    }
}
