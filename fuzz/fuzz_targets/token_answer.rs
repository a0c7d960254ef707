//! Bytes → an HTTP answer → `oauth::parse_token_answer`.
//!
//! Input layout (what the seeds in corpus/token_answer use):
//!   byte 0..2   status, big endian
//!   byte 2      Retry-After: 0 = none, n = n - 1 seconds
//!   byte 3      content type length L: 255 = no Content-Type header
//!   byte 4..4+L content type (lossy UTF-8)
//!   the rest    body
//!
//! Checks: no panic; a token only from a 2xx answer, non-empty, with a believable lifetime;
//! 429 and 5xx are never configuration errors; the Display and Debug of an error never contain
//! the values we "sent" (an assertion and a client secret), wherever the answer (body or
//! Content-Type) quotes them.
//! (`cargo fuzz run` with `-a`: debug assertions, so integer overflow panics too.)

#![no_main]

use idv_token_operator::oauth::{self, HttpAnswer};
use libfuzzer_sys::fuzz_target;

/// What the operator would pass as `sent`: a signed assertion, or a client secret.
const ASSERTION: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJmdXp6In0.c2lnbmF0dXJlLW9mLXRoZS1hc3NlcnRpb24";
const CLIENT_SECRET: &str = "s3cr3t-client-secret";

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let retry_after = data[2].checked_sub(1).map(u64::from);
    let (content_type, body) = match data[3] {
        255 => (None, &data[4..]),
        len => {
            let end = (4 + usize::from(len)).min(data.len());
            (
                Some(String::from_utf8_lossy(&data[4..end]).into_owned()),
                &data[end..],
            )
        }
    };
    let answer = HttpAnswer {
        status,
        content_type,
        retry_after,
        body: body.to_vec(),
    };
    match oauth::parse_token_answer(&answer, &[ASSERTION, CLIENT_SECRET]) {
        Ok(token) => {
            assert!((200..300).contains(&status), "a token from HTTP {status}");
            assert!(!token.access_token.expose().is_empty());
            assert!(
                (1..=366 * 24 * 3600).contains(&token.expires_in),
                "expires_in {}",
                token.expires_in
            );
            assert!(token.token_type.eq_ignore_ascii_case("bearer"));
            assert_eq!(
                format!("{:?}", token.access_token),
                "AccessToken([redacted])"
            );
        }
        Err(error) => {
            let (display, debug) = (error.to_string(), format!("{error:?}"));
            for sent in [ASSERTION, CLIENT_SECRET] {
                assert!(!display.contains(sent), "a sent value in {display:?}");
                assert!(!debug.contains(sent), "a sent value in {debug:?}");
            }
            if status == 429 || status >= 500 {
                assert!(
                    !error.is_configuration_error(),
                    "HTTP {status} taken for a configuration error: {error:?}"
                );
            }
            if let Some(seconds) = error.retry_after() {
                assert_eq!(Some(seconds), retry_after);
            }
        }
    }
});
