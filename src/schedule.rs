//! When to refresh a token and how long to back off after a failure. Pure: time and jitter
//! are parameters.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

/// `spec.refresh.beforeExpiry`, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeExpiry {
    Duration(Duration),
    /// Refresh when this share of the lifetime (1..=99 %) remains.
    Percent(u8),
}

/// Parse `15m`, `1h30m`, `90s` or `25%`.
pub fn parse_before_expiry(text: &str) -> Result<BeforeExpiry, String> {
    let bad = || {
        format!(
            "refresh.beforeExpiry {text:?} is neither a duration like 15m or 1h30m nor a percentage like 25%"
        )
    };
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        return match percent.parse::<u8>() {
            Ok(p) if (1..100).contains(&p) => Ok(BeforeExpiry::Percent(p)),
            _ => Err(bad()),
        };
    }
    parse_duration(text)
        .map(BeforeExpiry::Duration)
        .ok_or_else(bad)
}

/// Parse a Go-style duration of hours, minutes, seconds and milliseconds: `10s`, `15m`,
/// `1h30m`, `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().ok()?;
        number.clear();
        let part = match c {
            'h' => Duration::from_secs(value.checked_mul(3600)?),
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                Duration::from_millis(value)
            }
            'm' => Duration::from_secs(value.checked_mul(60)?),
            's' => Duration::from_secs(value),
            _ => return None,
        };
        total = total.checked_add(part)?;
    }
    if !number.is_empty() || text.is_empty() {
        return None;
    }
    Some(total)
}

/// A token's times: issued, expires, to be refreshed. What the token Secret records and the
/// status shows, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    pub refresh_at: Timestamp,
}

/// When to refresh, and whether `beforeExpiry` had to be overruled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPlan {
    pub refresh_at: Timestamp,
    /// `beforeExpiry` was not shorter than the lifetime; the default (2/3) applies.
    pub clamped: bool,
}

/// Largest random advance of a refresh, to spread refreshes of clients created together.
const MAX_JITTER: Duration = Duration::from_secs(60);

/// Refresh at 2/3 of the lifetime (cert-manager's default), earlier if `before` says so,
/// advanced by up to 5 % of the wait (at most a minute) times `jitter` (0..1), and never
/// sooner than `min_interval` after issue, so tiny lifetimes cannot cause a hot loop.
/// Whole seconds, as status shows them.
pub fn refresh_at(
    issued: Timestamp,
    expires: Timestamp,
    before: Option<BeforeExpiry>,
    min_interval: Duration,
    jitter: f64,
) -> RefreshPlan {
    let base = whole_seconds(issued);
    let lifetime = expires.duration_since(base).as_secs().max(0) as u64;
    let default_wait = lifetime * 2 / 3;
    let (wait, clamped) = match before {
        None => (default_wait, false),
        Some(BeforeExpiry::Duration(d)) if d.as_secs() >= lifetime => (default_wait, true),
        Some(BeforeExpiry::Duration(d)) => (default_wait.min(lifetime - d.as_secs()), false),
        Some(BeforeExpiry::Percent(p)) => (
            default_wait.min(lifetime - lifetime * u64::from(p) / 100),
            false,
        ),
    };
    let jitter = unit(jitter);
    let advance = ((wait as f64 * 0.05).min(MAX_JITTER.as_secs_f64()) * jitter) as u64;
    let refresh_at = base + SignedDuration::from_secs((wait - advance) as i64);
    RefreshPlan {
        refresh_at: refresh_at.max(floor(issued, min_interval)),
        clamped,
    }
}

/// Earliest refresh: `min_interval` after the precise issue time, rounded up to whole seconds.
fn floor(issued: Timestamp, min_interval: Duration) -> Timestamp {
    SignedDuration::try_from(min_interval)
        .ok()
        .and_then(|m| issued.checked_add(m).ok())
        .map_or(whole_seconds(Timestamp::MAX), ceil_seconds)
}

/// For a token that many clients may get at once (a first token, a new one after a failure:
/// a rollout, a recovery from an outage): `refresh_at`, but at a point drawn by `jitter` (0..1)
/// from the last three quarters of the wait rather than its last 5 %. Such a herd is spread
/// over one refresh cycle once, and stays spread: routine refreshes keep the small jitter.
pub fn spread_refresh_at(
    issued: Timestamp,
    expires: Timestamp,
    before: Option<BeforeExpiry>,
    min_interval: Duration,
    jitter: f64,
) -> RefreshPlan {
    let plan = refresh_at(issued, expires, before, min_interval, 0.0);
    let base = whole_seconds(issued);
    let wait = plan.refresh_at.duration_since(base).as_secs().max(0) as f64;
    let at = base + SignedDuration::from_secs((wait * (0.25 + 0.75 * unit(jitter))) as i64);
    RefreshPlan {
        refresh_at: at.max(floor(issued, min_interval)),
        ..plan
    }
}

/// A jitter value in 0..=1 (NaN counts as 0).
fn unit(jitter: f64) -> f64 {
    if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    }
}

pub fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).expect("a truncated timestamp is in range")
}

fn ceil_seconds(t: Timestamp) -> Timestamp {
    let whole = whole_seconds(t);
    if whole == t {
        whole
    } else {
        whole
            .checked_add(SignedDuration::from_secs(1))
            .unwrap_or(whole)
    }
}

/// How a failure is classed for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Wrong configuration: retrying soon will not help.
    Configuration,
    /// The IdP or the network may recover.
    Transient,
}

/// Retry delay for configuration errors (a change of the IdvClient or key retries at once).
pub const CONFIGURATION_RETRY: Duration = Duration::from_secs(300);
const TRANSIENT_FIRST: Duration = Duration::from_secs(1);
/// Cap while no valid token is held: get one soon.
const TRANSIENT_CAP_WITHOUT_TOKEN: Duration = Duration::from_secs(60);
/// Cap while a valid token is held: spare the IdP.
const TRANSIENT_CAP_WITH_TOKEN: Duration = Duration::from_secs(300);

/// Delay before attempt `failures + 1` (`failures` >= 1), with `jitter` in 0..1 taking up
/// to a fifth off, and `Retry-After` honoured as a lower bound.
pub fn backoff(
    class: FailureClass,
    failures: u32,
    holds_valid_token: bool,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let delay = match class {
        FailureClass::Configuration => CONFIGURATION_RETRY,
        FailureClass::Transient => {
            let cap = if holds_valid_token {
                TRANSIENT_CAP_WITH_TOKEN
            } else {
                TRANSIENT_CAP_WITHOUT_TOKEN
            };
            let exponent = failures.saturating_sub(1).min(16);
            TRANSIENT_FIRST.saturating_mul(1 << exponent).min(cap)
        }
    };
    let delay = delay.mul_f64(1.0 - 0.2 * unit(jitter));
    match retry_after {
        Some(wanted) => delay.max(wanted),
        None => delay,
    }
}

/// A fixed clock for the unit tests of the pure modules.
#[cfg(test)]
pub(crate) mod test_clock {
    use jiff::Timestamp;

    use super::TokenTimes;

    /// `s` seconds after a fixed instant.
    pub fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// Token times at those offsets.
    pub fn times(issued: i64, expires: i64, refresh: i64) -> TokenTimes {
        TokenTimes {
            issued_at: at(issued),
            expires_at: at(expires),
            refresh_at: at(refresh),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::test_clock::at;

    #[test]
    fn parses_before_expiry() {
        assert_eq!(
            parse_before_expiry("15m"),
            Ok(BeforeExpiry::Duration(Duration::from_secs(900)))
        );
        assert_eq!(
            parse_before_expiry("1h30m"),
            Ok(BeforeExpiry::Duration(Duration::from_secs(5400)))
        );
        assert_eq!(
            parse_before_expiry("90s"),
            Ok(BeforeExpiry::Duration(Duration::from_secs(90)))
        );
        assert_eq!(parse_before_expiry("25%"), Ok(BeforeExpiry::Percent(25)));
        for bad in ["", "15", "m", "100%", "0%", "1d", "-5m", "1.5h"] {
            assert!(parse_before_expiry(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
    }

    #[test]
    fn refresh_times() {
        let min = Duration::from_secs(10);
        let d = |s| Some(BeforeExpiry::Duration(Duration::from_secs(s)));
        // (lifetime, beforeExpiry, jitter, expected wait, clamped)
        let cases = [
            (3600, None, 0.0, 2400, false),
            (3600, d(1800), 0.0, 1800, false),
            (3600, d(300), 0.0, 2400, false), // only ever earlier than the default
            (3600, d(3600), 0.0, 2400, true),
            (3600, d(7200), 0.0, 2400, true),
            (3600, Some(BeforeExpiry::Percent(50)), 0.0, 1800, false),
            (3600, None, 1.0, 2340, false), // jitter advances by at most a minute
            (60, None, 1.0, 38, false),     // ... or 5 % of the wait
            (6, None, 0.0, 10, false),      // floor: never sooner than min_interval
            (0, None, 0.0, 10, false),
        ];
        for (lifetime, before, jitter, wait, clamped) in cases {
            let plan = refresh_at(at(0), at(lifetime), before, min, jitter);
            assert_eq!(
                plan,
                RefreshPlan {
                    refresh_at: at(wait),
                    clamped
                },
                "{lifetime} {before:?} {jitter}"
            );
        }
    }

    #[test]
    fn spread_refresh_times() {
        let min = Duration::from_secs(10);
        let d = |s| Some(BeforeExpiry::Duration(Duration::from_secs(s)));
        // (lifetime, beforeExpiry, jitter, expected wait): a quarter of the default wait up
        // to all of it; beforeExpiry still bounds it; never sooner than min_interval.
        let cases = [
            (3600, None, 0.0, 600),
            (3600, None, 0.5, 1500),
            (3600, None, 1.0, 2400),
            (3600, d(1800), 1.0, 1800),
            (3600, d(7200), 1.0, 2400),
            (30, None, 0.0, 10),
        ];
        for (lifetime, before, jitter, wait) in cases {
            let plan = spread_refresh_at(at(0), at(lifetime), before, min, jitter);
            assert_eq!(plan.refresh_at, at(wait), "{lifetime} {before:?} {jitter}");
            assert_eq!(
                plan.clamped,
                refresh_at(at(0), at(lifetime), before, min, 0.0).clamped
            );
        }
    }

    #[test]
    fn the_floor_counts_from_the_precise_issue_time() {
        let issued = at(0) + SignedDuration::from_millis(900);
        let plan = refresh_at(issued, at(1), None, Duration::from_secs(2), 0.0);
        assert_eq!(plan.refresh_at, at(3), "2 s after 0.9 s, rounded up");
    }

    #[test]
    fn backoff_doubles_to_a_cap_and_honours_retry_after() {
        let t = |failures, holds| {
            backoff(FailureClass::Transient, failures, holds, None, 0.0).as_secs()
        };
        assert_eq!(
            (1..=8).map(|f| t(f, false)).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 60, 60]
        );
        assert_eq!(t(10, true), 300);
        assert_eq!(t(1000, true), 300);
        assert_eq!(
            backoff(FailureClass::Configuration, 1, false, None, 0.0),
            CONFIGURATION_RETRY
        );
        assert_eq!(
            backoff(
                FailureClass::Transient,
                1,
                false,
                Some(Duration::from_secs(30)),
                0.0
            )
            .as_secs(),
            30
        );
        let jittered = backoff(FailureClass::Transient, 7, false, None, 1.0);
        assert_eq!(jittered, Duration::from_secs(48));
    }
}
