// Test OAuth 2.0 authorization server for the idv-token-operator integration tests.
//
// Started by the Rust test harness as `node tests/idp/server.mjs` (any cwd). It listens on
// 127.0.0.1 on a random port and prints exactly one line of JSON to stdout when ready:
//
//   {"issuer":"http://127.0.0.1:PORT","token_endpoint":"http://127.0.0.1:PORT/token",
//    "introspection_endpoint":"http://127.0.0.1:PORT/token/introspection",
//    "registration_endpoint":"http://127.0.0.1:PORT/reg","port":PORT,
//    "control":"http://127.0.0.1:PORT","tls_ports":{}}
//
// With IDP_TLS set (JSON: {"cert":PEM file,"key":PEM file,"extra":{"NAME":{"cert":…,"key":…}}})
// the issuer is https://127.0.0.1:PORT with that certificate, every "extra" certificate gets
// an HTTPS listener of its own (same provider; "tls_ports" names their ports), and "control"
// is a plain-HTTP listener for the harness (same provider and /__test/ routes), which keeps
// working whatever certificate the HTTPS listeners present.
//
// It exits when its stdin reaches EOF / closes (the parent holds the pipe), and on SIGTERM/SIGINT.
// Everything else goes to stderr; set IDP_DEBUG=1 for a line per request and oidc-provider's
// own notices. See README.md in this folder for the /__test/ control routes.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

// ---------------------------------------------------------------------------------------------
// Quiet by default. oidc-provider prints NOTICEs (console.info, i.e. stdout!) and WARNINGs
// (console.warn) about defaults; stdout is reserved for the single ready line, so both are
// routed to stderr, and only shown with IDP_DEBUG set.
// ---------------------------------------------------------------------------------------------
const DEBUG = !!process.env.IDP_DEBUG && process.env.IDP_DEBUG !== '0';
const log = (...args) => { if (DEBUG) console.error('[idp]', ...args); };
console.info = (...args) => { if (DEBUG) console.error(...args); };
console.log = (...args) => { if (DEBUG) console.error(...args); };
console.warn = (...args) => { if (DEBUG) console.error(...args); };

// Imported after the console is patched.
const { default: Provider, errors } = await import('oidc-provider');

const DEFAULT_TOKEN_TTL = 3600;
const MAX_ASSERTIONS_PER_CLIENT = 100;
const MAX_BODY = 56 * 1024; // same limit oidc-provider applies

// ---------------------------------------------------------------------------------------------
// Exit handling: die with the parent.
// ---------------------------------------------------------------------------------------------
let exiting = false;
function shutdown(reason, code = 0) {
  if (exiting) return;
  exiting = true;
  log(`exiting: ${reason}`);
  process.exit(code);
}
// IDP_IGNORE_STDIN=1 turns this off, for running it by hand in the background (`&` gives it
// /dev/null, which is at EOF at once).
if (!process.env.IDP_IGNORE_STDIN || process.env.IDP_IGNORE_STDIN === '0') {
  process.stdin.on('end', () => shutdown('stdin EOF'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume(); // flowing mode, so 'end' fires; whatever is written is discarded
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
process.on('SIGHUP', () => shutdown('SIGHUP'));
// If stdout goes away (parent died before reading), stop too.
process.stdout.on('error', () => shutdown('stdout error'));

// ---------------------------------------------------------------------------------------------
// Test state: per-client counters, faults and received client assertions.
// ---------------------------------------------------------------------------------------------
const freshStats = () => ({ token_requests: 0, token_successes: 0, in_flight: 0, peak_in_flight: 0 });
const stats = new Map(); // client_id -> freshStats()
const totals = freshStats();
const faults = new Map(); // client_id | '*' -> fault
const assertions = new Map(); // client_id -> [{ header, payload, received_at_ms }]
const echoes = new Map(); // client_id -> [error_description sent by an `echo` fault]
// client_id -> [form fields received, client_assertion and client_secret values left out]
const forms = new Map();
// client_id -> { assertions, authorizations, client_secrets, access_tokens }: the raw secret
// material that passed through the token endpoint, for the tests' leak scans.
const secrets = new Map();
// Form fields whose values are credentials: never kept in `forms`.
const CREDENTIAL_FIELDS = new Set(['client_assertion', 'client_secret']);

function statsFor(clientId) {
  let s = stats.get(clientId);
  if (!s) {
    s = freshStats();
    stats.set(clientId, s);
  }
  return s;
}

// Append to a per-client list in `map`, keeping the last MAX_ASSERTIONS_PER_CLIENT entries.
function remember(map, clientId, entry) {
  let list = map.get(clientId);
  if (!list) {
    list = [];
    map.set(clientId, list);
  }
  list.push(entry);
  if (list.length > MAX_ASSERTIONS_PER_CLIENT) list.splice(0, list.length - MAX_ASSERTIONS_PER_CLIENT);
}

function secretsFor(clientId) {
  let s = secrets.get(clientId);
  if (!s) {
    s = { assertions: [], authorizations: [], client_secrets: [], access_tokens: [] };
    secrets.set(clientId, s);
  }
  return s;
}

function rememberSecret(clientId, kind, value) {
  if (typeof value !== 'string' || !value) return;
  const list = secretsFor(clientId)[kind];
  if (list.includes(value)) return;
  list.push(value);
  if (list.length > MAX_ASSERTIONS_PER_CLIENT) list.splice(0, list.length - MAX_ASSERTIONS_PER_CLIENT);
}

// The form as a JSON object (a repeated field becomes an array), credential values left out.
function recordableForm(form) {
  const out = {};
  for (const [k, v] of form) {
    const value = CREDENTIAL_FIELDS.has(k) ? '(not recorded)' : v;
    if (!(k in out)) out[k] = value;
    else if (Array.isArray(out[k])) out[k].push(value);
    else out[k] = [out[k], value];
  }
  return out;
}

// The password of an HTTP Basic header, decoded as RFC 6749 2.3.1 encodes it.
function basicAuthPassword(header) {
  if (typeof header !== 'string') return undefined;
  const m = /^basic\s+(\S+)\s*$/i.exec(header);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i === -1) return undefined;
  const password = decoded.slice(i + 1);
  try {
    return decodeURIComponent(password.replace(/\+/g, ' '));
  } catch {
    return password;
  }
}

// The access_token of a token answer body (an object, or JSON text), if any.
function accessTokenOf(body) {
  let value = body;
  if (typeof value === 'string' || Buffer.isBuffer(value)) {
    try { value = JSON.parse(value.toString()); } catch { return undefined; }
  }
  return typeof value?.access_token === 'string' ? value.access_token : undefined;
}

function b64urlJson(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

// Decodes header and payload of a compact JWS; no verification. Returns undefined if malformed.
function decodeJwt(jwt) {
  if (typeof jwt !== 'string') return undefined;
  const parts = jwt.split('.');
  if (parts.length !== 3) return undefined;
  try {
    return { header: b64urlJson(parts[0]), payload: b64urlJson(parts[1]) };
  } catch {
    return undefined;
  }
}

function basicAuthUser(header) {
  if (typeof header !== 'string') return undefined;
  const m = /^basic\s+(\S+)\s*$/i.exec(header);
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  const user = i === -1 ? decoded : decoded.slice(0, i);
  try {
    return decodeURIComponent(user.replace(/\+/g, ' '));
  } catch {
    return user;
  }
}

function readRaw(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error('request entity too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function json(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.body = JSON.stringify(body);
}

// ---------------------------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------------------------
const TLS = process.env.IDP_TLS ? JSON.parse(process.env.IDP_TLS) : undefined;
const readPair = ({ cert, key }) => ({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) });

// HTTPS listeners by name ("main" is the issuer's), and what their TLS handshakes did.
const tlsListeners = new Map(); // name -> https.Server
const tlsStats = new Map(); // name -> { handshakes, failures: [{ at_ms, error }] }
const MAX_FAILURES_KEPT = 100;

function httpsListener(name, pair) {
  const listener = https.createServer(readPair(pair));
  const counts = { handshakes: 0, failures: [] };
  listener.on('secureConnection', () => { counts.handshakes += 1; });
  // The client refused the certificate (it sends an alert) or spoke no TLS.
  listener.on('tlsClientError', (err, socket) => {
    counts.failures.push({ at_ms: Date.now(), error: String(err?.code ?? err?.message ?? err) });
    if (counts.failures.length > MAX_FAILURES_KEPT) counts.failures.shift();
    socket.destroy();
  });
  tlsListeners.set(name, listener);
  tlsStats.set(name, counts);
  return listener;
}

async function listen(listener) {
  await new Promise((resolve, reject) => {
    listener.once('error', reject);
    listener.listen(0, '127.0.0.1', resolve);
  });
  return listener.address().port;
}

const server = TLS ? httpsListener('main', TLS) : http.createServer();
const port = await listen(server);
const issuer = `${TLS ? 'https' : 'http'}://127.0.0.1:${port}`;
// The harness's own way in: plain HTTP, also while the HTTPS certificate is a bad one.
const controlServer = TLS ? http.createServer() : server;
const controlPort = TLS ? await listen(controlServer) : port;
const control = `http://127.0.0.1:${controlPort}`;
const tlsPorts = {};
for (const [name, pair] of Object.entries(TLS?.extra ?? {})) {
  tlsPorts[name] = await listen(httpsListener(name, pair));
}

// Signing key for the provider itself (published at /jwks, never used for the opaque access
// tokens). Generated per run so that no development keys are used. An EC key, because generating
// an RSA key costs ~200 ms of startup; clients therefore default to ES256 id token signing.
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const providerJwks = {
  keys: [{ ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'ES256', kid: 'idp-es256' }],
};

const INTROSPECTOR_ID = 'introspector';
const RESOURCE_PREFIX = 'https://api.test.example/';

const configuration = {
  clients: [
    {
      client_id: INTROSPECTOR_ID,
      client_secret: 'introspector-secret',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  jwks: providerJwks,
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'gipod_read', 'api_read', 'api_write'],
  clientAuthMethods: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
  enabledJWA: {
    clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256', 'ES384'],
  },
  clientDefaults: {
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    id_token_signed_response_alg: 'ES256',
  },
  extraClientMetadata: {
    properties: ['token_ttl'],
    validator(ctx, key, value) {
      if (key === 'token_ttl' && value !== undefined) {
        if (!Number.isSafeInteger(value) || value < 1) {
          throw new errors.InvalidClientMetadata('token_ttl must be a positive integer (seconds)');
        }
      }
    },
  },
  ttl: {
    ClientCredentials(ctx, token, client) {
      return client?.token_ttl ?? DEFAULT_TOKEN_TTL;
    },
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // The introspector may look at any token; any other authenticated client only at its own.
      allowedPolicy(ctx, client, token) {
        return client.clientId === INTROSPECTOR_ID || client.clientId === token.clientId;
      },
    },
    revocation: { enabled: false },
    // `resource` form field (RFC 8707): any URL under RESOURCE_PREFIX is a resource server
    // whose tokens are opaque and carry the resource as their audience; others are refused.
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo(ctx, resourceIndicator) {
        if (!resourceIndicator.startsWith(RESOURCE_PREFIX)) throw new errors.InvalidTarget();
        return { scope: 'gipod_read api_read api_write', audience: resourceIndicator, accessTokenFormat: 'opaque' };
      },
    },
    registration: {
      enabled: true,
      initialAccessToken: false,
      idFactory: () => `client-${crypto.randomUUID()}`,
    },
  },
  // Plain JSON error bodies, also for the few HTML-rendered ones.
  renderError(ctx, out) {
    ctx.type = 'application/json';
    ctx.body = JSON.stringify(out);
  },
};

const provider = new Provider(issuer, configuration);
provider.proxy = false;

const TOKEN_PATH = new URL(provider.urlFor('token')).pathname;
const ELSEWHERE_ISSUER_PATH = '/__test/issuer-via-localhost';

// ---------------------------------------------------------------------------------------------
// Test control routes and token endpoint instrumentation. Put in front of the provider's own
// middleware so they run first.
// ---------------------------------------------------------------------------------------------
async function testRoutes(ctx, next) {
  const { path, method } = ctx;

  if (path === '/__test/stats' && method === 'GET') {
    const clientId = ctx.query.client_id;
    if (typeof clientId === 'string' && clientId) {
      const s = stats.get(clientId) ?? freshStats();
      json(ctx, 200, { ...s });
    } else {
      json(ctx, 200, { ...totals });
    }
    return;
  }

  // Per-client records, oldest first: what a client sent (decoded assertions, form fields)
  // and what echo faults answered it.
  const perClient = { assertions, echoes, forms };
  const recorded = /^\/__test\/(assertions|echoes|forms)$/.exec(path);
  if (recorded && method === 'GET') {
    const clientId = ctx.query.client_id;
    if (typeof clientId !== 'string' || !clientId) {
      json(ctx, 400, { error: 'client_id query parameter is required' });
      return;
    }
    json(ctx, 200, perClient[recorded[1]].get(clientId) ?? []);
    return;
  }

  if (path === '/__test/secrets' && method === 'GET') {
    const clientId = ctx.query.client_id;
    if (typeof clientId === 'string' && clientId) {
      json(ctx, 200, secrets.get(clientId) ?? { assertions: [], authorizations: [], client_secrets: [], access_tokens: [] });
      return;
    }
    const all = { assertions: [], authorizations: [], client_secrets: [], access_tokens: [] };
    for (const s of secrets.values()) {
      for (const kind of Object.keys(all)) all[kind].push(...s[kind]);
    }
    json(ctx, 200, all);
    return;
  }

  if (path === '/__test/fault' && method === 'POST') {
    let body;
    try {
      const raw = await readRaw(ctx.req);
      body = raw.length ? JSON.parse(raw.toString('utf8')) : {};
    } catch (e) {
      json(ctx, 400, { error: `invalid JSON body: ${e.message}` });
      return;
    }
    const { client_id: clientId, mode } = body ?? {};
    if (typeof clientId !== 'string' || !clientId) {
      json(ctx, 400, { error: 'client_id (string) is required; "*" means every client' });
      return;
    }
    if (mode === 'none') {
      faults.delete(clientId);
      json(ctx, 200, { client_id: clientId, mode: 'none' });
      return;
    }
    if (mode !== 'respond' && mode !== 'hang' && mode !== 'echo') {
      json(ctx, 400, { error: 'mode must be one of "respond", "hang", "echo", "none"' });
      return;
    }
    const fault = { mode, times: null };
    if (body.times !== undefined && body.times !== null) {
      if (!Number.isSafeInteger(body.times) || body.times < 1) {
        json(ctx, 400, { error: 'times must be a positive integer' });
        return;
      }
      fault.times = body.times;
    }
    if (mode === 'respond') {
      fault.status = body.status ?? 503;
      if (!Number.isSafeInteger(fault.status) || fault.status < 100 || fault.status > 599) {
        json(ctx, 400, { error: 'status must be an integer HTTP status' });
        return;
      }
      fault.headers = body.headers ?? {};
      fault.body = body.body ?? '';
      if (typeof fault.body !== 'string') fault.body = JSON.stringify(fault.body);
      fault.content_type = body.content_type
        ?? (fault.body ? 'text/plain; charset=utf-8' : undefined);
      fault.delay_ms = body.delay_ms ?? 0;
    }
    if (mode === 'echo') {
      fault.status = body.status ?? 401;
      if (!Number.isSafeInteger(fault.status) || fault.status < 400 || fault.status > 499) {
        json(ctx, 400, { error: 'status of an echo must be a 4xx' });
        return;
      }
      fault.error = body.error ?? 'invalid_client';
      if (typeof fault.error !== 'string') {
        json(ctx, 400, { error: 'error must be a string' });
        return;
      }
    }
    faults.set(clientId, fault);
    json(ctx, 200, { client_id: clientId, ...fault });
    return;
  }

  if (path === '/__test/tls' && method === 'GET') {
    json(ctx, 200, Object.fromEntries(tlsStats));
    return;
  }

  // Swap a listener's certificate. Open connections are closed and earlier session tickets
  // stop working, so that every client does a full handshake with the new certificate.
  if (path === '/__test/tls' && method === 'POST') {
    let body;
    try {
      body = JSON.parse((await readRaw(ctx.req)).toString('utf8'));
    } catch (e) {
      json(ctx, 400, { error: `invalid JSON body: ${e.message}` });
      return;
    }
    const listener = tlsListeners.get(body?.listener ?? 'main');
    if (!listener || typeof body.cert !== 'string' || typeof body.key !== 'string') {
      json(ctx, 400, { error: 'listener (a TLS listener name), cert and key (PEM files) are required' });
      return;
    }
    try {
      listener.setSecureContext(readPair(body));
    } catch (e) {
      json(ctx, 400, { error: `unusable certificate or key: ${e.message}` });
      return;
    }
    listener.setTicketKeys(crypto.randomBytes(48));
    listener.closeAllConnections();
    json(ctx, 200, { listener: body.listener ?? 'main', cert: body.cert });
    return;
  }

  // A new client secret for a client_secret_* client; the old one stops working at once.
  if (path === '/__test/rotate-secret' && method === 'POST') {
    let body;
    try {
      const raw = await readRaw(ctx.req);
      body = raw.length ? JSON.parse(raw.toString('utf8')) : {};
    } catch (e) {
      json(ctx, 400, { error: `invalid JSON body: ${e.message}` });
      return;
    }
    const clientId = body?.client_id;
    const properties = typeof clientId === 'string' && clientId
      ? await provider.Client.adapter.find(clientId) : undefined;
    if (!properties?.client_secret) {
      json(ctx, 400, { error: 'client_id must name a registered client with a client secret' });
      return;
    }
    const clientSecret = crypto.randomBytes(32).toString('base64url');
    await provider.Client.adapter.upsert(clientId, { ...properties, client_secret: clientSecret });
    json(ctx, 200, { client_id: clientId, client_secret: clientSecret });
    return;
  }

  if (path === '/__test/reset' && method === 'POST') {
    stats.clear();
    faults.clear();
    assertions.clear();
    echoes.clear();
    forms.clear();
    secrets.clear();
    Object.assign(totals, freshStats());
    json(ctx, 200, { reset: true });
    return;
  }

  // An issuer whose discovery document names this server's token endpoint by another host
  // name (localhost instead of 127.0.0.1): same server, a host outside a `127.0.0.1` policy.
  if (path === `${ELSEWHERE_ISSUER_PATH}/.well-known/openid-configuration` && method === 'GET') {
    const tokenEndpoint = new URL(provider.urlFor('token'));
    tokenEndpoint.hostname = 'localhost';
    json(ctx, 200, { issuer: `${issuer}${ELSEWHERE_ISSUER_PATH}`, token_endpoint: tokenEndpoint.href });
    return;
  }

  if (path.startsWith('/__test/')) {
    json(ctx, 404, { error: `no test route ${method} ${path}` });
    return;
  }

  if (path === TOKEN_PATH && method === 'POST') {
    await tokenEndpoint(ctx, next);
    return;
  }

  await next();
}

async function tokenEndpoint(ctx, next) {
  // Read the form body here. oidc-provider's own parser (lib/shared/selective_body.js) sees the
  // consumed stream (req.readable === false) and falls back to ctx.req.body, which it parses
  // with querystring exactly as it would have parsed the stream.
  let raw;
  try {
    raw = await readRaw(ctx.req);
  } catch (e) {
    json(ctx, 400, { error: 'invalid_request', error_description: e.message });
    return;
  }
  const text = raw.toString('utf8');
  ctx.req.body = text;

  const form = new URLSearchParams(ctx.is('application/x-www-form-urlencoded') ? text : '');
  const decoded = decodeJwt(form.get('client_assertion'));
  const clientId = (typeof decoded?.payload?.iss === 'string' && decoded.payload.iss)
    || form.get('client_id')
    || basicAuthUser(ctx.get('authorization'))
    || '';

  totals.token_requests += 1;
  const s = statsFor(clientId);
  s.token_requests += 1;

  if (decoded) {
    remember(assertions, clientId, { header: decoded.header, payload: decoded.payload, received_at_ms: Date.now() });
  }
  remember(forms, clientId, recordableForm(form));
  rememberSecret(clientId, 'assertions', form.get('client_assertion'));
  rememberSecret(clientId, 'client_secrets', form.get('client_secret'));
  rememberSecret(clientId, 'authorizations', ctx.get('authorization'));
  rememberSecret(clientId, 'client_secrets', basicAuthPassword(ctx.get('authorization')));

  // Requests being answered right now, for this client and in all: from here until the answer
  // (or the client giving up on a `hang`).
  for (const c of [s, totals]) {
    c.in_flight += 1;
    c.peak_in_flight = Math.max(c.peak_in_flight, c.in_flight);
  }
  try {
    await answer(ctx, next, clientId, text, s);
  } finally {
    for (const c of [s, totals]) c.in_flight -= 1;
  }
}

// The answer to a token request: the client's fault if it has one, else the provider's.
async function answer(ctx, next, clientId, text, s) {
  const faultKey = faults.has(clientId) ? clientId : (faults.has('*') ? '*' : undefined);
  if (faultKey !== undefined) {
    const fault = faults.get(faultKey);
    if (fault.times !== null) {
      fault.times -= 1;
      if (fault.times <= 0) faults.delete(faultKey);
    }
    log(`token request from ${clientId || '<unknown>'}: fault ${fault.mode}`);
    if (fault.mode === 'hang') {
      // Never answer; keep the socket open until the client gives up (or we exit).
      ctx.respond = false;
      await new Promise((resolve) => {
        if (ctx.req.socket.destroyed) resolve();
        else ctx.req.socket.once('close', resolve);
      });
      return;
    }
    if (fault.mode === 'echo') {
      // A careless server: repeats the request in its error, as received and "helpfully"
      // decoded (the Basic credentials base64-decoded, then percent-decoded).
      const authorization = ctx.get('authorization');
      const m = /^basic\s+(\S+)\s*$/i.exec(authorization);
      const credentials = m ? Buffer.from(m[1], 'base64').toString('utf8') : '';
      let decoded = credentials;
      try {
        decoded = decodeURIComponent(credentials.replace(/\+/g, ' '));
      } catch { /* keep it as it is */ }
      const description = `rejected request: authorization=${authorization || '(none)'}`
        + ` credentials=${credentials} decoded=${decoded} body=${text}`;
      let list = echoes.get(clientId);
      if (!list) {
        list = [];
        echoes.set(clientId, list);
      }
      list.push(description);
      json(ctx, fault.status, { error: fault.error, error_description: description });
      return;
    }
    if (fault.delay_ms > 0) await new Promise((r) => setTimeout(r, fault.delay_ms));
    if (fault.status === 200) rememberSecret(clientId, 'access_tokens', accessTokenOf(fault.body));
    ctx.status = fault.status;
    for (const [k, v] of Object.entries(fault.headers)) ctx.set(k, String(v));
    if (fault.body) {
      ctx.body = fault.body;
      if (fault.content_type) ctx.type = fault.content_type;
    } else {
      ctx.body = '';
    }
    return;
  }

  await next();

  if (ctx.status === 200) {
    totals.token_successes += 1;
    s.token_successes += 1;
    rememberSecret(clientId, 'access_tokens', accessTokenOf(ctx.body));
  }
  log(`token request from ${clientId || '<unknown>'}: ${ctx.status}`);
}

// In oidc-provider 9 the Provider instance is the Koa application itself (`provider.app` is a
// deprecated alias); its middleware array already holds the provider's own stack.
provider.middleware.unshift(testRoutes);

if (DEBUG) {
  provider.on('server_error', (ctx, err) => log('server_error', err));
  for (const event of ['grant.error', 'introspection.error', 'registration_create.error']) {
    provider.on(event, (ctx, err) => log(event, err.error ?? err.message, '-', err.error_description ?? '',
      err.error_detail ? `(${err.error_detail})` : '', err.cause?.message ? `[${err.cause.message}]` : ''));
  }
}

const callback = provider.callback();
for (const listener of new Set([server, controlServer, ...tlsListeners.values()])) {
  listener.on('request', callback);
}

// Discovery is the source of truth for the advertised endpoints. Asked over the issuer's own
// listener (oidc-provider builds some endpoint URLs from the request's origin). Over HTTPS
// this process asks itself without checking its certificate: it does not know the test CA.
async function discover() {
  const url = `${issuer}/.well-known/openid-configuration`;
  if (!TLS) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`discovery failed: ${r.status}`);
    return r.json();
  }
  return new Promise((resolve, reject) => {
    https.get(url, { rejectUnauthorized: false }, (r) => {
      const chunks = [];
      r.on('data', (c) => chunks.push(c));
      r.on('end', () => {
        if (r.statusCode !== 200) reject(new Error(`discovery failed: ${r.statusCode}`));
        else resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      });
    }).on('error', reject);
  });
}
const discovery = await discover();

const ready = {
  issuer: discovery.issuer,
  token_endpoint: discovery.token_endpoint,
  introspection_endpoint: discovery.introspection_endpoint,
  registration_endpoint: discovery.registration_endpoint,
  port,
  control,
  tls_ports: tlsPorts,
};
process.stdout.write(`${JSON.stringify(ready)}\n`);
