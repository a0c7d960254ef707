//! The token the proxy sends: read from a mounted token Secret (one file per key), re-read
//! when the kubelet swaps the mount, never sent once expired.
//!
//! The kubelet writes a Secret volume atomically: the files live in a timestamped directory
//! (`..2026_11_27_18_37_44.123456789/`), `..data` is a symlink to it, and each key is a
//! symlink `authorization -> ..data/authorization`. An update writes a new timestamped
//! directory and renames a new `..data` over the old one. So the target of `..data` names the
//! version: one `readlink` per request tells whether the token changed, without inotify.

use std::{
    ffi::OsString,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use http::HeaderValue;
use jiff::Timestamp;

use crate::api::secret_keys::{AUTHORIZATION, EXPIRES_AT};

/// The kubelet's symlink to the current version of a Secret volume.
const DATA_LINK: &str = "..data";

/// A token from the directory: the `Authorization` value and when it expires.
pub struct Token {
    /// Marked sensitive: hyper's and http's Debug print `Sensitive` instead of the value.
    authorization: HeaderValue,
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("authorization", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why there is no token to send. Messages name files and times, never file contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    Missing {
        file: &'static str,
    },
    Unreadable {
        file: &'static str,
        error: String,
    },
    Invalid {
        file: &'static str,
        why: &'static str,
    },
    Expired {
        at: Timestamp,
    },
}

impl TokenProblem {
    /// A fixed word for the JSON `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            TokenProblem::Missing { .. } => "token_missing",
            TokenProblem::Unreadable { .. } => "token_unreadable",
            TokenProblem::Invalid { .. } => "token_invalid",
            TokenProblem::Expired { .. } => "token_expired",
        }
    }

    pub fn message(&self, dir: &Path, now: Timestamp) -> String {
        let dir = dir.display();
        match self {
            TokenProblem::Missing { file } => format!(
                "no token sent: {dir}/{file} does not exist (mount the IdvClient's token Secret \
                 there, with the keys {AUTHORIZATION} and {EXPIRES_AT})"
            ),
            TokenProblem::Unreadable { file, error } => {
                format!("no token sent: cannot read {dir}/{file}: {error}")
            }
            TokenProblem::Invalid { file, why } => {
                format!("no token sent: {dir}/{file} {why}")
            }
            TokenProblem::Expired { at } => format!(
                "no token sent: the token in {dir} expired at {at} ({} s ago) and was not \
                 replaced; is the operator refreshing it? (kubectl describe idvclient)",
                (now - *at).get_seconds()
            ),
        }
    }
}

impl Token {
    /// The token from the bytes of the `authorization` and `expires_at` files. A trailing
    /// newline (a Secret made with `--from-file` of an edited file) is ignored.
    pub fn parse(authorization: &[u8], expires_at: &[u8]) -> Result<Token, TokenProblem> {
        let invalid = |file, why| TokenProblem::Invalid { file, why };
        let authorization = trim_end(authorization);
        if authorization.is_empty() {
            return Err(invalid(AUTHORIZATION, "is empty"));
        }
        // `<scheme> <credentials>`, visible ASCII: what goes into a header, nothing that could
        // end it (CR, LF) or smuggle another one in.
        let well_formed = authorization.iter().all(|b| matches!(b, b' '..=b'~'))
            && matches!(authorization.iter().position(|&b| b == b' '), Some(space) if space > 0 && space + 1 < authorization.len());
        if !well_formed {
            return Err(invalid(
                AUTHORIZATION,
                "is not an Authorization header value (\"Bearer <token>\")",
            ));
        }
        let mut authorization = HeaderValue::from_bytes(authorization)
            .map_err(|_| invalid(AUTHORIZATION, "is not a valid header value"))?;
        authorization.set_sensitive(true);
        let expires_at = std::str::from_utf8(trim_end(expires_at))
            .ok()
            .and_then(|text| text.parse::<Timestamp>().ok())
            .ok_or(invalid(EXPIRES_AT, "is not an RFC 3339 time"))?;
        Ok(Token {
            authorization,
            expires_at,
        })
    }

    /// The header value, if the token has not expired at `now`.
    pub fn usable(&self, now: Timestamp) -> Result<&HeaderValue, TokenProblem> {
        if now < self.expires_at {
            Ok(&self.authorization)
        } else {
            Err(TokenProblem::Expired {
                at: self.expires_at,
            })
        }
    }
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// What identifies the directory's content: the `..data` target of a kubelet mount, else
/// the files' identity and modification times (a plain directory, e.g. outside Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Version {
    Kubelet(OsString),
    Files([Option<FileStamp>; 2]),
}

/// Device, inode, modification time (s, ns) and length of a file.
type FileStamp = (u64, u64, i64, i64, u64);

pub type Loaded = Result<Arc<Token>, TokenProblem>;

/// A token directory, read again whenever its version changes.
pub struct TokenDir {
    dir: PathBuf,
    cached: Mutex<Option<(Version, Loaded)>>,
}

impl TokenDir {
    pub fn new(dir: PathBuf) -> TokenDir {
        TokenDir {
            dir,
            cached: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The token in the directory now (not checked for expiry: see `Token::usable`). One
    /// `readlink` (kubelet mount) or two `stat`s (plain files) when nothing changed.
    pub fn current(&self) -> Loaded {
        let version = self.version();
        if let Some(version) = &version
            && let Some((cached, loaded)) = &*self.cached.lock().expect("lock")
            && cached == version
        {
            return loaded.clone();
        }
        let (version, loaded) = match version {
            Some(Version::Kubelet(target)) => self.read_kubelet(target),
            Some(files @ Version::Files(_)) => (Some(files), self.read_from(&self.dir)),
            None => (None, self.read_from(&self.dir)),
        };
        let mut cached = self.cached.lock().expect("lock");
        let changed =
            cached.as_ref().map(|(_, before)| describe(before)) != Some(describe(&loaded));
        if changed {
            match &loaded {
                Ok(token) => {
                    tracing::info!(dir = %self.dir.display(), expires_at = %token.expires_at, "token loaded")
                }
                Err(problem) => {
                    tracing::warn!(dir = %self.dir.display(), problem = problem.code(), "no usable token: {}", problem.message(&self.dir, Timestamp::now()))
                }
            }
        }
        // Without a version (an unreadable `..data`), nothing is cached: the next request looks again.
        *cached = version.map(|v| (v, loaded.clone()));
        loaded
    }

    fn version(&self) -> Option<Version> {
        match std::fs::read_link(self.dir.join(DATA_LINK)) {
            Ok(target) => Some(Version::Kubelet(target.into_os_string())),
            // No `..data` (or not a symlink): a plain directory.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
                ) =>
            {
                let stamp = |file: &str| {
                    std::fs::metadata(self.dir.join(file))
                        .ok()
                        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
                };
                Some(Version::Files([stamp(AUTHORIZATION), stamp(EXPIRES_AT)]))
            }
            Err(_) => None,
        }
    }

    /// Read through the `..data` target itself, so both files come from one version. The
    /// kubelet deletes the old directory right after the swap: if it vanished under us, take
    /// the new target (a few times at most).
    fn read_kubelet(&self, mut target: OsString) -> (Option<Version>, Loaded) {
        for _ in 0..3 {
            let loaded = self.read_from(&self.dir.join(&target));
            let vanished = matches!(loaded, Err(TokenProblem::Missing { .. }));
            match std::fs::read_link(self.dir.join(DATA_LINK)) {
                Ok(now) if vanished && now.as_os_str() != target => target = now.into_os_string(),
                _ => return (Some(Version::Kubelet(target)), loaded),
            }
        }
        (None, self.read_from(&self.dir.join(&target)))
    }

    fn read_from(&self, dir: &Path) -> Loaded {
        let read = |file: &'static str| {
            std::fs::read(dir.join(file)).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TokenProblem::Missing { file },
                _ => TokenProblem::Unreadable {
                    file,
                    error: e.to_string(),
                },
            })
        };
        let authorization = read(AUTHORIZATION)?;
        let expires_at = read(EXPIRES_AT)?;
        Token::parse(&authorization, &expires_at).map(Arc::new)
    }
}

/// What a change of the loaded token looks like in the log (never the token).
fn describe(loaded: &Loaded) -> Result<Timestamp, TokenProblem> {
    loaded.as_ref().map(|t| t.expires_at).map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn parses_what_the_operator_writes() {
        let token = Token::parse(b"Bearer abc.def-ghi", b"2026-11-27T18:57:47Z\n").unwrap();
        assert_eq!(token.expires_at, at("2026-11-27T18:57:47Z"));
        let value = token.usable(at("2026-11-27T18:57:46Z")).unwrap();
        assert_eq!(value.as_bytes(), b"Bearer abc.def-ghi");
        assert!(value.is_sensitive());
        assert!(!format!("{token:?}").contains("abc"));
    }

    #[test]
    fn refuses_what_cannot_be_a_header_or_a_time() {
        let expires = b"2026-11-27T18:57:47Z";
        for (authorization, why) in [
            (&b""[..], "is empty"),
            (b"\n", "is empty"),
            (b"Bearer", "is not an Authorization header value"),
            (b"Bearer ", "is not an Authorization header value"),
            (b" abc", "is not an Authorization header value"),
            (
                b"Bearer a\r\nX-Evil: 1",
                "is not an Authorization header value",
            ),
            (b"Bearer \xff", "is not an Authorization header value"),
        ] {
            let problem = Token::parse(authorization, expires).unwrap_err();
            let TokenProblem::Invalid { file, why: said } = problem else {
                panic!("{problem:?}")
            };
            assert_eq!(file, AUTHORIZATION);
            assert!(said.starts_with(why), "{said}");
        }
        for expires_at in [&b""[..], b"tomorrow", b"1800000000"] {
            assert_eq!(
                Token::parse(b"Bearer t", expires_at).unwrap_err(),
                TokenProblem::Invalid {
                    file: EXPIRES_AT,
                    why: "is not an RFC 3339 time"
                }
            );
        }
    }

    #[test]
    fn an_expired_token_is_not_usable() {
        let token = Token::parse(b"Bearer t", b"2026-11-27T18:57:47Z").unwrap();
        let expired = token.usable(at("2026-11-27T18:57:47Z")).unwrap_err();
        assert_eq!(
            expired,
            TokenProblem::Expired {
                at: at("2026-11-27T18:57:47Z")
            }
        );
        let message = expired.message(Path::new("/var/run/idv"), at("2026-11-27T18:58:47Z"));
        assert!(
            message.contains("expired at 2026-11-27T18:57:47Z (60 s ago)"),
            "{message}"
        );
    }
}
