//! A minimal OAuth token endpoint inside the bench, so that the IdP is never the bottleneck:
//! HTTP/1.1 with keep-alive (hyper), `POST /token`, client_credentials with a client assertion (the
//! operator) or a client secret (the ESO peer). It checks the form, decodes the assertion's
//! payload (no signature check), counts requests per client id and, for client ids under a
//! recorded prefix, when each request came.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::{
    Request, Response, StatusCode,
    header::{CACHE_CONTROL, CONTENT_TYPE},
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use idv_token_operator::oauth::CLIENT_ASSERTION_TYPE;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use crate::Task;

/// Token lifetime the endpoint answers with, unless a prefix asks for another.
const DEFAULT_LIFETIME_SECS: u64 = 3600;

#[derive(Default)]
pub struct TokenEndpoint {
    total: AtomicU64,
    rejected: AtomicU64,
    per_client: Mutex<HashMap<String, u64>>,
    /// Client-id prefix -> (token lifetime, request times): the refresh-spread phase.
    recorded: Mutex<Vec<(String, u64, Vec<Instant>)>>,
}

/// Per-client counts of the clients whose id starts with a prefix.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdpStats {
    pub requests: u64,
    pub clients: usize,
    pub max_per_client: u64,
}

impl TokenEndpoint {
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub fn stats(&self, prefix: &str) -> IdpStats {
        let map = self.per_client.lock().unwrap();
        let mut stats = IdpStats::default();
        for (_, count) in map.iter().filter(|(id, _)| id.starts_with(prefix)) {
            stats.requests += count;
            stats.clients += 1;
            stats.max_per_client = stats.max_per_client.max(*count);
        }
        stats
    }

    /// Answer clients under `prefix` with tokens of `lifetime`, and keep their request times.
    pub fn record(&self, prefix: &str, lifetime: Duration) {
        self.recorded
            .lock()
            .unwrap()
            .push((prefix.into(), lifetime.as_secs(), Vec::new()));
    }

    /// The request times kept for `prefix`, in order.
    pub fn timeline(&self, prefix: &str) -> Vec<Instant> {
        let recorded = self.recorded.lock().unwrap();
        let mut times = recorded
            .iter()
            .find(|(p, ..)| p == prefix)
            .map(|(.., times)| times.clone())
            .unwrap_or_default();
        times.sort();
        times
    }

    fn answer(
        &self,
        method: &str,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> (StatusCode, String) {
        if method != "POST" || path.split('?').next() != Some("/token") {
            return (StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into());
        }
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::BAD_REQUEST,
                r#"{"error":"unsupported_grant_type"}"#.into(),
            );
        }
        let Some(client_id) = client_of(&form, headers) else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::UNAUTHORIZED,
                r#"{"error":"invalid_client","error_description":"a client assertion or secret is required"}"#.into(),
            );
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        let lifetime = self.note(&client_id);
        *self
            .per_client
            .lock()
            .unwrap()
            .entry(client_id)
            .or_default() += 1;
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let answer = serde_json::json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": form.get("scope").map(String::as_str).unwrap_or_default(),
        });
        (StatusCode::OK, answer.to_string())
    }

    /// Keep the time of a recorded client's request; its token lifetime.
    fn note(&self, client_id: &str) -> u64 {
        let mut recorded = self.recorded.lock().unwrap();
        match recorded
            .iter_mut()
            .find(|(prefix, ..)| client_id.starts_with(prefix.as_str()))
        {
            Some((_, lifetime, times)) => {
                times.push(Instant::now());
                *lifetime
            }
            None => DEFAULT_LIFETIME_SECS,
        }
    }
}

/// Who is asking: the `iss` of a client assertion, or a client id sent with a client secret
/// (form fields or HTTP Basic).
fn client_of(form: &HashMap<String, String>, headers: &http::HeaderMap) -> Option<String> {
    if let Some(assertion) = form.get("client_assertion") {
        return (form.get("client_assertion_type").map(String::as_str)
            == Some(CLIENT_ASSERTION_TYPE))
        .then(|| issuer_of(assertion))
        .flatten();
    }
    if let (Some(id), Some(secret)) = (form.get("client_id"), form.get("client_secret")) {
        return (!secret.is_empty()).then(|| id.clone());
    }
    let basic = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    (!secret.is_empty()).then(|| id.to_string())
}

/// The `iss` claim of a JWT (payload decoded, signature not checked).
fn issuer_of(jwt: &str) -> Option<String> {
    let mut parts = jwt.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// Serve on a free loopback port until the task is dropped.
pub async fn start(state: Arc<TokenEndpoint>) -> (u16, Task) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the token endpoint");
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, state.clone()));
                }
                // Out of file descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    (port, Task(task))
}

/// Requests on one connection, kept alive until the client closes it.
async fn serve_connection(stream: TcpStream, state: Arc<TokenEndpoint>) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        async move {
            let (head, body) = request.into_parts();
            // The forms here are a few KiB; a larger body is answered as an empty one.
            let body = Limited::new(body, 1024 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let (status, answer) =
                state.answer(head.method.as_str(), head.uri.path(), &head.headers, &body);
            Response::builder()
                .status(status)
                .header(CONTENT_TYPE, "application/json")
                .header(CACHE_CONTROL, "no-store")
                .body(Full::new(Bytes::from(answer)))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
