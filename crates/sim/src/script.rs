//! Recipient local-part directives of the `script` profile (`tempfail+3@…`, `550@…`, …).

use std::time::Duration;

/// What a recipient address asks the receiver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// No directive: normal handling.
    None,
    /// Defer this many times at RCPT, then accept.
    Tempfail(u32),
    /// Reject at RCPT with 550.
    Reject,
    /// Answer the end of DATA with 421 and close.
    CloseAtData,
    /// Answer the end of DATA after a delay.
    Slow(Duration),
    /// Cut the connection after the message, before the reply.
    Drop,
}

/// Default delay of `slow@` when no number is given.
const SLOW_DEFAULT: Duration = Duration::from_secs(5);
/// Cap on `slow+N@` so a typo cannot hold a session for hours.
const SLOW_MAX_SECS: u64 = 600;

impl Directive {
    /// Read the directive from a recipient address (case-insensitive local part).
    pub fn of(address: &str) -> Directive {
        let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
        let local = local.to_ascii_lowercase();
        let (word, arg) = match local.split_once('+') {
            Some((w, a)) => (w, Some(a)),
            None => (local.as_str(), None),
        };
        let number = arg.and_then(|a| a.parse::<u64>().ok());
        match word {
            "tempfail" => Directive::Tempfail(number.unwrap_or(1).min(u32::MAX as u64) as u32),
            "550" => Directive::Reject,
            "421-at-data" => Directive::CloseAtData,
            "slow" => Directive::Slow(
                number.map_or(SLOW_DEFAULT, |n| Duration::from_secs(n.min(SLOW_MAX_SECS))),
            ),
            "drop" => Directive::Drop,
            _ => Directive::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_read_from_the_local_part() {
        assert_eq!(Directive::of("tempfail+3@x.test"), Directive::Tempfail(3));
        assert_eq!(Directive::of("TempFail@x.test"), Directive::Tempfail(1));
        assert_eq!(Directive::of("550@x.test"), Directive::Reject);
        assert_eq!(Directive::of("421-at-data@x.test"), Directive::CloseAtData);
        assert_eq!(
            Directive::of("slow@x.test"),
            Directive::Slow(Duration::from_secs(5))
        );
        assert_eq!(
            Directive::of("slow+2@x.test"),
            Directive::Slow(Duration::from_secs(2))
        );
        assert_eq!(Directive::of("drop@x.test"), Directive::Drop);
        assert_eq!(Directive::of("alice@x.test"), Directive::None);
        assert_eq!(Directive::of("tempfail+zz@x.test"), Directive::Tempfail(1));
    }
}
