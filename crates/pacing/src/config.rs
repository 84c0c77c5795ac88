//! Pacing configuration: embedded defaults, user overrides, validation that names the key.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The shipped defaults (see the comments in the file for the source of each value).
pub const DEFAULTS: &str = include_str!("../data/pacing.toml");

/// The provider name of a receiver the classifier does not recognise.
pub const UNKNOWN_PROVIDER: &str = "unknown";

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The text is not TOML of the expected shape (unknown key, wrong type, …).
    #[error("pacing config: {0}")]
    Parse(String),
    /// A key holds a value that cannot work.
    #[error("pacing config: {key}: {problem}")]
    Invalid {
        /// The offending key, dotted (e.g. `provider.microsoft.rate_floor`).
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// Settings as written: every key optional so a file may override a few.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    rate_floor: Option<String>,
    rate_ceiling: Option<String>,
    rate_initial: Option<String>,
    connections_floor: Option<u32>,
    connections_ceiling: Option<u32>,
    connections_initial: Option<u32>,
    per_connection_floor: Option<u32>,
    per_connection_ceiling: Option<u32>,
    per_connection_initial: Option<u32>,
    decrease_factor: Option<f64>,
    pause_decrease_factor: Option<f64>,
    increase_interval: Option<String>,
    increase_step: Option<String>,
    recovery_share: Option<f64>,
    slow_start_growth: Option<f64>,
    plateau_share: Option<f64>,
    probe_after: Option<String>,
    cut_holdoff: Option<String>,
    slow_down_pause: Option<String>,
    pause: Option<String>,
    max_pause: Option<String>,
    pause_memory: Option<String>,
    breaker_failures: Option<u32>,
    breaker_cooldown: Option<String>,
    window: Option<String>,
    window_min_attempts: Option<u32>,
    watch_share: Option<f64>,
    act_share: Option<f64>,
    transactional_share: Option<f64>,
}

impl RawPath {
    /// `self` with every key that `over` sets replaced.
    fn overlay(&self, over: &RawPath) -> RawPath {
        macro_rules! pick {
            ($($f:ident),*) => { RawPath { $($f: over.$f.clone().or_else(|| self.$f.clone())),* } };
        }
        pick!(
            rate_floor,
            rate_ceiling,
            rate_initial,
            connections_floor,
            connections_ceiling,
            connections_initial,
            per_connection_floor,
            per_connection_ceiling,
            per_connection_initial,
            decrease_factor,
            pause_decrease_factor,
            increase_interval,
            increase_step,
            recovery_share,
            slow_start_growth,
            plateau_share,
            probe_after,
            cut_holdoff,
            slow_down_pause,
            pause,
            max_pause,
            pause_memory,
            breaker_failures,
            breaker_cooldown,
            window,
            window_min_attempts,
            watch_share,
            act_share,
            transactional_share
        )
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    known_providers: Option<Vec<String>>,
    #[serde(default)]
    default: RawPath,
    #[serde(default)]
    provider: BTreeMap<String, RawPath>,
}

/// The resolved settings of one path. Rates are messages per second.
#[derive(Debug, Clone, PartialEq)]
pub struct PathConfig {
    /// Lowest message rate (per second) the controller will set.
    pub rate_floor: f64,
    /// Highest message rate.
    pub rate_ceiling: f64,
    /// Rate of a new path.
    pub rate_initial: f64,
    /// Concurrent connections: floor, ceiling, initial.
    pub connections: (u32, u32, u32),
    /// Messages per connection: floor, ceiling, initial.
    pub per_connection: (u32, u32, u32),
    /// Multiplier on a `slow-down` verdict (0 < f < 1).
    pub decrease_factor: f64,
    /// Multiplier on a `pause` verdict (0 < f < 1).
    pub pause_decrease_factor: f64,
    /// The brake: at most one increase per this interval.
    pub increase_interval: Duration,
    /// Additive increase per interval (messages per second).
    pub increase_step: f64,
    /// Share of the gap to the last cut's rate recovered per interval.
    pub recovery_share: f64,
    /// Share of the rate added per interval before the path was ever cut (slow start).
    pub slow_start_growth: f64,
    /// After a cut, the rate climbs back to this share of the rate that was cut.
    pub plateau_share: f64,
    /// …and stays there this long after the cut before probing beyond it.
    pub probe_after: Duration,
    /// Further throttle verdicts within this time of a cut do not cut again.
    pub cut_holdoff: Duration,
    /// Rest after a `slow-down` verdict.
    pub slow_down_pause: Duration,
    /// Rest after a `pause` verdict (doubles for repeats).
    pub pause: Duration,
    /// Longest rest.
    pub max_pause: Duration,
    /// Repeats within this time double the pause.
    pub pause_memory: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before its probe.
    pub breaker_cooldown: Duration,
    /// Length of the deferral-rate window.
    pub window: Duration,
    /// Attempts in the window below which the band stays normal.
    pub window_min_attempts: u32,
    /// Deferral share at which the band is `watch`.
    pub watch_share: f64,
    /// Deferral share at which the band is `act-now`.
    pub act_share: f64,
    /// Share of the rate transactional mail keeps while bulk and cold pause.
    pub transactional_share: f64,
}

/// The whole pacing configuration: defaults plus per-provider settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PacingConfig {
    default: PathConfig,
    providers: BTreeMap<String, PathConfig>,
    known_providers: Vec<String>,
}

impl PacingConfig {
    /// The shipped defaults.
    pub fn builtin() -> PacingConfig {
        PacingConfig::from_toml("").expect("shipped pacing defaults are valid")
    }

    /// Defaults overlaid with the user's TOML text.
    pub fn from_toml(user: &str) -> Result<PacingConfig, ConfigError> {
        let base: RawConfig =
            toml::from_str(DEFAULTS).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let over: RawConfig =
            toml::from_str(user).map_err(|e| ConfigError::Parse(e.to_string()))?;
        // Provider knowledge lives in one place, the reply classifier's table
        // (crates/reply/rules/providers.toml); a file may add names of its own (e.g. the
        // MX host of an unrecognised receiver, which is then its own provider).
        let mut known: Vec<String> = mxpace_reply::PROVIDERS
            .iter()
            .map(|p| p.name.clone())
            .collect();
        known.push(UNKNOWN_PROVIDER.to_string());
        for extra in [&base.known_providers, &over.known_providers]
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = extra.trim().to_ascii_lowercase();
            if name.is_empty() {
                return Err(invalid("known_providers", "an empty provider name"));
            }
            if !known.contains(&name) {
                known.push(name);
            }
        }
        let default_raw = base.default.overlay(&over.default);
        let default = resolve("default", &default_raw)?;
        let mut names: Vec<&String> = base.provider.keys().collect();
        names.extend(over.provider.keys());
        let mut providers = BTreeMap::new();
        for name in names {
            if !known.iter().any(|k| k == name) {
                return Err(invalid(
                    &format!("provider.{name}"),
                    format!("unknown provider (known: {})", known.join(", ")),
                ));
            }
            let empty = RawPath::default();
            let raw = default_raw
                .overlay(base.provider.get(name).unwrap_or(&empty))
                .overlay(over.provider.get(name).unwrap_or(&empty));
            providers.insert(name.clone(), resolve(&format!("provider.{name}"), &raw)?);
        }
        Ok(PacingConfig {
            default,
            providers,
            known_providers: known,
        })
    }

    /// Settings for paths to `provider` (the defaults when it has no section).
    pub fn for_provider(&self, provider: &str) -> &PathConfig {
        self.providers.get(provider).unwrap_or(&self.default)
    }

    /// Provider names a config section may use: the reply classifier's providers,
    /// `unknown`, and any a file adds with `known_providers`.
    pub fn known_providers(&self) -> &[String] {
        &self.known_providers
    }
}

fn resolve(section: &str, raw: &RawPath) -> Result<PathConfig, ConfigError> {
    let key = |k: &str| format!("{section}.{k}");
    macro_rules! need {
        ($f:ident) => {
            raw.$f
                .clone()
                .ok_or_else(|| invalid(&key(stringify!($f)), "missing"))?
        };
    }
    let rate = |k: &str, v: String, zero_ok: bool| -> Result<f64, ConfigError> {
        let r = parse_rate(&v).map_err(|p| invalid(&key(k), p))?;
        if r <= 0.0 && !zero_ok {
            return Err(invalid(&key(k), "must be above zero"));
        }
        Ok(r)
    };
    let dur = |k: &str, v: String| parse_duration(&v).map_err(|p| invalid(&key(k), p));
    let share = |k: &str, v: f64, lo_open: bool, hi_open: bool| -> Result<f64, ConfigError> {
        let ok = v.is_finite()
            && if lo_open { v > 0.0 } else { v >= 0.0 }
            && if hi_open { v < 1.0 } else { v <= 1.0 };
        if ok {
            Ok(v)
        } else {
            let (l, h) = (
                if lo_open { "(0" } else { "[0" },
                if hi_open { "1)" } else { "1]" },
            );
            Err(invalid(&key(k), format!("{v} is outside {l}, {h}")))
        }
    };
    let rate_floor = rate("rate_floor", need!(rate_floor), false)?;
    let rate_ceiling = rate("rate_ceiling", need!(rate_ceiling), false)?;
    let rate_initial = rate("rate_initial", need!(rate_initial), false)?;
    if rate_floor > rate_ceiling {
        return Err(invalid(&key("rate_floor"), "is above rate_ceiling"));
    }
    if !(rate_floor..=rate_ceiling).contains(&rate_initial) {
        return Err(invalid(
            &key("rate_initial"),
            "must lie between rate_floor and rate_ceiling",
        ));
    }
    let triple = |name: &str, f: u32, c: u32, i: u32| -> Result<(u32, u32, u32), ConfigError> {
        if f == 0 {
            return Err(invalid(
                &key(&format!("{name}_floor")),
                "must be above zero",
            ));
        }
        if f > c {
            return Err(invalid(
                &key(&format!("{name}_floor")),
                format!("is above {name}_ceiling"),
            ));
        }
        if !(f..=c).contains(&i) {
            return Err(invalid(
                &key(&format!("{name}_initial")),
                format!("must lie between {name}_floor and {name}_ceiling"),
            ));
        }
        Ok((f, c, i))
    };
    let connections = triple(
        "connections",
        need!(connections_floor),
        need!(connections_ceiling),
        need!(connections_initial),
    )?;
    let per_connection = triple(
        "per_connection",
        need!(per_connection_floor),
        need!(per_connection_ceiling),
        need!(per_connection_initial),
    )?;
    let watch_share = share("watch_share", need!(watch_share), true, true)?;
    let act_share = share("act_share", need!(act_share), true, false)?;
    if watch_share > act_share {
        return Err(invalid(&key("watch_share"), "is above act_share"));
    }
    let breaker_failures = need!(breaker_failures);
    if breaker_failures == 0 {
        return Err(invalid(&key("breaker_failures"), "must be above zero"));
    }
    let increase_interval = dur("increase_interval", need!(increase_interval))?;
    if increase_interval.is_zero() {
        return Err(invalid(&key("increase_interval"), "must be above zero"));
    }
    let window = dur("window", need!(window))?;
    if window.is_zero() {
        return Err(invalid(&key("window"), "must be above zero"));
    }
    let pause = dur("pause", need!(pause))?;
    let max_pause = dur("max_pause", need!(max_pause))?;
    if pause > max_pause {
        return Err(invalid(&key("pause"), "is above max_pause"));
    }
    Ok(PathConfig {
        rate_floor,
        rate_ceiling,
        rate_initial,
        connections,
        per_connection,
        decrease_factor: share("decrease_factor", need!(decrease_factor), true, true)?,
        pause_decrease_factor: share(
            "pause_decrease_factor",
            need!(pause_decrease_factor),
            true,
            true,
        )?,
        increase_interval,
        increase_step: rate("increase_step", need!(increase_step), false)?,
        recovery_share: share("recovery_share", need!(recovery_share), true, false)?,
        slow_start_growth: share("slow_start_growth", need!(slow_start_growth), false, false)?,
        plateau_share: share("plateau_share", need!(plateau_share), true, false)?,
        probe_after: dur("probe_after", need!(probe_after))?,
        cut_holdoff: dur("cut_holdoff", need!(cut_holdoff))?,
        slow_down_pause: dur("slow_down_pause", need!(slow_down_pause))?,
        pause,
        max_pause,
        pause_memory: dur("pause_memory", need!(pause_memory))?,
        breaker_failures,
        breaker_cooldown: dur("breaker_cooldown", need!(breaker_cooldown))?,
        window,
        window_min_attempts: need!(window_min_attempts),
        watch_share,
        act_share,
        transactional_share: share(
            "transactional_share",
            need!(transactional_share),
            true,
            false,
        )?,
    })
}

/// Parse `"N/s"`, `"N/min"`, `"N/h"` (also `sec`, `second`, `m`, `minute`, `hour`)
/// into messages per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (n, unit) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not a rate; write e.g. \"60/min\""))?;
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {:?} is not a number", n.trim()))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{text:?}: the count must be a finite number ≥ 0"));
    }
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        "d" | "day" => 86400.0,
        u => return Err(format!("{text:?}: unknown unit {u:?} (use s, min, h or d)")),
    };
    Ok(n / per)
}

/// Parse `"500ms"`, `"30s"`, `"10m"`, `"2h"`, `"3d"` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. \"90s\", \"10m\", \"2h\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        u => {
            return Err(format!(
                "{text:?}: unknown unit {u:?} (use ms, s, m, h or d)"
            ));
        }
    };
    if !secs.is_finite() || secs > 365.0 * 86400.0 {
        return Err(format!("{text:?} is out of range (at most a year)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_key(text: &str) -> String {
        match PacingConfig::from_toml(text) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid-key error, got {other:?}"),
        }
    }

    #[test]
    fn the_shipped_defaults_load_and_microsoft_has_its_own_section() {
        let c = PacingConfig::builtin();
        assert_eq!(c.for_provider("microsoft").per_connection.1, 50);
        assert_eq!(c.for_provider("google").per_connection.1, 100);
        assert!((c.for_provider("google").rate_floor - 1.0 / 60.0).abs() < 1e-12);
    }

    #[test]
    fn a_user_file_overrides_one_key_and_keeps_the_rest() {
        let c = PacingConfig::from_toml("[provider.google]\nrate_ceiling = \"20/s\"\n").unwrap();
        assert_eq!(c.for_provider("google").rate_ceiling, 20.0);
        assert_eq!(c.for_provider("google").connections.1, 10);
        assert_eq!(c.for_provider("yahoo").rate_ceiling, 10.0);
    }

    #[test]
    fn floor_above_ceiling_names_the_key() {
        let k = err_key("[provider.microsoft]\nrate_floor = \"10/s\"\nrate_ceiling = \"1/s\"\n");
        assert_eq!(k, "provider.microsoft.rate_floor");
        let k = err_key("[default]\nconnections_floor = 12\n");
        assert_eq!(k, "default.connections_floor");
    }

    #[test]
    fn zero_rates_are_refused_with_the_key() {
        assert_eq!(
            err_key("[default]\nrate_floor = \"0/min\"\n"),
            "default.rate_floor"
        );
        assert_eq!(
            err_key("[default]\nincrease_step = \"0/s\"\n"),
            "default.increase_step"
        );
        assert_eq!(
            err_key("[default]\nper_connection_floor = 0\n"),
            "default.per_connection_floor"
        );
    }

    #[test]
    fn bad_durations_and_rates_say_what_was_written() {
        let e = PacingConfig::from_toml("[default]\npause = \"ten minutes\"\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("default.pause") && text.contains("ten minutes"),
            "{text}"
        );
        assert_eq!(
            err_key("[default]\nwindow = \"5 fortnights\"\n"),
            "default.window"
        );
        assert_eq!(
            err_key("[default]\nrate_ceiling = \"60 per minute\"\n"),
            "default.rate_ceiling"
        );
    }

    #[test]
    fn an_unknown_provider_is_refused() {
        let e = PacingConfig::from_toml("[provider.hotmale]\npause = \"1m\"\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "provider.hotmale"),
            "{e}"
        );
    }

    #[test]
    fn known_providers_are_the_reply_classifiers_and_a_file_may_add_more() {
        let c = PacingConfig::builtin();
        for p in mxpace_reply::PROVIDERS.iter() {
            assert!(c.known_providers().contains(&p.name), "{} missing", p.name);
        }
        assert!(c.known_providers().iter().any(|k| k == "unknown"));
        // Outlook.com rolls up into microsoft in the classifier: no separate section.
        assert!(!c.known_providers().iter().any(|k| k == "outlook"));
        let c = PacingConfig::from_toml(
            "known_providers = [\"mx.example.net\"]\n[provider.\"mx.example.net\"]\npause = \"1m\"\n",
        )
        .unwrap();
        assert_eq!(
            c.for_provider("mx.example.net").pause,
            Duration::from_secs(60)
        );
    }

    #[test]
    fn a_misspelt_key_is_a_parse_error_naming_it() {
        let e = PacingConfig::from_toml("[default]\nrate_flor = \"1/min\"\n").unwrap_err();
        assert!(e.to_string().contains("rate_flor"), "{e}");
    }

    #[test]
    fn rates_and_durations_parse_in_their_units() {
        assert_eq!(parse_rate("120/min").unwrap(), 2.0);
        assert_eq!(parse_rate("7200/h").unwrap(), 2.0);
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("-3s").is_err());
        assert!(parse_rate("1/fortnight").is_err());
    }
}
