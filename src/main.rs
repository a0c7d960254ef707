//! The command line: `run` the operator, print the `crd`, get a `token`, `keygen` a key pair.

use std::{
    io::Write,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

// mimalloc instead of glibc's malloc: with 10,000 IdvClients glibc kept ~35 MiB more resident
// (memory freed on one thread is not reused by another). docs/benchmarks.md has the numbers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use futures::FutureExt;
use idv_token_operator::{
    api::{self, Environment},
    authserver::{self, HostPolicy, ServerPlan},
    controller::{self, RunOptions},
    credential,
    events::EventPublisher,
    jwk::{self, KeygenAlgorithm},
    leader::{self, LeaseSettings},
    metrics::Metrics,
    names,
    oauth::TokenParams,
    probes::{self, Health},
    reconcile::{Context, Settings},
    schedule,
    telemetry::{self, LogFormat},
    token_client::{TokenClient, TokenClientOptions},
};
use jiff::{SignedDuration, Timestamp};

#[derive(Parser)]
#[command(
    name = "idv-token-operator",
    version,
    about = "Keeps IDV (Vlaanderen) OAuth2 access tokens fresh in Kubernetes Secrets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator (kubeconfig or in-cluster credentials).
    Run(RunArgs),
    /// Print every CRD as multi-document YAML.
    Crd,
    /// Get one access token and print it.
    Token(TokenArgs),
    /// Make a key pair: the private JWK to a file, the public JWK (for the Beheerportaal) to stdout.
    Keygen(KeygenArgs),
    /// Sidecar: forward requests to one API with the token from a mounted token Secret.
    Proxy(idv_token_operator::proxy::ProxyArgs),
    /// Print the version.
    Version,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    schedule::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration like 10s, 5m or 1h"))
}

#[derive(Args)]
struct RunArgs {
    /// Path of a kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or in-cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only these namespaces (comma-separated); default: all namespaces.
    #[arg(long, alias = "watch-namespace", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// IdvClients reconciled at the same time (per watched namespace). As many as token
    /// requests by default: each answered token waits for a worker to store it.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
    /// Token requests in flight at the same time, across all clients (protects the IdP).
    #[arg(long, default_value_t = 8)]
    max_concurrent_token_requests: usize,
    /// Timeout of one token or discovery request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    token_request_timeout: Duration,
    /// Never refresh a token sooner than this after it was issued.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    min_refresh_interval: Duration,
    /// Hosts assertions and client secrets may be sent to (comma-separated): `idp.example`
    /// (that host), `*.example.org` (any host below it), `*` (any host but loopback and
    /// link-local ones, which only a literal entry such as `127.0.0.1` admits). Default: the
    /// IDV hosts. An assertion sent elsewhere could be replayed at the real IdP.
    #[arg(long, value_delimiter = ',')]
    allowed_token_hosts: Vec<String>,
    /// PEM file of extra CA certificates to trust for IdPs (private PKI).
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
    /// Where /metrics is served; "0" turns it off.
    #[arg(long, default_value = ":8080")]
    metrics_bind_address: String,
    /// Where /healthz and /readyz are served; "0" turns them off.
    #[arg(long, default_value = ":8081")]
    health_probe_bind_address: String,
    /// Run only while holding a Lease, so that one of several replicas works.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the Lease (default: this pod's namespace).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "idv-token-operator-system"
    )]
    leader_election_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "idv-token-operator")]
    leader_election_id: String,
    /// How long a leader's lease lasts without renewal (the standby's takeover time).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_election_lease_duration: Duration,
    /// How often the leader renews, and a standby retries (shorter than 2/3 of the lease duration).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_election_retry_period: Duration,
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Args)]
struct TokenArgs {
    /// The OAuth client id.
    #[arg(long)]
    client_id: String,
    /// Path of the private JWK or JWK Set (private_key_jwt).
    #[arg(
        long,
        group = "credential",
        required_unless_present = "client_secret_file"
    )]
    key: Option<PathBuf>,
    /// Path of a file holding the client secret (client_secret_basic), for clients without a key.
    #[arg(long, group = "credential")]
    client_secret_file: Option<PathBuf>,
    /// In a JWK Set: the kid of the key to use. A thumbprint kid may begin with '-'.
    #[arg(long, allow_hyphen_values = true)]
    key_id: Option<String>,
    /// Token endpoint URL.
    #[arg(long, group = "server")]
    token_endpoint: Option<String>,
    /// OIDC issuer URL (the token endpoint is discovered).
    #[arg(long, group = "server")]
    issuer: Option<String>,
    /// A known IDV server: acm-production, acm-test, geosecure-production, geosecure-beta.
    #[arg(long, group = "server")]
    environment: Option<String>,
    /// Override of the assertion's aud claim.
    #[arg(long)]
    assertion_audience: Option<String>,
    /// A scope to request (repeatable).
    #[arg(long = "scope")]
    scopes: Vec<String>,
    #[arg(long)]
    audience: Option<String>,
    #[arg(long)]
    resource: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Token)]
    output: Output,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// PEM file of extra CA certificates to trust for the IdP (private PKI), as for `run`.
    #[arg(long)]
    ca_bundle: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Token,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Alg {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "PS256")]
    Ps256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "ES384")]
    Es384,
}

#[derive(Args)]
struct KeygenArgs {
    #[arg(long, value_enum, default_value_t = Alg::Rs256)]
    alg: Alg,
    /// RSA key size.
    #[arg(long, default_value_t = 4096)]
    bits: usize,
    /// Where to write the private JWK (mode 0600; an existing file is never overwritten).
    #[arg(long)]
    private: PathBuf,
    /// Where to write the public JWK; default: stdout.
    #[arg(long)]
    public: Option<PathBuf>,
    /// Write the private key as a Kubernetes Secret manifest (YAML) of this name instead of a
    /// bare JWK: key `jwk.json`, labelled `idv-token-operator.dev/credential: "true"` so that
    /// the operator may use it. Ready for `kubectl apply -f`.
    #[arg(long)]
    secret_name: Option<String>,
    /// Namespace of that Secret (default: none, i.e. kubectl's current namespace).
    #[arg(long, requires = "secret_name")]
    namespace: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Crd => {
            print!("{}", api::crds_yaml());
            Ok(())
        }
        Command::Token(args) => token(args),
        Command::Keygen(args) => keygen(args),
        Command::Proxy(args) => idv_token_operator::proxy::main(args),
        Command::Version => {
            println!("idv-token-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn run(args: RunArgs) -> Result<(), String> {
    telemetry::init(args.log_format);
    let host_policy = HostPolicy::from_patterns(&args.allowed_token_hosts)
        .map_err(|e| format!("--allowed-token-hosts: {e}"))?;
    let source = if args.allowed_token_hosts.is_empty() {
        "default (the IDV hosts)"
    } else {
        "--allowed-token-hosts"
    };
    tracing::info!(
        allowed_token_hosts = %host_policy,
        source,
        "assertions and client secrets are sent only to these hosts"
    );
    let runtime = runtime()?;
    let result = runtime.block_on(async move {
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| format!("invalid kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::infer().await.map_err(|e| format!("no Kubernetes configuration found: {e}"))?,
        };
        // Reconciles, status writes and the Lease use `kube` (every call has a deadline); the
        // watches keep their own client, whose read timeout outlasts a watch.
        let controller::KubeClients { calls: kube, watches } =
            controller::kube_clients(config).map_err(|e| format!("cannot create a Kubernetes client: {e}"))?;
        let ca_bundle_pem = read_ca_bundle(args.ca_bundle.as_deref())?;
        let tokens = TokenClient::new(TokenClientOptions {
            timeout: args.token_request_timeout,
            host_policy,
            any_assertion_audience: false,
            ca_bundle_pem,
        })?;

        let metrics = Arc::new(Metrics::default());
        let health = Arc::new(Health::default());
        if args.metrics_bind_address != "0" {
            let listener = probes::bind(&args.metrics_bind_address).await?;
            tracing::info!(address = %listener.local_addr().map_err(|e| e.to_string())?, "serving /metrics");
            tokio::spawn(probes::serve(listener, health.clone(), Some(metrics.clone())));
        }
        if args.health_probe_bind_address != "0" {
            let listener = probes::bind(&args.health_probe_bind_address).await?;
            tracing::info!(address = %listener.local_addr().map_err(|e| e.to_string())?, "serving /healthz and /readyz");
            tokio::spawn(probes::serve(listener, health.clone(), None));
        }

        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), uuid::Uuid::new_v4()));
        let shutdown = shutdown_signal().shared();
        let leadership = if args.leader_elect {
            // A standby is healthy and ready: it is doing its job, which is waiting.
            health.ready.store(true, Ordering::Relaxed);
            let settings = LeaseSettings {
                namespace: args.leader_election_namespace.clone(),
                name: args.leader_election_id.clone(),
                identity: identity.clone(),
                lease_duration: args.leader_election_lease_duration,
                retry_period: args.leader_election_retry_period,
            };
            settings.check().map_err(|e| format!("--leader-election-retry-period: {e}"))?;
            tokio::select! {
                held = leader::acquire(kube.clone(), settings) => Some(held),
                _ = shutdown.clone() => return Ok(()),
            }
        } else {
            None
        };
        health.ready.store(false, Ordering::Relaxed);

        let settings = Settings { min_refresh_interval: args.min_refresh_interval, writeback_parallelism: usize::from(args.concurrency.max(1)), token_request_timeout: args.token_request_timeout };
        let options = RunOptions {
            namespaces: args.watch_namespaces.clone(),
            concurrency: args.concurrency.max(1),
            reconcile_deadline: controller::reconcile_deadline(args.token_request_timeout),
            progress: health.progress.clone(),
        };
        let max_requests = args.max_concurrent_token_requests;
        let events = EventPublisher::new(kube.clone(), "idv-token-operator", &identity);
        let kube_for_context = kube.clone();
        let ready = health.clone();
        let work = controller::run(
            watches,
            options,
            move |caches| Context::new(kube_for_context, tokens, caches, max_requests, settings, metrics, events),
            shutdown,
            move || {
                ready.ready.store(true, Ordering::Relaxed);
                tracing::info!("watches synced");
            },
        );
        let Some(held) = leadership else {
            work.await;
            return Ok(());
        };
        // Stop, then step down. A lost lease drops all work at once (no drain, no final status
        // flush): it must be over before a standby may take over. The runtime's shutdown below
        // ends the spawned tasks.
        tokio::select! {
            _ = work => {}
            reason = held.lost() => {
                tracing::error!("stopped all work: leadership lost: {reason}; exiting so that a restart competes again");
                return Err(format!("leadership lost: {reason}"));
            }
        }
        // Releasing lets the standby take over at once; if the apiserver does not answer,
        // the Lease expires on its own.
        if tokio::time::timeout(controller::API_CALL_TIMEOUT, held.release()).await.is_err() {
            tracing::warn!("could not release the Lease in time; it expires on its own");
        }
        Ok(())
    });
    // Dropping a runtime waits for blocking tasks (a DNS lookup that hangs) without limit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn read_ca_bundle(path: Option<&std::path::Path>) -> Result<Option<Vec<u8>>, String> {
    path.map(|path| {
        std::fs::read(path)
            .map_err(|e| format!("cannot read the CA bundle {}: {e}", path.display()))
    })
    .transpose()
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "idv-token-operator".into())
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

fn token(args: TokenArgs) -> Result<(), String> {
    let environment = match &args.environment {
        Some(name) => Some(Environment::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Environment::ALL.iter().map(|e| e.name()).collect();
            format!(
                "unknown environment {name:?}; use one of {}",
                names.join(", ")
            )
        })?),
        None => None,
    };
    let server = api::AuthServer {
        environment,
        issuer: args.issuer.clone(),
        token_endpoint: args.token_endpoint.clone(),
        assertion_audience: args.assertion_audience.clone(),
    };
    let plan: ServerPlan = authserver::plan(&server).map_err(|e| match e {
        authserver::ServerConfigError::NotExactlyOne => {
            "give exactly one of --token-endpoint, --issuer or --environment".to_string()
        }
        other => other.to_string(),
    })?;
    let (kind, path) = match (&args.key, &args.client_secret_file) {
        (Some(path), _) => (credential::Kind::PrivateKey, path),
        (None, Some(path)) => (credential::Kind::ClientSecret, path),
        (None, None) => return Err("give --key or --client-secret-file".into()),
    };
    let what = match kind {
        credential::Kind::PrivateKey => "key file",
        credential::Kind::ClientSecret => "client secret file",
    };
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    let credential = credential::parse(kind, bytes, args.key_id.as_deref(), String::new())
        .map_err(|e| match e {
            credential::CredentialError::Key(e) => {
                format!("the key in {} is unusable: {e}", path.display())
            }
            other => format!("the {what} {}: {other}", path.display()),
        })?;
    let params = TokenParams {
        scopes: args.scopes.clone(),
        audience: args.audience.clone(),
        resource: args.resource.clone(),
    };
    let ca_bundle_pem = read_ca_bundle(args.ca_bundle.as_deref())?;
    let answer = runtime()?.block_on(async {
        let tokens = TokenClient::new(TokenClientOptions {
            timeout: args.timeout,
            // Its user holds the key: any host, any audience.
            host_policy: HostPolicy::Unrestricted,
            any_assertion_audience: true,
            ca_bundle_pem,
        })?;
        let resolved = tokens.resolve(&plan).await.map_err(|e| e.to_string())?;
        let now = Timestamp::now();
        let answer = tokens
            .request_token(&args.client_id, &resolved, &params, &credential, now)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((answer, now))
    })?;
    let (answer, issued) = answer;
    let mut stdout = std::io::stdout().lock();
    let written = match args.output {
        Output::Token => writeln!(stdout, "{}", answer.access_token.expose()),
        Output::Json => {
            let expires_at = schedule::whole_seconds(issued)
                + SignedDuration::from_secs(answer.expires_in as i64);
            let json = serde_json::json!({
                "access_token": answer.access_token.expose(),
                "token_type": answer.token_type,
                "expires_in": answer.expires_in,
                "scope": answer.scope,
                "expires_at": expires_at.to_string(),
            });
            writeln!(stdout, "{json}")
        }
    };
    written.map_err(|e| format!("cannot write to stdout: {e}"))
}

fn keygen(args: KeygenArgs) -> Result<(), String> {
    let alg = match args.alg {
        Alg::Rs256 => KeygenAlgorithm::Rs256,
        Alg::Ps256 => KeygenAlgorithm::Ps256,
        Alg::Es256 => KeygenAlgorithm::Es256,
        Alg::Es384 => KeygenAlgorithm::Es384,
    };
    if let Some(name) = &args.secret_name
        && !names::is_dns1123_subdomain(name)
    {
        return Err(format!(
            "--secret-name {name:?} is not a valid Secret name (lower-case letters, digits, '-' and '.', at most 253 characters)"
        ));
    }
    if let Some(namespace) = &args.namespace
        && !(namespace.len() <= 63
            && !namespace.contains('.')
            && names::is_dns1123_subdomain(namespace))
    {
        return Err(format!(
            "--namespace {namespace:?} is not a valid namespace name (lower-case letters, digits and '-', at most 63 characters)"
        ));
    }
    let private = jwk::generate(alg, args.bits).map_err(|e| e.to_string())?;
    let public = serde_json::to_string_pretty(&jwk::public_jwk(&private)).expect("JSON");
    let private_text = match &args.secret_name {
        Some(name) => {
            let secret = credential::credential_secret(
                name,
                args.namespace.as_deref(),
                &serde_json::to_string_pretty(&private).expect("JSON"),
            );
            format!(
                "# Private key for idv-token-operator, public key id {}.\n\
                 # Apply with kubectl apply -f; keep it out of Git unless encrypted (SOPS, Sealed Secrets).\n{}",
                private["kid"].as_str().unwrap_or_default(),
                serde_yaml::to_string(&secret).expect("YAML")
            )
        }
        None => serde_json::to_string_pretty(&private).expect("JSON"),
    };
    // Claim both files before writing either: a refusal must not leave half a key pair.
    let mut private_file = create_new_file(&args.private, 0o600)?;
    let public_file = match &args.public {
        Some(path) => match create_new_file(path, 0o644) {
            Ok(file) => Some((path, file)),
            Err(e) => {
                drop(private_file);
                let _ = std::fs::remove_file(&args.private);
                return Err(e);
            }
        },
        None => None,
    };
    write_contents(&mut private_file, &args.private, private_text.trim_end())?;
    match public_file {
        Some((path, mut file)) => write_contents(&mut file, path, &public),
        None => {
            println!("{public}");
            Ok(())
        }
    }
}

/// Create a file that must not exist yet, with the given mode from the start.
fn create_new_file(path: &PathBuf, mode: u32) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            format!("{} already exists; not overwriting it", path.display())
        }
        _ => format!("cannot create {}: {e}", path.display()),
    })
}

fn write_contents(
    file: &mut std::fs::File,
    path: &std::path::Path,
    contents: &str,
) -> Result<(), String> {
    file.write_all(contents.as_bytes())
        .and_then(|_| file.write_all(b"\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_may_begin_with_a_hyphen() {
        // RFC 7638 thumbprints are base64url: about one in 64 begins with '-'.
        let cli = Cli::try_parse_from([
            "idv-token-operator",
            "token",
            "--client-id",
            "c",
            "--key",
            "k.json",
            "--key-id",
            "-Xq3",
        ])
        .expect("parses");
        let Command::Token(args) = cli.command else {
            panic!("token")
        };
        assert_eq!(args.key_id.as_deref(), Some("-Xq3"));
    }
}
