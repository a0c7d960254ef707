// End-to-end self test of server.mjs: `node tests/idp/selftest.mjs` (any cwd).
// Exits 0 when every check passes, non-zero otherwise; bounded by a 30 s overall timeout.
// The child IdP is always stopped at the end, also on failure.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import * as jose from 'jose';

const SERVER = fileURLToPath(new URL('./server.mjs', import.meta.url));
const OVERALL_TIMEOUT_MS = 30_000;
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

let child;
let passed = 0;
let failed = 0;

function killChild() {
  if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}
process.on('exit', killChild);

const overall = setTimeout(() => {
  console.error(`FAIL: overall timeout of ${OVERALL_TIMEOUT_MS} ms reached`);
  killChild();
  process.exit(2);
}, OVERALL_TIMEOUT_MS);

function check(cond, what, detail) {
  if (cond) {
    passed += 1;
    console.log(`ok - ${what}`);
  } else {
    failed += 1;
    console.log(`not ok - ${what}${detail !== undefined ? `: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}` : ''}`);
  }
  return cond;
}

// Like check, but stops the run: later steps depend on it.
function must(cond, what, detail) {
  if (!check(cond, what, detail)) throw new Error(`required check failed: ${what}`);
}

// ----------------------------------------------------------------------------------------------
// Start the IdP and read its ready line.
// ----------------------------------------------------------------------------------------------
async function startIdp() {
  const t0 = performance.now();
  child = spawn(process.execPath, [SERVER], {
    cwd: '/',
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const rl = createInterface({ input: child.stdout });
  const lines = [];
  const first = await new Promise((resolve, reject) => {
    rl.on('line', (line) => {
      lines.push(line);
      if (lines.length === 1) resolve(line);
    });
    child.once('exit', (code) => reject(new Error(`IdP exited early with ${code}`)));
    setTimeout(() => reject(new Error('IdP did not print its ready line within 10 s')), 10_000);
  });
  const startupMs = performance.now() - t0;
  return { ready: JSON.parse(first), startupMs, exited, lines };
}

// ----------------------------------------------------------------------------------------------
// Helpers
// ----------------------------------------------------------------------------------------------
async function newKey(alg) {
  const { publicKey, privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  const kid = `${alg.toLowerCase()}-${crypto.randomUUID().slice(0, 8)}`;
  const jwk = { ...(await jose.exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { alg, kid, jwk, privateKey };
}

async function register(ready, metadata) {
  const res = await fetch(ready.registration_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: JSON.stringify(metadata),
  });
  return { status: res.status, body: await res.json() };
}

async function registerJwtClient(ready, key, extra = {}) {
  return register(ready, {
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [key.jwk] },
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'gipod_read api_read',
    ...extra,
  });
}

async function assertion(key, clientId, aud, overrides = {}) {
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    iss: clientId, sub: clientId, aud, jti: crypto.randomUUID(), iat: now, exp: now + 300, ...overrides,
  };
  return new jose.SignJWT(payload)
    .setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT' })
    .sign(key.privateKey);
}

async function tokenRequest(ready, form, { headers = {}, signal } = {}) {
  const res = await fetch(ready.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json', ...headers },
    body: new URLSearchParams(form).toString(),
    signal,
  });
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: res.status, headers: res.headers, body, text };
}

function jwtForm(signed, scope = 'gipod_read') {
  return {
    grant_type: 'client_credentials',
    scope,
    client_assertion_type: ASSERTION_TYPE,
    client_assertion: signed,
  };
}

async function introspect(ready, token) {
  const res = await fetch(ready.introspection_endpoint, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
      authorization: `Basic ${Buffer.from('introspector:introspector-secret').toString('base64')}`,
    },
    body: new URLSearchParams({ token }).toString(),
  });
  return { status: res.status, body: await res.json() };
}

async function getJson(url) {
  const res = await fetch(url);
  return { status: res.status, body: await res.json() };
}

async function setFault(ready, fault) {
  const res = await fetch(`${ready.issuer}/__test/fault`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(fault),
  });
  return { status: res.status, body: await res.json() };
}

const stats = (ready, clientId) => getJson(`${ready.issuer}/__test/stats${clientId ? `?client_id=${encodeURIComponent(clientId)}` : ''}`);
const assertionsOf = (ready, clientId) => getJson(`${ready.issuer}/__test/assertions?client_id=${encodeURIComponent(clientId)}`);

// ----------------------------------------------------------------------------------------------
// The checks
// ----------------------------------------------------------------------------------------------
async function run() {
  const { ready, startupMs, exited, lines } = await startIdp();
  console.log(`# IdP ready in ${startupMs.toFixed(0)} ms: ${JSON.stringify(ready)}`);

  must(/^http:\/\/127\.0\.0\.1:\d+$/.test(ready.issuer), 'ready line: issuer is http://127.0.0.1:PORT', ready);
  must(ready.issuer === `http://127.0.0.1:${ready.port}` && Number.isInteger(ready.port), 'ready line: port is a number matching the issuer', ready);
  must(ready.token_endpoint === `${ready.issuer}/token`, 'ready line: token_endpoint', ready);
  check(ready.introspection_endpoint === `${ready.issuer}/token/introspection`, 'ready line: introspection_endpoint', ready);
  check(ready.registration_endpoint === `${ready.issuer}/reg`, 'ready line: registration_endpoint', ready);
  check(Object.keys(ready).sort().join() === 'control,introspection_endpoint,issuer,port,registration_endpoint,tls_ports,token_endpoint', 'ready line: exactly the seven keys', ready);
  check(ready.control === ready.issuer && JSON.stringify(ready.tls_ports) === '{}', 'ready line: without IDP_TLS, control is the issuer and there are no TLS ports', ready);

  const rsa = await newKey('RS256');
  const ec = await newKey('ES256');

  // --- registration
  const regRsa = await registerJwtClient(ready, rsa);
  must(regRsa.status === 201 && typeof regRsa.body.client_id === 'string', 'register RS256 private_key_jwt client (201)', regRsa);
  const rsaId = regRsa.body.client_id;
  const regEc = await registerJwtClient(ready, ec, { token_endpoint_auth_signing_alg: 'ES256' });
  must(regEc.status === 201, 'register ES256 client with token_endpoint_auth_signing_alg (201)', regEc);
  const ecId = regEc.body.client_id;

  // --- RS256 token, aud = issuer
  const tok1 = await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, ready.issuer)));
  must(tok1.status === 200, 'RS256 client_credentials token (200)', tok1.body);
  check(typeof tok1.body.access_token === 'string' && tok1.body.access_token.length > 20, 'access_token is a non-empty opaque string', tok1.body);
  check(!tok1.body.access_token.includes('.'), 'access_token is opaque (not a JWT)', tok1.body);
  check(tok1.body.token_type === 'Bearer', 'token_type is Bearer', tok1.body);
  check(tok1.body.expires_in === 3600, 'expires_in is the number 3600 by default', tok1.body);
  check(tok1.body.scope === 'gipod_read', 'scope is gipod_read', tok1.body);

  // --- ES256 token, aud = token endpoint
  const tok2 = await tokenRequest(ready, jwtForm(await assertion(ec, ecId, ready.token_endpoint), 'gipod_read api_read'));
  must(tok2.status === 200, 'ES256 token with aud = token endpoint (200)', tok2.body);
  check(tok2.body.scope === 'gipod_read api_read', 'two scopes granted', tok2.body);

  // --- introspection by the introspector client
  const intro1 = await introspect(ready, tok1.body.access_token);
  check(intro1.status === 200 && intro1.body.active === true, 'introspection: active true', intro1);
  check(intro1.body.client_id === rsaId, 'introspection: client_id of the token owner', intro1.body);
  check(intro1.body.scope === 'gipod_read' && intro1.body.iss === ready.issuer, 'introspection: scope and iss', intro1.body);
  const introBad = await introspect(ready, 'not-a-token');
  check(introBad.status === 200 && introBad.body.active === false, 'introspection of an unknown token: active false', introBad);

  // --- token_ttl
  const ttlKey = await newKey('RS256');
  const regTtl = await registerJwtClient(ready, ttlKey, { token_ttl: 5 });
  must(regTtl.status === 201 && regTtl.body.token_ttl === 5, 'register client with token_ttl 5', regTtl);
  const tokTtl = await tokenRequest(ready, jwtForm(await assertion(ttlKey, regTtl.body.client_id, ready.issuer)));
  check(tokTtl.status === 200 && tokTtl.body.expires_in === 5, 'token_ttl 5 gives expires_in 5', tokTtl.body);
  const introTtl = await introspect(ready, tokTtl.body.access_token);
  check(introTtl.body.exp - introTtl.body.iat === 5, 'introspected exp - iat is 5', introTtl.body);
  const regTtlBad = await registerJwtClient(ready, ttlKey, { token_ttl: 'soon' });
  check(regTtlBad.status === 400 && regTtlBad.body.error === 'invalid_client_metadata', 'token_ttl must be an integer (400 invalid_client_metadata)', regTtlBad);

  // --- PS256 with a pinned alg; an RS256 assertion from the same key is then refused
  const ps = await newKey('PS256');
  const regPs = await registerJwtClient(ready, ps, { token_endpoint_auth_signing_alg: 'PS256' });
  must(regPs.status === 201, 'register PS256 client', regPs);
  const tokPs = await tokenRequest(ready, jwtForm(await assertion(ps, regPs.body.client_id, ready.issuer)));
  check(tokPs.status === 200, 'PS256 assertion accepted', tokPs.body);

  // --- client_secret_basic client
  const regBasic = await register(ready, {
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api_read',
  });
  must(regBasic.status === 201 && typeof regBasic.body.client_secret === 'string', 'register client_secret_basic client', regBasic);
  const basicAuth = `Basic ${Buffer.from(`${encodeURIComponent(regBasic.body.client_id)}:${encodeURIComponent(regBasic.body.client_secret)}`).toString('base64')}`;
  const tokBasic = await tokenRequest(ready, { grant_type: 'client_credentials', scope: 'api_read' }, { headers: { authorization: basicAuth } });
  check(tokBasic.status === 200 && tokBasic.body.token_type === 'Bearer', 'client_secret_basic token (200)', tokBasic.body);
  const basicStats = await stats(ready, regBasic.body.client_id);
  check(basicStats.body.token_requests === 1 && basicStats.body.token_successes === 1, 'stats identify a Basic-auth client by its user name', basicStats.body);

  // --- audience and resource form fields: recorded; a resource under the test prefix is the
  // token's audience, any other is refused
  const resKey = await newKey('ES256');
  const regRes = await registerJwtClient(ready, resKey);
  must(regRes.status === 201, 'register a client for resource indicators', regRes);
  const resId = regRes.body.client_id;
  const resource = 'https://api.test.example/gipod';
  const resAssertion = await assertion(resKey, resId, ready.issuer);
  const tokRes = await tokenRequest(ready, { ...jwtForm(resAssertion), audience: 'api-client', resource });
  check(tokRes.status === 200, 'a token for a resource under the test prefix (200)', tokRes.body);
  const introRes = await introspect(ready, tokRes.body.access_token);
  check(introRes.body.active === true && introRes.body.aud === resource, 'introspection: the resource is the audience', introRes.body);
  const tokElsewhere = await tokenRequest(ready, { ...jwtForm(await assertion(resKey, resId, ready.issuer)), resource: 'https://elsewhere.example/' });
  check(tokElsewhere.status === 400 && tokElsewhere.body.error === 'invalid_target', 'another resource gives 400 invalid_target', tokElsewhere.text);
  const formsRes = await getJson(`${ready.issuer}/__test/forms?client_id=${encodeURIComponent(resId)}`);
  const form0 = formsRes.body[0];
  check(formsRes.body.length === 2 && form0.audience === 'api-client' && form0.resource === resource && form0.grant_type === 'client_credentials',
    'forms: the fields of each request', formsRes.body);
  check(form0.client_assertion === '(not recorded)' && !JSON.stringify(formsRes.body).includes(resAssertion.split('.')[2]),
    'forms: no assertion value', form0);
  const formsBasic = await getJson(`${ready.issuer}/__test/forms?client_id=${encodeURIComponent(regBasic.body.client_id)}`);
  check(formsBasic.body.length === 1 && !JSON.stringify(formsBasic.body).includes(regBasic.body.client_secret), 'forms: no client secret', formsBasic.body);
  check((await getJson(`${ready.issuer}/__test/forms`)).status === 400, 'forms without client_id: 400');

  // --- secrets: the raw material that passed through, per client and in all
  const secretsRes = await getJson(`${ready.issuer}/__test/secrets?client_id=${encodeURIComponent(resId)}`);
  check(secretsRes.body.assertions.includes(resAssertion) && secretsRes.body.access_tokens.includes(tokRes.body.access_token),
    'secrets: raw assertions and issued tokens', secretsRes.body);
  const secretsAll = await getJson(`${ready.issuer}/__test/secrets`);
  check(secretsAll.body.authorizations.includes(basicAuth) && secretsAll.body.client_secrets.includes(regBasic.body.client_secret)
    && secretsAll.body.access_tokens.includes(tokBasic.body.access_token) && secretsAll.body.assertions.includes(resAssertion),
    'secrets without client_id: the Basic header, client secret, tokens and assertions of all clients', Object.keys(secretsAll.body));

  // --- concurrency: requests answered at the same time, and the peak
  const slowId = 'slow-client';
  const canned = JSON.stringify({ access_token: 'canned-slow-token', token_type: 'Bearer', expires_in: 60 });
  await setFault(ready, { client_id: slowId, mode: 'respond', status: 200, content_type: 'application/json', body: canned, delay_ms: 400 });
  const slow = () => tokenRequest(ready, { grant_type: 'client_credentials', client_id: slowId, client_secret: 'x' });
  const during = slow();
  const racing = [slow(), slow()];
  await new Promise((r) => setTimeout(r, 200));
  const mid = await stats(ready, slowId);
  check(mid.body.in_flight === 3, 'stats: in_flight counts requests being answered', mid.body);
  await Promise.all([during, ...racing]);
  const slowStats = await stats(ready, slowId);
  check(slowStats.body.in_flight === 0 && slowStats.body.peak_in_flight === 3, 'stats: peak_in_flight 3, in_flight 0 after', slowStats.body);
  await setFault(ready, { client_id: slowId, mode: 'none' });
  const slowSecrets = await getJson(`${ready.issuer}/__test/secrets?client_id=${slowId}`);
  check(slowSecrets.body.access_tokens.includes('canned-slow-token'), 'secrets: a token a fault answered with', slowSecrets.body);

  // --- client secret rotation: the new secret works, the old one no longer
  const rotated = await fetch(`${ready.issuer}/__test/rotate-secret`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ client_id: regBasic.body.client_id }),
  }).then(async (r) => ({ status: r.status, body: await r.json() }));
  must(rotated.status === 200 && typeof rotated.body.client_secret === 'string' && rotated.body.client_secret !== regBasic.body.client_secret,
    'rotate-secret gives a new client secret', rotated);
  const oldSecret = await tokenRequest(ready, { grant_type: 'client_credentials', scope: 'api_read' }, { headers: { authorization: basicAuth } });
  check(oldSecret.status === 401 && oldSecret.body.error === 'invalid_client', 'after rotation the old secret is refused', oldSecret.text);
  const newAuth = `Basic ${Buffer.from(`${encodeURIComponent(regBasic.body.client_id)}:${encodeURIComponent(rotated.body.client_secret)}`).toString('base64')}`;
  const newSecret = await tokenRequest(ready, { grant_type: 'client_credentials', scope: 'api_read' }, { headers: { authorization: newAuth } });
  check(newSecret.status === 200, 'after rotation the new secret works', newSecret.body);
  const rotateBad = await fetch(`${ready.issuer}/__test/rotate-secret`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ client_id: rsaId }),
  });
  check(rotateBad.status === 400, 'rotate-secret of a client without a secret is 400', rotateBad.status);

  // --- rejected assertions: replayed jti, wrong aud, expired, wrong key
  const once = await assertion(rsa, rsaId, ready.issuer);
  const first = await tokenRequest(ready, jwtForm(once));
  check(first.status === 200, 'fresh assertion accepted', first.body);
  const replay = await tokenRequest(ready, jwtForm(once));
  check(replay.status === 401 && replay.body.error === 'invalid_client', 'replayed jti gives 401 invalid_client', replay.text);
  console.log(`# replay error body: ${replay.text}`);
  const wrongAud = await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, 'https://elsewhere.example')));
  check(wrongAud.status === 401 && wrongAud.body.error === 'invalid_client', 'wrong aud gives 401 invalid_client', wrongAud.text);
  const past = Math.floor(Date.now() / 1000) - 120;
  const expired = await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, ready.issuer, { iat: past - 60, exp: past })));
  check(expired.status === 401 && expired.body.error === 'invalid_client', 'expired assertion gives 401 invalid_client', expired.text);
  const wrongKey = await tokenRequest(ready, jwtForm(await assertion({ ...ttlKey, kid: rsa.kid }, rsaId, ready.issuer)));
  check(wrongKey.status === 401 && wrongKey.body.error === 'invalid_client', 'assertion signed with another key gives 401 invalid_client', wrongKey.text);
  const scopeBad = await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, ready.issuer), 'api_write'));
  check(scopeBad.status === 400 && scopeBad.body.error === 'invalid_scope', 'a known scope not in the client\'s scope gives 400 invalid_scope', scopeBad.text);

  // --- fault: respond 503 HTML, once
  const before = (await stats(ready, rsaId)).body;
  const html = '<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>';
  const f1 = await setFault(ready, {
    client_id: rsaId, mode: 'respond', status: 503, headers: { 'retry-after': '5' }, body: html, content_type: 'text/html', times: 1,
  });
  check(f1.status === 200, 'POST /__test/fault respond accepted', f1);
  const faulted = await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, ready.issuer)));
  check(faulted.status === 503, 'faulted request gets 503', faulted.status);
  check(faulted.text === html, 'faulted request gets the HTML body', faulted.text);
  check(faulted.headers.get('content-type')?.startsWith('text/html'), 'faulted request has content-type text/html', faulted.headers.get('content-type'));
  check(faulted.headers.get('retry-after') === '5', 'faulted request has retry-after: 5', faulted.headers.get('retry-after'));
  const afterFault = await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, ready.issuer)));
  check(afterFault.status === 200, 'times: 1 fault is used up; the next request succeeds', afterFault.body);
  const after = (await stats(ready, rsaId)).body;
  check(after.token_requests === before.token_requests + 2 && after.token_successes === before.token_successes + 1,
    'faulted request counted in token_requests, not in token_successes', { before, after });

  // --- fault: unlimited until cleared, for another client only
  await setFault(ready, { client_id: ecId, mode: 'respond', status: 500, body: '{"oops":1}', content_type: 'application/json' });
  const e1 = await tokenRequest(ready, jwtForm(await assertion(ec, ecId, ready.issuer)));
  const e2 = await tokenRequest(ready, jwtForm(await assertion(ec, ecId, ready.issuer)));
  check(e1.status === 500 && e2.status === 500 && e2.body.oops === 1, 'fault without times stays until cleared', [e1.status, e2.status]);
  const other = await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, ready.issuer)));
  check(other.status === 200, 'a fault of one client does not touch another', other.status);
  await setFault(ready, { client_id: ecId, mode: 'none' });
  const e3 = await tokenRequest(ready, jwtForm(await assertion(ec, ecId, ready.issuer)));
  check(e3.status === 200, 'mode none clears the fault', e3.body);

  // --- fault: hang
  await setFault(ready, { client_id: rsaId, mode: 'hang' });
  const hangStart = performance.now();
  let hung = false;
  try {
    await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, ready.issuer)), { signal: AbortSignal.timeout(700) });
  } catch (e) {
    hung = e.name === 'TimeoutError' || e.name === 'AbortError';
  }
  check(hung && performance.now() - hangStart >= 650, 'hang: no answer within the client timeout (700 ms)');
  await setFault(ready, { client_id: rsaId, mode: 'none' });
  const afterHang = await tokenRequest(ready, jwtForm(await assertion(rsa, rsaId, ready.issuer)), { signal: AbortSignal.timeout(5000) });
  check(afterHang.status === 200, 'after clearing the hang, requests succeed again', afterHang.body);

  // --- bad fault requests
  const fBad = await setFault(ready, { client_id: rsaId, mode: 'explode' });
  check(fBad.status === 400, 'unknown fault mode is 400', fBad);

  // --- stats
  const s = await stats(ready, rsaId);
  // rsa requests: tok1, once, replay, wrongAud, expired, wrongKey, scopeBad, faulted, afterFault,
  // other, hang, afterHang; successes: tok1, once, afterFault, other, afterHang
  check(s.status === 200 && s.body.token_requests === 12 && s.body.token_successes === 5, 'stats for the RS256 client: 12 requests, 5 successes', s.body);
  const unknown = await stats(ready, 'nobody');
  check(unknown.body.token_requests === 0 && unknown.body.token_successes === 0, 'stats of an unknown client are zeros', unknown.body);
  const total = await stats(ready);
  check(Number.isInteger(total.body.token_requests) && total.body.token_requests >= s.body.token_requests + 5, 'stats without client_id: totals', total.body);

  // --- assertions
  const as = await assertionsOf(ready, rsaId);
  check(as.status === 200 && Array.isArray(as.body) && as.body.length === 12, 'assertions: one entry per assertion received', as.body.length);
  const last = as.body.at(-1);
  check(last.header.alg === 'RS256' && last.header.kid === rsa.kid && last.header.typ === 'JWT', 'assertions: header alg, kid, typ', last.header);
  check(last.payload.iss === rsaId && last.payload.sub === rsaId && last.payload.aud === ready.issuer, 'assertions: payload iss, sub, aud', last.payload);
  check(typeof last.payload.jti === 'string' && last.payload.exp - last.payload.iat === 300, 'assertions: payload jti, iat, exp', last.payload);
  check(!('signature' in last), 'assertions: no signature kept', Object.keys(last));
  const asEc = await assertionsOf(ready, ecId);
  check(asEc.body[0].payload.aud === ready.token_endpoint && asEc.body[0].header.alg === 'ES256', 'assertions: kept per client, aud token endpoint for the ES256 one', asEc.body[0]);

  // --- stdout protocol: nothing after the ready line; exit on stdin EOF
  check(lines.length === 1, 'exactly one line on stdout', lines);
  const t = performance.now();
  child.stdin.end();
  const res = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 3000))]);
  check(res !== 'timeout' && res.code === 0, 'IdP exits (code 0) when its stdin closes', res);
  console.log(`# exit after stdin EOF took ${(performance.now() - t).toFixed(0)} ms`);
}

let code = 0;
try {
  await run();
} catch (e) {
  console.log(`not ok - ${e.stack ?? e}`);
  failed += 1;
} finally {
  killChild();
  clearTimeout(overall);
}
code = failed === 0 ? 0 : 1;
console.log(`selftest: ${passed} passed, ${failed} failed`);
process.exit(code);
