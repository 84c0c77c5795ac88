//! The in-memory view of the queue: which recipients are due when, which are in
//! flight. Pure: no I/O and no clock (callers pass `now_ms`). The spool holds the
//! durable copy; this is rebuilt from it at startup.

use crate::spool::{QueuedMessage, RcptStatus, domain_of};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Recipients of one message for one domain, to be sent in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub queue_id: String,
    pub domain: String,
    /// Indexes into the message's recipients.
    pub rcpts: Vec<usize>,
}

/// The queue.
#[derive(Debug, Default)]
pub struct Queue {
    messages: HashMap<String, QueuedMessage>,
    /// (next attempt ms, queue id, recipient index) for queued recipients not in flight.
    due: BTreeSet<(i64, String, usize)>,
    in_flight: HashSet<(String, usize)>,
}

impl Queue {
    /// Add (or replace) a message; its queued recipients become due at their time.
    pub fn insert(&mut self, msg: QueuedMessage) {
        self.remove(&msg.queue_id.clone());
        for (i, r) in msg.recipients.iter().enumerate() {
            if r.status == RcptStatus::Queued {
                self.due
                    .insert((r.next_attempt_ms, msg.queue_id.clone(), i));
            }
        }
        self.messages.insert(msg.queue_id.clone(), msg);
    }

    /// Forget a message entirely.
    pub fn remove(&mut self, queue_id: &str) -> Option<QueuedMessage> {
        let msg = self.messages.remove(queue_id)?;
        for (i, r) in msg.recipients.iter().enumerate() {
            self.due
                .remove(&(r.next_attempt_ms, queue_id.to_owned(), i));
            self.in_flight.remove(&(queue_id.to_owned(), i));
        }
        Some(msg)
    }

    /// A message by id.
    pub fn get(&self, queue_id: &str) -> Option<&QueuedMessage> {
        self.messages.get(queue_id)
    }

    /// Every message.
    pub fn messages(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.messages.values()
    }

    /// Number of messages held.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when no message is held.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// When the next recipient is due (ms), if any.
    pub fn next_due(&self) -> Option<i64> {
        self.due.first().map(|(t, _, _)| *t)
    }

    /// Take recipients due at `now_ms`, grouped per (message, domain), and mark
    /// them in flight. At most `max_jobs` jobs.
    pub fn take_due(&mut self, now_ms: i64, max_jobs: usize) -> Vec<Job> {
        let mut jobs: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        while let Some((t, id, i)) = self.due.first().cloned() {
            if t > now_ms {
                break;
            }
            let Some(msg) = self.messages.get(&id) else {
                self.due.pop_first();
                continue;
            };
            let domain = domain_of(&msg.recipients[i].address);
            let key = (id.clone(), domain);
            if !jobs.contains_key(&key) && jobs.len() >= max_jobs {
                break;
            }
            self.due.pop_first();
            self.in_flight.insert((id, i));
            jobs.entry(key).or_default().push(i);
        }
        jobs.into_iter()
            .map(|((queue_id, domain), rcpts)| Job {
                queue_id,
                domain,
                rcpts,
            })
            .collect()
    }

    /// Apply the new state of a message after an attempt (or an operator action)
    /// and release its in-flight recipients. A message whose recipients are all
    /// final is dropped.
    pub fn update(&mut self, msg: QueuedMessage, released: &[usize]) {
        for i in released {
            self.in_flight.remove(&(msg.queue_id.clone(), *i));
        }
        if msg.is_done() {
            self.remove(&msg.queue_id.clone());
            return;
        }
        if let Some(old) = self.messages.get(&msg.queue_id) {
            for (i, r) in old.recipients.iter().enumerate() {
                self.due
                    .remove(&(r.next_attempt_ms, msg.queue_id.clone(), i));
            }
        }
        for (i, r) in msg.recipients.iter().enumerate() {
            if r.status == RcptStatus::Queued
                && !self.in_flight.contains(&(msg.queue_id.clone(), i))
            {
                self.due
                    .insert((r.next_attempt_ms, msg.queue_id.clone(), i));
            }
        }
        self.messages.insert(msg.queue_id.clone(), msg);
    }

    /// True when recipient `i` of `queue_id` is being delivered now.
    pub fn is_in_flight(&self, queue_id: &str, i: usize) -> bool {
        self.in_flight.contains(&(queue_id.to_owned(), i))
    }
}

/// Which messages an operator command applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub queue_id: Option<String>,
    pub domain: Option<String>,
    pub stream: Option<String>,
    pub sender: Option<String>,
    pub all: bool,
}

impl Filter {
    /// Parse `all`, a queue id, or `key=value` pairs (`domain=`, `stream=`,
    /// `sender=`, `id=`) separated by spaces or commas.
    pub fn parse(text: &[String]) -> Result<Filter, String> {
        let mut f = Filter::default();
        for part in text.iter().flat_map(|t| t.split([',', ' '])) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                None if part == "all" => f.all = true,
                None => f.queue_id = Some(part.to_owned()),
                Some(("id", v)) => f.queue_id = Some(v.to_owned()),
                Some(("domain", v)) => f.domain = Some(v.to_ascii_lowercase()),
                Some(("stream", v)) => f.stream = Some(v.to_owned()),
                Some(("sender", v)) => f.sender = Some(v.to_owned()),
                Some((k, _)) => {
                    return Err(format!(
                        "unknown filter key {k:?} (use id=, domain=, stream=, sender= or all)"
                    ));
                }
            }
        }
        if f == Filter::default() {
            return Err("give a filter: a queue id, domain=…, stream=…, sender=… or all".into());
        }
        Ok(f)
    }

    /// Whether recipient `i` of `msg` is selected.
    pub fn matches(&self, msg: &QueuedMessage, i: usize) -> bool {
        let r = &msg.recipients[i];
        if self.all {
            return true;
        }
        self.queue_id.as_ref().is_none_or(|q| *q == msg.queue_id)
            && self.domain.as_ref().is_none_or(|d| *d == r.domain())
            && self.stream.as_ref().is_none_or(|s| *s == msg.stream)
            && self.sender.as_ref().is_none_or(|s| *s == msg.sender)
    }
}

/// Counts and oldest age for one group.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupStats {
    pub recipients: u64,
    pub oldest_age_secs: u64,
}

/// `mxpace queue` summary: queued recipients by provider, domain, source, stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub messages: u64,
    pub recipients: u64,
    pub oldest_age_secs: u64,
    pub by_provider: BTreeMap<String, GroupStats>,
    pub by_domain: BTreeMap<String, GroupStats>,
    pub by_source: BTreeMap<String, GroupStats>,
    pub by_stream: BTreeMap<String, GroupStats>,
}

/// Summarise queued recipients at `now_ms`.
pub fn summarize<'a>(msgs: impl Iterator<Item = &'a QueuedMessage>, now_ms: i64) -> Summary {
    let mut s = Summary::default();
    for m in msgs {
        let age = ((now_ms - m.received_ms).max(0) / 1000) as u64;
        let mut counted = false;
        for r in m
            .recipients
            .iter()
            .filter(|r| r.status == RcptStatus::Queued)
        {
            counted = true;
            s.recipients += 1;
            s.oldest_age_secs = s.oldest_age_secs.max(age);
            let provider = r.last_provider.clone().unwrap_or_else(|| "unknown".into());
            let source = r
                .last_source
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "none-yet".into());
            for (map, key) in [
                (&mut s.by_provider, provider),
                (&mut s.by_domain, r.domain()),
                (&mut s.by_source, source),
                (&mut s.by_stream, m.stream.clone()),
            ] {
                let g = map.entry(key).or_default();
                g.recipients += 1;
                g.oldest_age_secs = g.oldest_age_secs.max(age);
            }
        }
        if counted {
            s.messages += 1;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Recipient;

    fn rcpt(addr: &str, next: i64) -> Recipient {
        Recipient::queued(addr.into(), None, 0, next)
    }

    fn msg(id: &str, rcpts: Vec<Recipient>) -> QueuedMessage {
        QueuedMessage {
            queue_id: id.into(),
            message_id: String::new(),
            sender: "s@x.test".into(),
            received_ms: 0,
            stream: "bulk".into(),
            size: 0,
            env_id: None,
            ret_full: false,
            idempotency_key: None,
            expires_ms: 1_000_000,
            recipients: rcpts,
        }
    }

    #[test]
    fn due_recipients_are_grouped_per_domain_and_taken_once() {
        let mut q = Queue::default();
        q.insert(msg(
            "A",
            vec![
                rcpt("1@a.test", 0),
                rcpt("2@b.test", 0),
                rcpt("3@a.test", 50),
            ],
        ));
        let jobs = q.take_due(10, 100);
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].rcpts, [0]);
        assert!(q.take_due(10, 100).is_empty(), "in flight is not due again");
        let later = q.take_due(60, 100);
        assert_eq!(later[0].rcpts, [2]);
    }

    #[test]
    fn delivered_recipients_are_never_due_again() {
        let mut q = Queue::default();
        q.insert(msg("A", vec![rcpt("1@a.test", 0), rcpt("2@a.test", 0)]));
        let job = q.take_due(0, 10).remove(0);
        let mut m = q.get("A").unwrap().clone();
        m.recipients[0].status = RcptStatus::Delivered;
        m.recipients[1].next_attempt_ms = 100;
        q.update(m, &job.rcpts);
        let again = q.take_due(1000, 10);
        assert_eq!(again[0].rcpts, [1]);
        let mut m = q.get("A").unwrap().clone();
        m.recipients[1].status = RcptStatus::Delivered;
        q.update(m, &[1]);
        assert!(q.is_empty());
    }

    #[test]
    fn filters_parse_and_select() {
        let f = Filter::parse(&["domain=A.test,stream=bulk".into()]).unwrap();
        let m = msg("A", vec![rcpt("1@a.test", 0), rcpt("2@b.test", 0)]);
        assert!(f.matches(&m, 0));
        assert!(!f.matches(&m, 1));
        assert!(Filter::parse(&[]).is_err());
        assert!(Filter::parse(&["colour=red".into()]).is_err());
    }

    #[test]
    fn summary_counts_queued_by_domain_with_oldest_age() {
        let mut m = msg("A", vec![rcpt("1@a.test", 0), rcpt("2@b.test", 0)]);
        m.recipients[1].status = RcptStatus::Delivered;
        let s = summarize([m].iter(), 5000);
        assert_eq!(s.recipients, 1);
        assert_eq!(s.by_domain["a.test"].oldest_age_secs, 5);
        assert!(!s.by_domain.contains_key("b.test"));
    }
}
