//! Integration tests of the command line (`keygen` and `token`): the real binary against the
//! test IdP (oidc-provider, tests/idp). No control plane. One IdP per run; each test uses its
//! own IdP clients and temporary folder, and every process has a bounded run time.

mod support;

use std::{
    ffi::OsStr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Map, Value, json};
use support::{Idp, IdpTls};

struct Env {
    rt: tokio::runtime::Runtime,
    idp: Idp,
    /// An HTTPS IdP (tests/support: `IdpTls`), and its certificates.
    https: Idp,
    tls: IdpTls,
}

const BIN: &str = env!("CARGO_BIN_EXE_idv-token-operator");
/// Upper bound of one CLI process; failures below assert much tighter bounds.
const PROCESS_LIMIT: Duration = Duration::from_secs(30);
/// A failing `token` command must end within this (no retries, no hanging).
const FAIL_FAST: Duration = Duration::from_secs(5);
const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Run the binary with these arguments (stdin closed), killing it if it outlives PROCESS_LIMIT.
async fn cli<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    cli_with_env(args, &[]).await
}

/// `cli` with these environment variables; the trust-store ones (`SSL_CERT_FILE`,
/// `SSL_CERT_DIR`) only when given.
async fn cli_with_env<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let started = Instant::now();
    let child = tokio::process::Command::new(BIN)
        .args(&args)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    let output = tokio::time::timeout(PROCESS_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} still ran after {PROCESS_LIMIT:?}"))
        .expect("wait for the binary");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
        elapsed: started.elapsed(),
    }
}

fn path_arg(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_string()
}

/// A key pair made by `keygen`.
struct Key {
    path: PathBuf,
    private: Map<String, Value>,
    public: Value,
}

impl Key {
    fn kid(&self) -> &str {
        self.private["kid"].as_str().unwrap()
    }
    /// The private members' values: what must never show up in output.
    fn secrets(&self) -> Vec<String> {
        PRIVATE_MEMBERS
            .iter()
            .filter_map(|m| self.private.get(*m)?.as_str().map(str::to_string))
            .collect()
    }
}

/// `keygen --alg ALG` (RSA at 2048 bits to keep the tests fast) into `dir/name`.
async fn keygen(dir: &Path, name: &str, alg: &str) -> Key {
    let path = dir.join(name);
    let run = cli([
        "keygen",
        "--alg",
        alg,
        "--bits",
        "2048",
        "--private",
        &path_arg(&path),
    ])
    .await;
    assert_eq!(run.code, Some(0), "keygen failed: {run}");
    let private: Map<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let public: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the public JWK ({e}): {run}"));
    Key {
        path,
        private,
        public,
    }
}

fn write_json(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec(value).unwrap()).unwrap();
    path
}

fn b64_len(value: &Value) -> usize {
    URL_SAFE_NO_PAD
        .decode(value.as_str().expect("a base64url string"))
        .expect("base64url")
        .len()
}

/// RFC 7638 SHA-256 thumbprint, computed here independently of the code under test.
fn rfc7638(jwk: &Value) -> String {
    let s = |k: &str| jwk[k].as_str().unwrap_or_else(|| panic!("JWK lacks {k}"));
    let canonical = match s("kty") {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e"), s("n")),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv"),
            s("x"),
            s("y")
        ),
        other => panic!("unexpected kty {other}"),
    };
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// A public JWK as the portal should get it: kid = thumbprint, use=sig, alg, no private members.
fn assert_public_jwk(public: &Value, alg: &str) {
    let object = public.as_object().expect("a JSON object");
    assert_eq!(public["alg"], alg, "{public}");
    assert_eq!(public["use"], "sig", "{public}");
    assert_eq!(
        public["kid"].as_str(),
        Some(rfc7638(public).as_str()),
        "kid is not the RFC 7638 thumbprint: {public}"
    );
    for member in PRIVATE_MEMBERS {
        assert!(
            !object.contains_key(member),
            "the public JWK holds the private member {member}"
        );
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A failed command: non-zero exit, nothing on stdout, one `error: ...` line on stderr that
/// holds every expected fragment and none of the secrets, within `within`.
fn assert_failed(run: &Run, within: Duration, expected: &[&str], secrets: &[String]) {
    assert!(
        matches!(run.code, Some(c) if c != 0),
        "expected a non-zero exit: {run}"
    );
    assert!(run.stdout.is_empty(), "stdout is not empty: {run}");
    assert!(
        run.elapsed < within,
        "took {:?}, more than {within:?}: {run}",
        run.elapsed
    );
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "stderr is not one message: {run}"
    );
    assert!(run.stderr.starts_with("error: "), "{run}");
    for fragment in expected {
        assert!(
            run.stderr.contains(fragment),
            "stderr lacks {fragment:?}: {run}"
        );
    }
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !run.stderr.contains(secret.as_str()),
            "stderr holds a secret value: {run}"
        );
    }
    assert!(!run.stderr.contains("panicked"), "{run}");
}

fn unique_client(label: &str) -> String {
    format!("cli-{label}-{}", uuid::Uuid::new_v4())
}

/// The last assertion the IdP received from this client.
async fn last_assertion(env: &Env, client_id: &str) -> Value {
    let mut all = env.idp.assertions(client_id).await;
    all.pop()
        .unwrap_or_else(|| panic!("the IdP recorded no assertion for {client_id}"))
}

/// `token` with the usual arguments plus `extra`.
async fn run_token(client_id: &str, key: &Path, server: &[&str], extra: &[&str]) -> Run {
    let mut args = vec!["token", "--client-id", client_id];
    let key = path_arg(key);
    args.extend(["--key", key.as_str()]);
    args.extend_from_slice(server);
    args.extend_from_slice(extra);
    cli(args).await
}

/// A successful `--output token` run: exactly the token and a newline on stdout, nothing on stderr.
fn printed_token(run: &Run) -> String {
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stderr.is_empty(), "{run}");
    assert!(
        run.stdout.ends_with('\n') && run.stdout.lines().count() == 1,
        "not one line: {run}"
    );
    let token = run.stdout.trim_end_matches('\n').to_string();
    assert!(
        !token.is_empty() && !token.contains(char::is_whitespace),
        "{run}"
    );
    token
}

async fn assert_active(env: &Env, token: &str, client_id: &str) -> Value {
    let introspection = env.idp.introspect(token).await;
    assert_eq!(introspection["active"], true, "{introspection}");
    assert_eq!(introspection["client_id"], client_id, "{introspection}");
    introspection
}

/// Claims every assertion must carry: iss = sub = client id, a jti, at most 5 minutes.
fn assert_assertion_claims(recorded: &Value, client_id: &str, aud: &str) {
    let payload = &recorded["payload"];
    assert_eq!(payload["iss"], client_id, "{recorded}");
    assert_eq!(payload["sub"], client_id, "{recorded}");
    assert_eq!(payload["aud"], aud, "{recorded}");
    let (iat, exp) = (
        payload["iat"].as_i64().unwrap(),
        payload["exp"].as_i64().unwrap(),
    );
    assert!(
        exp > iat && exp - iat <= 300,
        "exp - iat = {}: {recorded}",
        exp - iat
    );
    assert!(
        uuid::Uuid::parse_str(payload["jti"].as_str().unwrap()).is_ok(),
        "{recorded}"
    );
    assert_eq!(recorded["header"]["typ"], "JWT", "{recorded}");
}

// --------------------------------------------------------------------------------------------
// keygen

async fn keygen_defaults_to_rsa_4096_with_a_0600_private_file_and_the_public_jwk_on_stdout(
    _env: &Env,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwk.json");
    let run = cli(["keygen", "--private", &path_arg(&path)]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stderr.is_empty(), "{run}");
    assert_eq!(mode(&path), 0o600, "the private JWK is readable by others");

    let public: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {run}"));
    assert_public_jwk(&public, "RS256");
    assert_eq!(public["kty"], "RSA");
    assert_eq!(public["e"], "AQAB");
    assert_eq!(
        b64_len(&public["n"]),
        512,
        "default RSA size is not 4096 bits"
    );
    let public_members: Vec<&String> = public.as_object().unwrap().keys().collect();
    assert_eq!(public_members, ["alg", "e", "kid", "kty", "n", "use"]);

    let private: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for member in PRIVATE_MEMBERS {
        assert!(
            private[member].is_string(),
            "the private JWK lacks {member}"
        );
    }
    for member in ["kty", "kid", "use", "alg", "n", "e"] {
        assert_eq!(
            private[member], public[member],
            "private and public JWK differ in {member}"
        );
    }
    for secret in PRIVATE_MEMBERS
        .iter()
        .map(|m| private[*m].as_str().unwrap())
    {
        assert!(
            !run.stdout.contains(secret),
            "stdout holds private key material"
        );
    }
}

async fn keygen_refuses_to_overwrite_an_existing_file(_env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("jwk.json");
    std::fs::write(&existing, "keep me\n").unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o640)).unwrap();
    let run = cli([
        "keygen",
        "--alg",
        "ES256",
        "--private",
        &path_arg(&existing),
    ])
    .await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["already exists", "not overwriting", &path_arg(&existing)],
        &[],
    );
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me\n");
    assert_eq!(mode(&existing), 0o640);

    // An existing --public file is not overwritten either.
    let public = dir.path().join("public.json");
    std::fs::write(&public, "portal copy\n").unwrap();
    let run = cli([
        "keygen",
        "--alg",
        "ES256",
        "--private",
        &path_arg(&dir.path().join("new.json")),
        "--public",
        &path_arg(&public),
    ])
    .await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["already exists", &path_arg(&public)],
        &[],
    );
    assert_eq!(std::fs::read_to_string(&public).unwrap(), "portal copy\n");
}

/// Known bug (see the report / src/main.rs `keygen`): the private file is written before the
/// public one is created, so a refused `--public` leaves a private key behind whose public half
/// was never shown, and rerunning the same command then fails on the private file.
async fn keygen_writes_nothing_when_the_public_file_exists(_env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = (dir.path().join("new.json"), dir.path().join("public.json"));
    std::fs::write(&public, "portal copy\n").unwrap();
    let run = cli([
        "keygen",
        "--alg",
        "ES256",
        "--private",
        &path_arg(&private),
        "--public",
        &path_arg(&public),
    ])
    .await;
    assert_failed(&run, FAIL_FAST, &["already exists"], &[]);
    assert!(
        !private.exists(),
        "a refused keygen left a private key file behind"
    );
}

async fn keygen_public_flag_writes_the_public_jwk_to_a_file_and_nothing_to_stdout(_env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = (dir.path().join("jwk.json"), dir.path().join("public.json"));
    let run = cli([
        "keygen",
        "--alg",
        "ES256",
        "--private",
        &path_arg(&private),
        "--public",
        &path_arg(&public),
    ])
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.is_empty(), "{run}");
    assert!(run.stderr.is_empty(), "{run}");
    assert_eq!(mode(&private), 0o600);
    assert_eq!(mode(&public) & 0o600, 0o600);
    let jwk: Value = serde_json::from_str(&std::fs::read_to_string(&public).unwrap()).unwrap();
    assert_public_jwk(&jwk, "ES256");
    let private: Value = serde_json::from_str(&std::fs::read_to_string(&private).unwrap()).unwrap();
    assert_eq!(private["kid"], jwk["kid"]);
}

async fn keygen_alg_chooses_the_key_type(_env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    for (alg, kty, curve, size) in [
        ("ES256", "EC", Some("P-256"), 32),
        ("ES384", "EC", Some("P-384"), 48),
        ("PS256", "RSA", None, 256),
        ("RS256", "RSA", None, 256),
    ] {
        let key = keygen(dir.path(), &format!("{alg}.json"), alg).await;
        assert_public_jwk(&key.public, alg);
        assert_eq!(key.public["kty"], kty, "{alg}");
        assert_eq!(key.private["alg"], alg);
        match curve {
            Some(crv) => {
                assert_eq!(key.public["crv"], crv, "{alg}");
                assert_eq!(b64_len(&key.public["x"]), size, "{alg}");
                assert_eq!(b64_len(&key.public["y"]), size, "{alg}");
                assert_eq!(b64_len(&key.private["d"]), size, "{alg}");
            }
            None => assert_eq!(b64_len(&key.public["n"]), size, "--bits 2048 for {alg}"),
        }
    }
}

/// `keygen --secret-name` writes the private key as a labelled Secret manifest, ready for
/// `kubectl apply -f`; the key in it is the one the public JWK on stdout belongs to.
async fn keygen_secret_manifest_is_labelled_and_its_key_obtains_a_token(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("gipod-jwk.yaml");
    let args = [
        "keygen",
        "--alg",
        "ES256",
        "--secret-name",
        "gipod-jwk",
        "--namespace",
        "roadworks",
        "--private",
        &path_arg(&manifest),
    ];
    let run = cli(args).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(mode(&manifest), 0o600, "the manifest is readable by others");
    let public: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not the public JWK ({e}): {run}"));
    assert_public_jwk(&public, "ES256");

    let text = std::fs::read_to_string(&manifest).unwrap();
    let secret: k8s_openapi::api::core::v1::Secret = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("not a Secret manifest ({e}):\n{text}"));
    let raw: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(raw["apiVersion"].as_str(), Some("v1"), "{text}");
    assert_eq!(raw["kind"].as_str(), Some("Secret"), "{text}");
    assert_eq!(secret.metadata.name.as_deref(), Some("gipod-jwk"));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("roadworks"));
    assert_eq!(
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(idv_token_operator::api::CREDENTIAL_LABEL))
            .map(String::as_str),
        Some("true"),
        "{text}"
    );
    let jwk_json = &secret.string_data.as_ref().expect("stringData")["jwk.json"];
    let private: Map<String, Value> = serde_json::from_str(jwk_json).unwrap();
    assert_eq!(private["kid"], public["kid"]);
    for secret in PRIVATE_MEMBERS
        .iter()
        .filter_map(|m| private.get(*m)?.as_str())
    {
        assert!(
            !run.stdout.contains(secret),
            "stdout holds private key material"
        );
    }

    // The key in the manifest round-trips through `token`.
    let key_file = dir.path().join("jwk.json");
    std::fs::write(&key_file, jwk_json).unwrap();
    let client_id = env.idp.register(std::slice::from_ref(&public), None).await;
    let run = run_token(
        &client_id,
        &key_file,
        &["--token-endpoint", &env.idp.token_endpoint],
        &[],
    )
    .await;
    assert_active(env, &printed_token(&run), &client_id).await;

    // Never overwritten; a bad name or a namespace without a name is refused before any file.
    std::fs::write(&manifest, "keep me\n").unwrap();
    assert_failed(&cli(args).await, FAIL_FAST, &["already exists"], &[]);
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "keep me\n");
    let other = dir.path().join("other.yaml");
    for bad in [
        ["--secret-name", "Gipod_JWK", "--namespace", "roadworks"],
        ["--secret-name", "gipod-jwk", "--namespace", "road.works"],
    ] {
        let run = cli(["keygen", "--alg", "ES256", "--private", &path_arg(&other)]
            .into_iter()
            .chain(bad))
        .await;
        assert_failed(&run, FAIL_FAST, &["not a valid"], &[]);
    }
    let run = cli([
        "keygen",
        "--alg",
        "ES256",
        "--namespace",
        "roadworks",
        "--private",
        &path_arg(&other),
    ])
    .await;
    // clap's own usage error (several lines).
    assert!(
        matches!(run.code, Some(c) if c != 0) && run.stderr.contains("--secret-name"),
        "{run}"
    );
    assert!(!other.exists(), "a refused keygen wrote a file");
}

// --------------------------------------------------------------------------------------------
// token: success paths

async fn keygen_key_obtains_a_token_in_issuer_mode(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "RS256").await;
    let client_id = env
        .idp
        .register(std::slice::from_ref(&key.public), None)
        .await;
    let run = run_token(
        &client_id,
        &key.path,
        &["--issuer", &env.idp.issuer],
        &["--scope", "gipod_read"],
    )
    .await;
    let token = printed_token(&run);
    let introspection = assert_active(env, &token, &client_id).await;
    assert_eq!(introspection["scope"], "gipod_read", "{introspection}");

    let recorded = last_assertion(env, &client_id).await;
    assert_assertion_claims(&recorded, &client_id, &env.idp.issuer);
    assert_eq!(recorded["header"]["alg"], "RS256", "{recorded}");
    assert_eq!(recorded["header"]["kid"], key.kid(), "{recorded}");
    assert_eq!(
        env.idp.stats(&client_id).await,
        (1, 1),
        "one request, one token"
    );
}

async fn token_endpoint_mode_uses_the_endpoint_as_audience(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let client_id = env
        .idp
        .register(std::slice::from_ref(&key.public), None)
        .await;
    let run = run_token(
        &client_id,
        &key.path,
        &["--token-endpoint", &env.idp.token_endpoint],
        &["--scope", "gipod_read"],
    )
    .await;
    let token = printed_token(&run);
    assert_active(env, &token, &client_id).await;
    assert_assertion_claims(
        &last_assertion(env, &client_id).await,
        &client_id,
        &env.idp.token_endpoint,
    );
}

async fn assertion_audience_overrides_aud(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let client_id = env
        .idp
        .register(std::slice::from_ref(&key.public), None)
        .await;
    let endpoint = ["--token-endpoint", env.idp.token_endpoint.as_str()];

    // Token-endpoint mode with the issuer as aud: accepted, and the issuer is what was sent.
    let run = run_token(
        &client_id,
        &key.path,
        &endpoint,
        &["--assertion-audience", &env.idp.issuer],
    )
    .await;
    let token = printed_token(&run);
    assert_active(env, &token, &client_id).await;
    assert_assertion_claims(
        &last_assertion(env, &client_id).await,
        &client_id,
        &env.idp.issuer,
    );

    // A wrong aud is sent as given, and the IdP refuses it.
    let run = run_token(
        &client_id,
        &key.path,
        &endpoint,
        &["--assertion-audience", "https://wrong.example/aud"],
    )
    .await;
    assert_failed(&run, FAIL_FAST, &["invalid_client"], &key.secrets());
    assert_eq!(
        last_assertion(env, &client_id).await["payload"]["aud"],
        "https://wrong.example/aud"
    );
}

async fn json_output_has_token_type_lifetime_and_expiry(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let client_id = env
        .idp
        .register(std::slice::from_ref(&key.public), Some(1234))
        .await;
    let before = jiff::Timestamp::now();
    let run = run_token(
        &client_id,
        &key.path,
        &["--issuer", &env.idp.issuer],
        &[
            "--scope",
            "gipod_read",
            "--scope",
            "api_read",
            "--output",
            "json",
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stderr.is_empty(), "{run}");
    assert_eq!(run.stdout.lines().count(), 1, "{run}");
    let answer: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"));
    let token = answer["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    assert_eq!(answer["token_type"], "Bearer", "{answer}");
    assert_eq!(answer["expires_in"], 1234, "{answer}");
    let mut scopes: Vec<&str> = answer["scope"]
        .as_str()
        .expect("scope")
        .split(' ')
        .collect();
    scopes.sort();
    assert_eq!(scopes, ["api_read", "gipod_read"]);
    let expires_at: jiff::Timestamp = answer["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .unwrap_or_else(|e| panic!("expires_at is not RFC 3339 ({e}): {answer}"));
    let lifetime = expires_at.as_second() - before.as_second();
    assert!(
        (1233..=1240).contains(&lifetime),
        "expires_at is {lifetime}s after the request: {answer}"
    );
    assert_active(env, &token, &client_id).await;
}

async fn ec_and_ps_keys_obtain_tokens(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    for alg in ["ES256", "ES384", "PS256"] {
        let key = keygen(dir.path(), &format!("{alg}.json"), alg).await;
        let client_id = env
            .idp
            .register(std::slice::from_ref(&key.public), None)
            .await;
        let run = run_token(
            &client_id,
            &key.path,
            &["--issuer", &env.idp.issuer],
            &["--scope", "gipod_read"],
        )
        .await;
        let token = printed_token(&run);
        assert_active(env, &token, &client_id).await;
        let recorded = last_assertion(env, &client_id).await;
        assert_eq!(recorded["header"]["alg"], alg, "{recorded}");
        assert_eq!(recorded["header"]["kid"], key.kid(), "{recorded}");
        assert_assertion_claims(&recorded, &client_id, &env.idp.issuer);
    }
}

async fn jwk_set_with_key_id_signs_with_the_chosen_key(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let old = keygen(dir.path(), "old.json", "RS256").await;
    let new = keygen(dir.path(), "new.json", "ES256").await;
    let set = write_json(
        dir.path(),
        "set.json",
        &json!({"keys": [old.private, new.private]}),
    );
    // Only the second key is registered: a token proves it signed.
    let client_id = env
        .idp
        .register(std::slice::from_ref(&new.public), None)
        .await;
    let mut secrets = old.secrets();
    secrets.extend(new.secrets());

    let run = run_token(
        &client_id,
        &set,
        &["--issuer", &env.idp.issuer],
        &["--key-id", new.kid(), "--scope", "gipod_read"],
    )
    .await;
    let token = printed_token(&run);
    assert_active(env, &token, &client_id).await;
    let recorded = last_assertion(env, &client_id).await;
    assert_eq!(recorded["header"]["kid"], new.kid(), "{recorded}");
    assert_eq!(recorded["header"]["alg"], "ES256", "{recorded}");

    // Without --key-id the first private key signs; it is not registered.
    let run = run_token(&client_id, &set, &["--issuer", &env.idp.issuer], &[]).await;
    assert_failed(&run, FAIL_FAST, &["invalid_client", old.kid()], &secrets);
    assert_eq!(
        last_assertion(env, &client_id).await["header"]["kid"],
        old.kid()
    );

    let run = run_token(
        &client_id,
        &set,
        &["--issuer", &env.idp.issuer],
        &["--key-id", "nope"],
    )
    .await;
    assert_failed(&run, FAIL_FAST, &[r#"no key with kid "nope""#], &secrets);
}

async fn expires_in_as_a_string_is_accepted(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let client_id = unique_client("string-expiry");
    env.idp
        .fault(json!({
            "client_id": client_id, "mode": "respond", "status": 200, "content_type": "application/json",
            "body": r#"{"access_token":"abc-123-xyz","token_type":"Bearer","expires_in":"14556"}"#, "times": 1,
        }))
        .await;
    let run = run_token(
        &client_id,
        &key.path,
        &["--token-endpoint", &env.idp.token_endpoint],
        &["--output", "json"],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    let answer: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run}"));
    assert_eq!(answer["access_token"], "abc-123-xyz");
    assert_eq!(answer["expires_in"], 14556, "{answer}");
    assert_eq!(answer["token_type"], "Bearer");
    assert!(
        answer["expires_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "{answer}"
    );
}

async fn client_secret_file_obtains_a_token(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let (client_id, secret) = env.idp.register_with_secret().await;
    let file = dir.path().join("client-secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let file = path_arg(&file);
    let run = cli([
        "token",
        "--client-id",
        &client_id,
        "--client-secret-file",
        &file,
        "--issuer",
        &env.idp.issuer,
        "--scope",
        "gipod_read",
    ])
    .await;
    let token = printed_token(&run);
    assert_active(env, &token, &client_id).await;

    let wrong = dir.path().join("wrong-secret");
    let wrong_secret = "not-the-secret-0123456789";
    std::fs::write(&wrong, wrong_secret).unwrap();
    let run = cli([
        "token",
        "--client-id",
        &client_id,
        "--client-secret-file",
        &path_arg(&wrong),
        "--issuer",
        &env.idp.issuer,
    ])
    .await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["invalid_client", "client secret", &client_id],
        &[secret.clone(), wrong_secret.to_string()],
    );

    // Exactly one of --key and --client-secret-file.
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let run = cli([
        "token",
        "--client-id",
        &client_id,
        "--key",
        &path_arg(&key.path),
        "--client-secret-file",
        &file,
        "--issuer",
        &env.idp.issuer,
    ])
    .await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stdout.is_empty() && run.stderr.contains("cannot be used with"),
        "{run}"
    );
    let run = cli([
        "token",
        "--client-id",
        &client_id,
        "--issuer",
        &env.idp.issuer,
    ])
    .await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stdout.is_empty() && run.stderr.contains("--key"),
        "{run}"
    );
}

// --------------------------------------------------------------------------------------------
// token: failures

async fn unregistered_key_names_client_kid_and_registration(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let registered = keygen(dir.path(), "registered.json", "ES256").await;
    let other = keygen(dir.path(), "other.json", "RS256").await;
    let client_id = env
        .idp
        .register(std::slice::from_ref(&registered.public), None)
        .await;
    let run = run_token(
        &client_id,
        &other.path,
        &["--issuer", &env.idp.issuer],
        &["--scope", "gipod_read"],
    )
    .await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["invalid_client", &client_id, other.kid(), "registered"],
        &other.secrets(),
    );
}

/// Put a one-shot fault on a fresh client id, run `token` in token-endpoint mode, and check
/// the failure.
async fn fault_case(
    env: &Env,
    label: &str,
    fault: Value,
    extra: &[&str],
    within: Duration,
    expected: &[&str],
    secrets: &[&str],
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let client_id = unique_client(label);
    let mut fault = fault;
    fault["client_id"] = json!(client_id);
    env.idp.fault(fault).await;
    let run = run_token(
        &client_id,
        &key.path,
        &["--token-endpoint", &env.idp.token_endpoint],
        extra,
    )
    .await;
    let mut all = key.secrets();
    all.extend(secrets.iter().map(|s| s.to_string()));
    assert_failed(&run, within, expected, &all);
    assert_eq!(
        env.idp.stats(&client_id).await,
        (1, 0),
        "exactly one request, no retries"
    );
    run
}

async fn html_502_says_unavailable_and_html(env: &Env) {
    let fault = json!({"mode": "respond", "status": 502, "content_type": "text/html",
        "body": "<html><body><h1>502 Bad Gateway</h1></body></html>", "times": 1});
    fault_case(
        env,
        "html-502",
        fault,
        &[],
        FAIL_FAST,
        &["unavailable", "HTTP 502", "text/html"],
        &[],
    )
    .await;
}

async fn html_with_200_says_not_json(env: &Env) {
    let fault = json!({"mode": "respond", "status": 200, "content_type": "text/html",
        "body": "<html><body>Please log in</body></html>", "times": 1});
    fault_case(
        env,
        "html-200",
        fault,
        &[],
        FAIL_FAST,
        &["HTTP 200", "non-JSON", "HTML"],
        &[],
    )
    .await;
}

async fn json_without_access_token_is_refused(env: &Env) {
    let fault = json!({"mode": "respond", "status": 200, "content_type": "application/json",
        "body": r#"{"token_type":"Bearer","expires_in":3600}"#, "times": 1});
    fault_case(
        env,
        "no-token",
        fault,
        &[],
        FAIL_FAST,
        &["HTTP 200", "without an access_token"],
        &[],
    )
    .await;
}

async fn error_inside_a_200_is_an_error(env: &Env) {
    let fault = json!({"mode": "respond", "status": 200, "content_type": "application/json",
        "body": r#"{"error":"invalid_scope"}"#, "times": 1});
    fault_case(
        env,
        "error-200",
        fault,
        &[],
        FAIL_FAST,
        &["refused", "HTTP 200", "invalid_scope"],
        &[],
    )
    .await;
}

async fn unusable_token_type_does_not_print_the_token(env: &Env) {
    let secret = "leaky-token-0123456789abcdef";
    let fault = json!({"mode": "respond", "status": 200, "content_type": "application/json",
        "body": format!(r#"{{"access_token":"{secret}","token_type":"mac","expires_in":60}}"#), "times": 1});
    fault_case(
        env,
        "mac",
        fault,
        &["--output", "json"],
        FAIL_FAST,
        &[r#"token_type "mac""#, "Bearer"],
        &[secret],
    )
    .await;
}

async fn hang_with_timeout_fails_in_time(env: &Env) {
    let fault = json!({"mode": "hang", "times": 1});
    let run = fault_case(
        env,
        "hang",
        fault,
        &["--timeout", "2s"],
        Duration::from_secs(6),
        &["127.0.0.1", "timed out"],
        &[],
    )
    .await;
    assert!(
        run.elapsed >= Duration::from_millis(1500),
        "gave up before the timeout: {run}"
    );
}

async fn redirect_is_not_followed(env: &Env) {
    let fault = json!({"mode": "respond", "status": 302, "headers": {"location": "http://127.0.0.1:9/elsewhere"}, "times": 1});
    fault_case(
        env,
        "redirect",
        fault,
        &[],
        FAIL_FAST,
        &["HTTP 302", "redirects are not followed"],
        &[],
    )
    .await;
}

async fn connection_refused_names_the_host(_env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{port}/token");
    let run = run_token(
        "cli-refused",
        &key.path,
        &["--token-endpoint", &endpoint],
        &[],
    )
    .await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["cannot reach the token endpoint at 127.0.0.1", "connection"],
        &key.secrets(),
    );
}

async fn issuer_without_discovery_fails_clearly(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let issuer = format!("{}/no-such-issuer", env.idp.issuer);
    let run = run_token("c", &key.path, &["--issuer", &issuer], &[]).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["OIDC discovery", &issuer, "HTTP 404"],
        &key.secrets(),
    );

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let closed = format!("http://127.0.0.1:{port}");
    let run = run_token("c", &key.path, &["--issuer", &closed], &[]).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["OIDC discovery", &closed, "127.0.0.1", "connection"],
        &key.secrets(),
    );
}

// --------------------------------------------------------------------------------------------
// token: HTTPS

/// A key registered at the HTTPS IdP: (client id, key).
async fn https_client(env: &Env, dir: &Path) -> (String, Key) {
    let key = keygen(dir, "jwk.json", "ES256").await;
    let client_id = env
        .https
        .register(std::slice::from_ref(&key.public), None)
        .await;
    (client_id, key)
}

async fn https_with_a_ca_bundle_obtains_a_token(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let (client_id, key) = https_client(env, dir.path()).await;
    let ca = ["--ca-bundle", env.tls.ca_path()];
    // Discovery and the token request over HTTPS; then the token endpoint named directly.
    for server in [
        ["--issuer", env.https.issuer.as_str()],
        ["--token-endpoint", env.https.token_endpoint.as_str()],
    ] {
        let run = run_token(&client_id, &key.path, &server, &ca).await;
        let token = printed_token(&run);
        let introspection = env.https.introspect(&token).await;
        assert_eq!(introspection["active"], true, "{introspection}");
        assert_eq!(introspection["client_id"], client_id.as_str());
    }
}

/// reqwest reads the system store from SSL_CERT_FILE or SSL_CERT_DIR when set.
async fn the_system_trust_store_is_honoured(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let (client_id, key) = https_client(env, dir.path()).await;
    // SSL_CERT_DIR is a list: an empty folder, then the CA's.
    let empty = tempfile::tempdir().unwrap();
    let ca_dir = format!(
        "{}:{}",
        path_arg(empty.path()),
        env.tls.ca_dir.to_str().unwrap()
    );
    let key_path = path_arg(&key.path);
    let args = [
        "token",
        "--client-id",
        &client_id,
        "--key",
        &key_path,
        "--token-endpoint",
        &env.https.token_endpoint,
    ];
    for variable in [
        ("SSL_CERT_FILE", env.tls.ca_path()),
        ("SSL_CERT_DIR", ca_dir.as_str()),
    ] {
        let run = cli_with_env(args, &[variable]).await;
        let token = printed_token(&run);
        assert_eq!(env.https.introspect(&token).await["active"], true);
    }
    // Neither: the test CA is not in the system store.
    let run = cli(args).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &[
            "cannot reach the token endpoint at 127.0.0.1: TLS handshake failed",
            "the server's certificate is not trusted",
        ],
        &key.secrets(),
    );
}

/// An empty trust store and no --ca-bundle: the command says so before it sends anything.
async fn an_empty_trust_store_is_named(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let key_path = path_arg(&key.path);
    let args = [
        "token",
        "--client-id",
        "c",
        "--key",
        &key_path,
        "--token-endpoint",
        &env.https.token_endpoint,
    ];
    let run = cli_with_env(args, &[("SSL_CERT_FILE", &path_arg(&empty))]).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["no CA certificates to verify IdPs with", "--ca-bundle"],
        &key.secrets(),
    );
    // The bundle alone is enough.
    let mut with_bundle = args.to_vec();
    with_bundle.extend(["--ca-bundle", env.tls.ca_path()]);
    let run = cli_with_env(with_bundle, &[("SSL_CERT_FILE", &path_arg(&empty))]).await;
    assert!(
        run.stderr.contains("invalid_client") && !run.stderr.contains("TLS"),
        "a TLS connection, then the IdP's answer: {run}"
    );
}

/// `token` at the HTTPS listener with this wrong certificate, trusting the test CA: one
/// attempt, refused at the handshake, and the reason on stderr.
async fn tls_failure_case(env: &Env, listener: &str, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let (_, before) = env.https.tls_handshakes(listener).await;
    let endpoint = env.https.endpoint_with(listener);
    let run = run_token(
        &unique_client(listener),
        &key.path,
        &["--token-endpoint", &endpoint],
        &["--ca-bundle", env.tls.ca_path()],
    )
    .await;
    let mut all = vec!["TLS handshake failed"];
    all.extend_from_slice(expected);
    assert_failed(&run, FAIL_FAST, &all, &key.secrets());
    assert!(!run.stderr.contains("error sending request"), "{run}");
    let (handshakes, after) = env.https.tls_handshakes(listener).await;
    assert_eq!(
        (handshakes, after.len() - before.len()),
        (0, 1),
        "one refused handshake, no retry"
    );
    // The same words when discovery meets it.
    let issuer = endpoint.trim_end_matches("/token");
    let run = run_token(
        "c",
        &key.path,
        &["--issuer", issuer],
        &["--ca-bundle", env.tls.ca_path()],
    )
    .await;
    let mut all = vec!["OIDC discovery", "TLS handshake failed"];
    all.extend_from_slice(expected);
    assert_failed(&run, FAIL_FAST, &all, &key.secrets());
}

async fn an_untrusted_certificate_is_named(env: &Env) {
    tls_failure_case(
        env,
        "untrusted",
        &["the server's certificate is not trusted", "--ca-bundle"],
    )
    .await;
}

async fn a_certificate_for_another_host_is_named(env: &Env) {
    tls_failure_case(
        env,
        "wrong-host",
        &["the server's certificate is for another host: it names localhost, not 127.0.0.1"],
    )
    .await;
}

async fn an_expired_certificate_is_named(env: &Env) {
    tls_failure_case(
        env,
        "expired",
        &["the server's certificate expired at 2024-01-02T00:00:00Z"],
    )
    .await;
}

async fn https_to_a_plain_http_port_says_it_is_not_tls(env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let endpoint = env.idp.token_endpoint.replacen("http://", "https://", 1);
    let run = run_token("c", &key.path, &["--token-endpoint", &endpoint], &[]).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["TLS handshake failed", "does not speak TLS", "http://"],
        &key.secrets(),
    );
}

async fn server_arguments_are_validated(_env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "ES256").await;
    let secrets = key.secrets();

    let run = run_token("c", &key.path, &["--environment", "nope"], &[]).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &[
            r#"unknown environment "nope""#,
            "acm-production",
            "acm-test",
            "geosecure-production",
            "geosecure-beta",
        ],
        &secrets,
    );

    // Two of --issuer / --token-endpoint / --environment: clap's usage error (exit 2).
    for (a, b) in [
        ("--issuer", "--token-endpoint"),
        ("--issuer", "--environment"),
        ("--token-endpoint", "--environment"),
    ] {
        let value = |flag: &str| {
            if flag == "--environment" {
                "acm-test"
            } else {
                "https://idp.example/x"
            }
        };
        let run = run_token("c", &key.path, &[a, value(a), b, value(b)], &[]).await;
        assert_eq!(run.code, Some(2), "{run}");
        assert!(run.stdout.is_empty(), "{run}");
        assert!(run.stderr.contains("cannot be used with"), "{run}");
    }
    let run = run_token("c", &key.path, &[], &[]).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["exactly one of --token-endpoint, --issuer or --environment"],
        &secrets,
    );

    let run = run_token(
        "c",
        &key.path,
        &["--token-endpoint", "http://idp.example/token"],
        &[],
    )
    .await;
    assert_failed(&run, FAIL_FAST, &["must use https"], &secrets);
    let run = run_token("c", &key.path, &["--issuer", "http://idp.example/op"], &[]).await;
    assert_failed(&run, FAIL_FAST, &["issuer must use https"], &secrets);
    let run = run_token("c", &key.path, &["--token-endpoint", "not a url"], &[]).await;
    assert_failed(&run, FAIL_FAST, &["not a valid URL"], &secrets);
}

async fn unusable_key_files_give_clear_messages(_env: &Env) {
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "jwk.json", "RS256").await;
    let secrets = key.secrets();
    let server = ["--token-endpoint", "http://127.0.0.1:9/token"];

    let not_json = dir.path().join("not-json.txt");
    std::fs::write(
        &not_json,
        "-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let run = run_token("c", &not_json, &server, &[]).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &[&path_arg(&not_json), "not valid JSON"],
        &[],
    );
    assert!(
        !run.stderr.contains("MIIE"),
        "the key file's content is quoted: {run}"
    );

    let public_only = write_json(dir.path(), "public.json", &key.public);
    let run = run_token("c", &public_only, &server, &[]).await;
    assert_failed(&run, FAIL_FAST, &["public key", "private JWK"], &secrets);

    let missing = dir.path().join("missing.json");
    let run = run_token("c", &missing, &server, &[]).await;
    assert_failed(
        &run,
        FAIL_FAST,
        &["cannot read the key file", &path_arg(&missing)],
        &[],
    );

    let mut broken = key.private.clone();
    broken.remove("qi");
    let broken = write_json(dir.path(), "broken.json", &Value::Object(broken));
    let run = run_token("c", &broken, &server, &[]).await;
    assert_failed(&run, FAIL_FAST, &["CRT members"], &secrets);

    let empty_set = write_json(dir.path(), "empty-set.json", &json!({"keys": []}));
    let run = run_token("c", &empty_set, &server, &[]).await;
    assert_failed(&run, FAIL_FAST, &["holds no keys"], &[]);
}

// --------------------------------------------------------------------------------------------

type Scenario =
    for<'a> fn(&'a Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|env| Box::pin($name(env))) as Scenario)),*]
    };
}

/// Scenarios that show a known bug in src/; run them with `--ignored` once it is fixed.
const KNOWN_BUGS: &[&str] = &[];

fn main() {
    let args = Arguments::from_args();
    let list: Vec<(&str, Scenario)> = scenarios![
        keygen_defaults_to_rsa_4096_with_a_0600_private_file_and_the_public_jwk_on_stdout,
        keygen_refuses_to_overwrite_an_existing_file,
        keygen_writes_nothing_when_the_public_file_exists,
        keygen_public_flag_writes_the_public_jwk_to_a_file_and_nothing_to_stdout,
        keygen_alg_chooses_the_key_type,
        keygen_secret_manifest_is_labelled_and_its_key_obtains_a_token,
        keygen_key_obtains_a_token_in_issuer_mode,
        token_endpoint_mode_uses_the_endpoint_as_audience,
        assertion_audience_overrides_aud,
        json_output_has_token_type_lifetime_and_expiry,
        ec_and_ps_keys_obtain_tokens,
        jwk_set_with_key_id_signs_with_the_chosen_key,
        expires_in_as_a_string_is_accepted,
        client_secret_file_obtains_a_token,
        unregistered_key_names_client_kid_and_registration,
        html_502_says_unavailable_and_html,
        html_with_200_says_not_json,
        json_without_access_token_is_refused,
        error_inside_a_200_is_an_error,
        unusable_token_type_does_not_print_the_token,
        hang_with_timeout_fails_in_time,
        redirect_is_not_followed,
        connection_refused_names_the_host,
        issuer_without_discovery_fails_clearly,
        https_with_a_ca_bundle_obtains_a_token,
        the_system_trust_store_is_honoured,
        an_empty_trust_store_is_named,
        an_untrusted_certificate_is_named,
        a_certificate_for_another_host_is_named,
        an_expired_certificate_is_named,
        https_to_a_plain_http_port_says_it_is_not_tls,
        server_arguments_are_validated,
        unusable_key_files_give_clear_messages,
    ];
    if args.list {
        let trials = list
            .iter()
            .map(|(name, _)| {
                Trial::test(*name, || Ok(())).with_ignored_flag(KNOWN_BUGS.contains(name))
            })
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let idp = Idp::start();
    let tls = IdpTls::generate();
    let https = Idp::start_with(Some(&tls));
    eprintln!("test IdPs up in {:.1}s", started.elapsed().as_secs_f64());
    let env = Arc::new(Env {
        rt,
        idp,
        https,
        tls,
    });
    let trials = list
        .into_iter()
        .map(|(name, scenario)| {
            let env = env.clone();
            Trial::test(name, move || {
                let deadline = Duration::from_secs(60);
                env.rt
                    .block_on(async { tokio::time::timeout(deadline, scenario(&env)).await })
                    .map_err(|_| Failed::from(format!("{name} did not finish within {deadline:?}")))
            })
            .with_ignored_flag(KNOWN_BUGS.contains(&name))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    match Arc::try_unwrap(env) {
        Ok(Env {
            rt,
            idp,
            https,
            tls,
        }) => {
            drop(idp);
            drop(https);
            drop(tls);
            drop(rt);
        }
        Err(_) => eprintln!("environment still shared; the IdP ends with this process"),
    }
    conclusion.exit();
}
