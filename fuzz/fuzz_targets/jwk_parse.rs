//! Bytes → `jwk::parse_signing_key`, once without a key id and once with a key id taken from
//! the input (a `kid` in it when it is JSON, so the pick-by-kid path is reached; else its first
//! bytes). Checks: no panic; a key picked by kid has that kid; an error never shows private
//! key material (`d`, `p`, `q`, `dp`, `dq`, `qi` values longer than 16 characters; real ones
//! are 43+) in its Display or Debug, nor does a parsed key's Debug, except where the input also
//! put that text into a member that is shown by design (the key's `kid` and `x5t`, the
//! requested kid); `public_jwk` keeps no private member; `thumbprint` never panics.

#![no_main]

use idv_token_operator::jwk;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];
/// Shown by design: in the parsed key. (`kty`, `crv` and `alg` are quoted in errors only when
/// they are registered values, see `jwk::shown`.)
const QUOTED_MEMBERS: [&str; 2] = ["kid", "x5t"];

/// The JWK objects in the input: the object itself and the objects of its `keys` array.
fn objects(value: &Value) -> Vec<&Map<String, Value>> {
    let mut found: Vec<&Map<String, Value>> = value.as_object().into_iter().collect();
    if let Some(keys) = value.get("keys").and_then(Value::as_array) {
        found.extend(keys.iter().filter_map(Value::as_object));
    }
    found
}

/// Private member values (17+ characters) that the input did not also put into a member
/// that is shown by design.
fn secrets(value: Option<&Value>, wanted: Option<&str>) -> Vec<String> {
    let Some(value) = value else {
        return Vec::new();
    };
    let objects = objects(value);
    let quoted: Vec<&str> = objects
        .iter()
        .flat_map(|o| {
            QUOTED_MEMBERS
                .iter()
                .filter_map(|m| o.get(*m).and_then(Value::as_str))
        })
        .chain(wanted)
        .collect();
    objects
        .iter()
        .flat_map(|o| {
            PRIVATE_MEMBERS
                .iter()
                .filter_map(|m| o.get(*m).and_then(Value::as_str))
        })
        .filter(|s| s.len() > 16 && !quoted.iter().any(|q| q.contains(*s)))
        .map(str::to_string)
        .collect()
}

fn check_shown(shown: &[String], value: Option<&Value>, wanted: Option<&str>) {
    for secret in secrets(value, wanted) {
        for text in shown {
            assert!(!text.contains(&secret), "private key material in {text:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let value: Option<Value> = serde_json::from_slice(data).ok();
    match jwk::parse_signing_key(data, None) {
        Ok(key) => check_shown(&[format!("{key:?}")], value.as_ref(), None),
        Err(error) => check_shown(
            &[error.to_string(), format!("{error:?}")],
            value.as_ref(),
            None,
        ),
    }

    let from_json = value.as_ref().and_then(|v| {
        let candidates = objects(v);
        let kids: Vec<&str> = candidates
            .iter()
            .filter_map(|o| o.get("kid").and_then(Value::as_str))
            .collect();
        (!kids.is_empty()).then(|| kids[data.len() % kids.len()].to_string())
    });
    let wanted = from_json
        .unwrap_or_else(|| String::from_utf8_lossy(&data[..data.len().min(8)]).into_owned());
    match jwk::parse_signing_key(data, Some(&wanted)) {
        Ok(key) => assert_eq!(
            key.kid.as_deref(),
            Some(wanted.as_str()),
            "picked a key with another kid"
        ),
        Err(error) => check_shown(
            &[error.to_string(), format!("{error:?}")],
            value.as_ref(),
            Some(&wanted),
        ),
    }

    if let Some(object) = value.as_ref().and_then(Value::as_object) {
        let _ = jwk::thumbprint(object);
        let public = jwk::public_jwk(object);
        assert!(
            PRIVATE_MEMBERS.iter().all(|m| !public.contains_key(*m)),
            "public_jwk kept a private member"
        );
    }
});
