//! Reply templates: the text of a reply with `{placeholders}` filled in per reply.
//!
//! Templates are parsed once when a profile loads, so an unknown placeholder is an
//! error at load time rather than a literal `{typo}` on the wire, and rendering is a
//! walk over pre-split segments (the flight simulator renders millions of replies).

use std::fmt::Write as _;

/// A value a template can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The client's source IP (`{ip}`).
    Ip,
    /// The receiving host name (`{host}`).
    Host,
    /// UTC time of the reply, RFC 3339 with milliseconds (`{timestamp}`).
    Timestamp,
    /// A 16-digit upper-case hex id, fresh per reply (`{id}`).
    Id,
    /// The recipient address of the current command (`{rcpt}`).
    Rcpt,
    /// The Message-ID of the message just received (`{message_id}`).
    MessageId,
    /// A number from the script directive (`{n}`), e.g. attempts left.
    N,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "ip" => Var::Ip,
            "host" => Var::Host,
            "timestamp" => Var::Timestamp,
            "id" => Var::Id,
            "rcpt" => Var::Rcpt,
            "message_id" => Var::MessageId,
            "n" => Var::N,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Var(Var),
}

/// One line of reply text (without the 3-digit code) split into literal text and
/// placeholders.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Template {
    segments: Vec<Segment>,
}

/// A template that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// `{name}` where `name` is not a known placeholder.
    #[error("unknown placeholder {{{0}}} (known: ip, host, timestamp, id, rcpt, message_id, n)")]
    UnknownPlaceholder(String),
    /// A `{` without its `}`.
    #[error("unclosed '{{' in reply template")]
    Unclosed,
    /// CR or LF inside a line would let a template inject extra reply lines.
    #[error("a reply line may not contain CR or LF; use several lines instead")]
    LineBreak,
}

impl Template {
    /// Parse one line of template text.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.contains(['\r', '\n']) {
            return Err(TemplateError::LineBreak);
        }
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or(TemplateError::Unclosed)?;
            let name = &after[..close];
            let var =
                Var::parse(name).ok_or_else(|| TemplateError::UnknownPlaceholder(name.into()))?;
            segments.push(Segment::Var(var));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Template { segments })
    }

    /// Whether rendering needs `var` (lets callers skip computing costly values).
    pub fn uses(&self, var: Var) -> bool {
        self.segments.contains(&Segment::Var(var))
    }

    /// Append the rendered line to `out`, asking `value` for each placeholder.
    pub fn render_into(&self, out: &mut String, value: &mut dyn FnMut(Var, &mut String)) {
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Var(v) => value(*v, out),
            }
        }
    }
}

impl TryFrom<String> for Template {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Template::parse(&s)
    }
}

/// Write `n` as 16 upper-case hex digits, the shape of Microsoft's trailer ids.
pub(crate) fn push_hex16(out: &mut String, n: u64) {
    let _ = write!(out, "{n:016X}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &Template) -> String {
        let mut out = String::new();
        t.render_into(&mut out, &mut |v, o| match v {
            Var::Ip => o.push_str("127.0.0.2"),
            Var::Host => o.push_str("mx.example"),
            _ => o.push('?'),
        });
        out
    }

    #[test]
    fn placeholders_are_filled_and_text_kept() {
        let t = Template::parse("4.7.500 from [{ip}]. (S77714) [{host}]").unwrap();
        assert_eq!(
            render(&t),
            "4.7.500 from [127.0.0.2]. (S77714) [mx.example]"
        );
        assert!(t.uses(Var::Ip));
        assert!(!t.uses(Var::Timestamp));
    }

    #[test]
    fn unknown_and_unclosed_placeholders_are_errors() {
        assert_eq!(
            Template::parse("x {nope}"),
            Err(TemplateError::UnknownPlaceholder("nope".into()))
        );
        assert_eq!(Template::parse("x {ip"), Err(TemplateError::Unclosed));
        assert_eq!(Template::parse("a\r\nb"), Err(TemplateError::LineBreak));
    }
}
