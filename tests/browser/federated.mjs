// Federated identity end to end: real clients against a kfsec whose users come from real
// upstreams (scripts/federation-fixtures.sh): Debian's slapd (ldap connector, ldaps with a
// certificate from kfsec's CA), a second kfsec process as the OpenID provider (oidc
// connector), an Entra ID + Graph shaped provider (microsoft connector,
// tests/fixtures/fake_entra.py), plus the local password database.
//
//   KFSEC_BIN=target/debug/kfsec node tests/browser/federated.mjs
//
// Headless Chromium (Debian's /usr/bin/chromium through playwright-core) goes through the
// connector chooser to each upstream and lands on the home page as the mapped user (for
// Entra: the lowercased UPN and the Graph group names, read from two getMemberGroups pages); a wrong
// LDAP password shows the form again; a dead upstream shows a 502/504 page with a way back;
// `kfsec login` (device flow) completed through the LDAP connector gives a kubeconfig that
// kubectl uses, and a Group RoleBinding for one of the user's LDAP groups grants what the user
// could not do before; a user deleted from the directory gets invalid_grant at the next refresh
// and loses their gatekeeper session. Screenshots go to tests/artifacts/.
// Last line printed: `federated: N passed, M failed`.

import { spawn, execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { CHROMIUM, freePort, launchChromium, sleep, startKfsec, stopProcess } from './lib.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const BIN = path.resolve(ROOT, process.env.KFSEC_BIN || 'target/debug/kfsec');
const FIXTURES = path.join(ROOT, 'scripts', 'federation-fixtures.sh');
const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');
const STEP_TIMEOUT_MS = 15_000;

const LOCAL = { email: 'local.user@example.com', password: 'local password 1', groups: ['local-team'] };
const CLIENT = { id: 'fed-test-cli', secret: 'fed-test-cli-secret-0123456789' };

let kfsec = null;
let browser = null;
let dataRoot = null;
let logFile = null;
let fixturesUp = false;
let fx = null; // fixtures.json
let base = null;
let mainCa = null;
const results = [];

const log = (msg) => console.log(`federated: ${msg}`);

function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}

function sameSet(got, want) {
  return JSON.stringify([...got].sort()) === JSON.stringify([...want].sort());
}

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push(true);
    log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push(false);
    log(`FAIL ${name}: ${e.message}`);
  }
}

// An HTTPS request trusting only kfsec's CA (not the browser's ignoreHTTPSErrors).
function https(url, { method = 'GET', headers = {}, body = null } = {}) {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method, headers, ca: mainCa, timeout: 15_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error(`timeout: ${method} ${url}`)));
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

function tokenRequest(form) {
  const body = new URLSearchParams(form).toString();
  const basic = Buffer.from(`${CLIENT.id}:${CLIENT.secret}`).toString('base64');
  return https(`${base}/dex/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Authorization: `Basic ${basic}`, 'Content-Length': Buffer.byteLength(body) },
    body,
  });
}

function jwtClaims(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString('utf8'));
}

function kubectl(kubeconfig, args, input = null) {
  const r = spawnSync('kubectl', ['--kubeconfig', kubeconfig, '--cache-dir', path.join(dataRoot, 'kube-cache'), '--request-timeout=10s', ...args],
    { input, encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, out: (r.stdout || '') + (r.stderr || '') };
}

function admin(args, input = null) {
  const r = kubectl(path.join(dataRoot, 'data', 'admin.kubeconfig'), args, input);
  expect(r.code === 0, `admin kubectl ${args.join(' ')}: ${r.out}`);
  return r.out;
}

async function until(what, fn, ms = 5_000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}

// A fresh, unmodified browser profile: Chromium's own favicon requests and kfsec's own CSP
// (a login form may redirect to its client's origin) are part of what is tested.
async function newPage() {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 700 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  return { context, page: await context.newPage() };
}

// GET / and land on the chooser.
async function openChooser(page) {
  await page.goto(`${base}/`, { waitUntil: 'load' });
  await page.locator('.choices').waitFor({ state: 'visible' });
  expect(page.url().startsWith(`${base}/dex/auth?`), `expected the chooser, at ${page.url()}`);
}

async function submitLogin(page, login, password) {
  await page.fill('#login', login);
  await page.fill('#password', password);
  const [resp] = await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('#submit-login')]);
  return resp;
}

async function session(context) {
  // (the name a browser is held to; the plain-named twin holds the same value)
  return (await context.cookies(base)).find((c) => c.name === '__Host-authservice_session');
}

// On the home page: the user and groups shown, the identity headers the gatekeeper sends.
async function expectHome(page, context, email, groups, shot) {
  expect(page.url() === `${base}/`, `expected the home page, at ${page.url()}`);
  const user = (await page.locator('#user').innerText()).trim();
  expect(user === email, `#user shows ${JSON.stringify(user)}, expected ${email}`);
  const shown = await page.locator('#groups code').allInnerTexts();
  expect(sameSet(shown, groups), `#groups shows ${JSON.stringify(shown)}, expected ${JSON.stringify(groups)}`);
  const s = await session(context);
  expect(s, 'no __Host-authservice_session cookie after login');
  const r = await https(`${base}/authservice/check`, { headers: { Cookie: `authservice_session=${s.value}` } });
  expect(r.status === 200, `/authservice/check: HTTP ${r.status}`);
  expect(r.headers['kubeflow-userid'] === email, `kubeflow-userid: ${r.headers['kubeflow-userid']}`);
  const hdrGroups = (r.headers['kubeflow-groups'] || '').split(',').filter(Boolean);
  expect(sameSet(hdrGroups, groups), `kubeflow-groups: ${r.headers['kubeflow-groups']}`);
  if (shot) await page.screenshot({ path: path.join(ARTIFACTS, shot), fullPage: true });
  return s;
}

async function logout(page, s) {
  // The logout ends on kfsec's "You are logged out" page; "Log in again" leads to the chooser.
  await Promise.all([page.waitForURL(/\/oauth2\/logged_out$/, { waitUntil: 'load' }), page.click('#logout')]);
  await page.locator('#login-again').waitFor({ state: 'visible' });
  await Promise.all([page.waitForURL(/\/dex\/auth\?/, { waitUntil: 'load' }), page.click('#login-again')]);
  await page.locator('.choices').waitFor({ state: 'visible' });
  const r = await https(`${base}/authservice/check`, { headers: { Cookie: `authservice_session=${s.value}` } });
  expect(r.status === 401, `old session still accepted after logout: HTTP ${r.status}`);
}

async function setup() {
  if (!existsSync(BIN)) throw new Error(`kfsec binary not found at ${BIN} (cargo build -p kfsec, or set KFSEC_BIN)`);
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found (run scripts/install-test-deps.sh)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  dataRoot = mkdtempSync(path.join(tmpdir(), 'kfsec-federated-'));
  const httpsPort = await freePort();
  const adminPort = await freePort();
  const deadPort = await freePort(); // closed: nothing listens there
  base = `https://localhost:${httpsPort}`;

  const fxDir = path.join(dataRoot, 'fixtures');
  execFileSync('bash', [FIXTURES, 'start', fxDir, `${base}/dex`], { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, KFSEC_BIN: BIN }, timeout: 90_000 });
  fixturesUp = true;
  fx = JSON.parse(readFileSync(path.join(fxDir, 'fixtures.json'), 'utf8'));

  const hash = execFileSync(BIN, ['hash-password'], { input: `${LOCAL.password}\n`, encoding: 'utf8' }).trim();
  const configPath = path.join(dataRoot, 'kfsec.yaml');
  writeFileSync(configPath, [
    'apiVersion: kfsec/v1',
    `publicURL: ${base}`,
    'enablePasswordDB: true',
    'staticPasswords:',
    `- email: ${LOCAL.email}`,
    `  hash: "${hash}"`,
    '  username: local-user',
    '  userID: "l-1"',
    `  groups: [${LOCAL.groups.join(', ')}]`,
    'staticClients:',
    `- id: ${CLIENT.id}`,
    '  name: Federated test CLI',
    `  secret: ${CLIENT.secret}`,
    '  redirectURIs: ["http://127.0.0.1:5555/cb"]',
    'oauth2:',
    '  passwordConnector: ldap',
    readFileSync(fx.CONNECTORS_YAML, 'utf8').trimEnd(),
    '- type: oidc',
    '  id: dead',
    '  name: Broken upstream',
    '  config:',
    `    issuer: https://127.0.0.1:${deadPort}/dex`,
    '    clientID: "dead-client"',
    '    clientSecret: "dead-secret"',
    `    redirectURI: ${base}/dex/callback`,
    '    scopes: [profile, email, groups, offline_access]',
    '',
  ].join('\n'));

  logFile = path.join(dataRoot, 'kfsec.log');
  kfsec = await startKfsec(BIN, { config: configPath, dataDir: path.join(dataRoot, 'data'), httpsPort, adminPort, logFile });
  mainCa = readFileSync(path.join(dataRoot, 'data', 'pki', 'ca.crt'));
  log(`kfsec ready at ${base} (pid ${kfsec.pid}); upstream ${fx.UPSTREAM_ISSUER}, slapd ${fx.LDAPS_URI}, fake Entra ${fx.MS_URL}`);

  // Workspaces for the kubectl check: the LDAP user's own, and a team namespace they are not in.
  admin(['apply', '-f', '-'], [
    'apiVersion: kubeflow.org/v1', 'kind: Profile', 'metadata: {name: fed-juergen}',
    `spec: {owner: {kind: User, name: ${fx.LDAP_EMAIL}}}`, '---',
    'apiVersion: kubeflow.org/v1', 'kind: Profile', 'metadata: {name: team-platform}',
    'spec: {owner: {kind: User, name: owner@example.org}}', '',
  ].join('\n'));

  browser = await launchChromium();
}

async function tests() {
  const ldapGroups = fx.LDAP_GROUPS.split(' ');
  const upstreamGroups = fx.UPSTREAM_GROUPS.split(' ');
  const msGroups = fx.MS_GROUPS.split(',');

  await check('the front door sends the browser to the chooser with every connector', async () => {
    const { context, page } = await newPage();
    await openChooser(page);
    const buttons = (await page.locator('.choices a').allInnerTexts()).map((t) => t.trim());
    expect(sameSet(buttons, ['Log in with Corporate LDAP', 'Log in with Upstream kfsec', 'Log in with Contoso Entra ID',
      'Log in with Broken upstream', 'Log in with Email']),
      `chooser shows ${JSON.stringify(buttons)}`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'chooser.png'), fullPage: true });
    await context.close();
  });

  await check("a real browser's favicon request during a login does not break it (ldap, unmodified Chromium)", async () => {
    const { context, page } = await newPage();
    await openChooser(page);
    await Promise.all([page.waitForURL(/\/dex\/auth\/ldap\/login/), page.click('#connector-ldap')]);
    await submitLogin(page, fx.LDAP_USER, fx.LDAP_PASSWORD);
    const text = page.url() === `${base}/` ? '' : (await page.locator('main').innerText()).trim();
    expect(page.url() === `${base}/`, `login ended at ${page.url()}: ${JSON.stringify(text.slice(0, 160))}`);
    await context.close();
  });

  await check('ldap: a wrong password shows the form again with the error, no session', async () => {
    const { context, page } = await newPage();
    await openChooser(page);
    await Promise.all([page.waitForURL(/\/dex\/auth\/ldap\/login/), page.click('#connector-ldap')]);
    const label = (await page.locator('label[for=login]').innerText()).trim();
    expect(label === 'Directory user', `usernamePrompt not shown: ${JSON.stringify(label)}`);
    const resp = await submitLogin(page, fx.LDAP_USER, 'not the password');
    expect(resp.status() === 401, `status ${resp.status()}`);
    expect(page.url().startsWith(`${base}/dex/auth/ldap/login`), `expected the form again, at ${page.url()}`);
    const err = (await page.locator('.err[role=alert]').innerText()).trim();
    expect(/invalid/i.test(err), `error text ${JSON.stringify(err)}`);
    expect(!(await session(context)), 'session cookie after a wrong password');
    await context.close();
  });

  await check(`ldap: ${fx.LDAP_USER} (non-ASCII name and password) lands home as ${fx.LDAP_EMAIL} with the directory's groups, logs out`, async () => {
    const { context, page } = await newPage();
    await openChooser(page);
    await Promise.all([page.waitForURL(/\/dex\/auth\/ldap\/login/), page.click('#connector-ldap')]);
    await submitLogin(page, fx.LDAP_USER, fx.LDAP_PASSWORD);
    const s = await expectHome(page, context, fx.LDAP_EMAIL, ldapGroups, 'home-ldap.png');
    await logout(page, s);
    await context.close();
  });

  await check("an upstream kfsec's login form may redirect the browser to its client on another origin (unmodified CSP)", async () => {
    const { context, page } = await newPage();
    const blocked = [];
    page.on('console', (m) => { if (/Content Security Policy/.test(m.text())) blocked.push(m.text().replace(/state=[\w.-]*/g, 'state=…')); });
    await openChooser(page);
    await Promise.all([page.waitForURL((u) => u.href.startsWith(fx.UPSTREAM_ISSUER)), page.click('#connector-upstream')]);
    await page.locator('#login').waitFor({ state: 'visible' });
    await page.fill('#login', fx.UPSTREAM_EMAIL);
    await page.fill('#password', fx.UPSTREAM_PASSWORD);
    await page.click('#submit-login');
    await page.waitForURL(`${base}/`, { waitUntil: 'load', timeout: 5_000 }).catch(() => {});
    expect(blocked.length === 0, `Chromium blocked the redirect: ${blocked[0]}`);
    expect(page.url() === `${base}/`, `login ended at ${page.url()}`);
    await context.close();
  });

  await check(`oidc: the upstream kfsec's own login form, then home as ${fx.UPSTREAM_EMAIL} with the upstream's groups, logs out`, async () => {
    const { context, page } = await newPage();
    await openChooser(page);
    await Promise.all([page.waitForURL((u) => u.href.startsWith(fx.UPSTREAM_ISSUER)), page.click('#connector-upstream')]);
    await page.locator('#login').waitFor({ state: 'visible' });
    expect(page.url().startsWith(`${fx.UPSTREAM_ISSUER}/auth/local/login`), `expected the upstream's form, at ${page.url()}`);
    await submitLogin(page, fx.UPSTREAM_EMAIL, fx.UPSTREAM_PASSWORD);
    if (page.url() !== `${base}/`) await page.waitForURL(`${base}/`, { waitUntil: 'load' });
    const s = await expectHome(page, context, fx.UPSTREAM_EMAIL, upstreamGroups, 'home-oidc.png');
    await logout(page, s);
    await context.close();
  });

  await check(`microsoft: Entra user lands home as ${fx.MS_EMAIL} with the Graph group names, logs out`, async () => {
    const seen = async () => {
      const r = await fetch(`${fx.MS_URL}/_fake/requests`);
      expect(r.status === 200, `fake Entra /_fake/requests: HTTP ${r.status}`);
      return r.json();
    };
    const before = (await seen()).length;
    const { context, page } = await newPage();
    await openChooser(page);
    // Entra's authorize endpoint shows no page (a signed-in session): straight back to kfsec, home.
    await Promise.all([page.waitForURL(`${base}/`, { waitUntil: 'load' }), page.click('#connector-microsoft')]);
    const s = await expectHome(page, context, fx.MS_EMAIL, msGroups, 'home-microsoft.png');
    // What kfsec asked of Entra and Graph on the way.
    const reqs = (await seen()).slice(before);
    const paths = reqs.map((r) => `${r.method} ${r.path}`);
    const auth = reqs.find((r) => r.path.endsWith('/oauth2/v2.0/authorize'));
    expect(auth && auth.path === `/${fx.MS_TENANT}/oauth2/v2.0/authorize`, `no authorize request for the tenant: ${JSON.stringify(paths)}`);
    expect(auth.query.code_challenge_method === 'S256' && auth.query.redirect_uri === `${base}/dex/callback`,
      `authorize query ${JSON.stringify(auth.query)}`);
    expect(auth.query.scope.split(' ').includes('directory.read.all'), `groups not asked for: scope ${auth.query.scope}`);
    const tok = reqs.filter((r) => r.path.endsWith('/oauth2/v2.0/token'));
    expect(tok.length === 1 && tok[0].grant_type === 'authorization_code' && tok[0].has_verifier, `token requests ${JSON.stringify(tok)}`);
    const me = reqs.filter((r) => r.path === '/v1.0/me');
    expect(me.length === 1 && me[0].select.split(',').includes('userPrincipalName'), `/me requests ${JSON.stringify(me)}`);
    const pages = reqs.filter((r) => r.path === '/v1.0/me/getMemberGroups');
    expect(pages.length === 2 && pages[1].skiptoken, `getMemberGroups pages ${JSON.stringify(pages)} (the @odata.nextLink not followed?)`);
    expect(reqs.some((r) => r.path === '/v1.0/directoryObjects/getByIds' && r.ids === msGroups.length), `getByIds: ${JSON.stringify(paths)}`);
    await logout(page, s);
    await context.close();
  });

  await check(`local: ${LOCAL.email} through "Log in with Email", logs out`, async () => {
    const { context, page } = await newPage();
    await openChooser(page);
    await Promise.all([page.waitForURL(/\/dex\/auth\/local\/login/), page.click('#connector-local')]);
    await submitLogin(page, LOCAL.email, LOCAL.password);
    const s = await expectHome(page, context, LOCAL.email, LOCAL.groups, null);
    await logout(page, s);
    await context.close();
  });

  await check('oidc: a dead upstream shows a 502/504 page (not 500) with a link back to the chooser', async () => {
    const { context, page } = await newPage();
    await openChooser(page);
    const t0 = Date.now();
    const [resp] = await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('#connector-dead')]);
    const took = Date.now() - t0;
    expect([502, 504].includes(resp.status()), `status ${resp.status()} at ${page.url()}`);
    expect(took < 10_000, `the error page took ${took} ms`);
    const text = await page.locator('main').innerText();
    expect(/could not be reached/i.test(text), `page text: ${JSON.stringify(text.slice(0, 200))}`);
    await page.screenshot({ path: path.join(ARTIFACTS, 'upstream-down.png'), fullPage: true });
    await Promise.all([page.waitForURL(/\/dex\/auth\?/), page.click('text=Back to the login')]);
    await page.locator('.choices').waitFor({ state: 'visible' });
    await context.close();
  });

  let kubeconfig = null;
  await check('kfsec login (device flow) completed through the chooser and the ldap connector writes a kubeconfig for the LDAP user', async () => {
    kubeconfig = path.join(dataRoot, 'juergen.kubeconfig');
    const cli = spawn(BIN, ['login', '--server', base, '--ca-file', path.join(dataRoot, 'data', 'pki', 'ca.crt'), '--kubeconfig', kubeconfig],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise((r) => cli.once('exit', (code) => r(code)));
    let stderr = '';
    cli.stderr.on('data', (d) => { stderr += d; });
    try {
      const lines = createInterface({ input: cli.stdout });
      const first = await Promise.race([
        new Promise((r) => lines.once('line', r)),
        sleep(20_000).then(() => { throw new Error(`kfsec login printed nothing: ${stderr}`); }),
      ]);
      const url = first.split(/\s+/).find((w) => w.startsWith('https://'));
      expect(url && url.includes('/dex/device?user_code='), `unexpected first line: ${first}`);
      const { context, page } = await newPage();
      await page.goto(url, { waitUntil: 'load' });
      await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[type=submit]')]);
      if ((await page.locator('.choices').count()) === 0) {
        throw new Error(`no chooser after the device code, at ${page.url()}: ${(await page.locator('main').innerText()).slice(0, 200)}`);
      }
      await Promise.all([page.waitForURL(/\/dex\/auth\/ldap\/login/), page.click('#connector-ldap')]);
      await submitLogin(page, fx.LDAP_USER, fx.LDAP_PASSWORD);
      if ((await page.locator('button[name=approval][value=approve]').count()) > 0) {
        await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('button[name=approval][value=approve]')]);
      }
      expect(page.url().includes('/dex/device/callback'), `expected the device callback, at ${page.url()}`);
      await context.close();
      const code = await Promise.race([exited, sleep(30_000).then(() => 'timeout')]);
      expect(code === 0, `kfsec login exit ${code}: ${stderr}`);
    } finally {
      if (cli.exitCode === null) cli.kill('SIGKILL');
    }
    const token = readFileSync(kubeconfig, 'utf8').split('\n').map((l) => l.trim()).find((l) => l.startsWith('token: ')).slice(7);
    const claims = jwtClaims(token);
    expect(claims.email === fx.LDAP_EMAIL, `token email ${claims.email}`);
    expect(sameSet(claims.groups || [], ldapGroups), `token groups ${JSON.stringify(claims.groups)}`);
  });

  await check('kubectl as the LDAP user: own namespace yes, profiles and the team namespace no; a Group RoleBinding for an LDAP group grants it', async () => {
    expect(kubeconfig && existsSync(kubeconfig), 'no kubeconfig from kfsec login');
    const own = kubectl(kubeconfig, ['get', 'notebooks', '-n', 'fed-juergen']);
    expect(own.code === 0, `get notebooks in the user's own namespace: ${own.out}`);
    const profiles = kubectl(kubeconfig, ['get', 'profiles']);
    expect(profiles.code !== 0 && profiles.out.includes(`User "${fx.LDAP_EMAIL}" cannot list resource "profiles"`),
      `kubectl get profiles as the user: ${profiles.out}`);
    const canI = () => kubectl(kubeconfig, ['auth', 'can-i', 'list', 'notebooks', '-n', 'team-platform']);
    let r = canI();
    expect(r.code === 1 && r.out.trim() === 'no', `can-i before any binding: ${r.code} ${r.out}`);
    r = kubectl(kubeconfig, ['get', 'notebooks', '-n', 'team-platform']);
    expect(r.code !== 0 && /Forbidden/.test(r.out), `get notebooks in team-platform before: ${r.out}`);
    const binding = (name, group) => [
      'apiVersion: rbac.authorization.k8s.io/v1', 'kind: RoleBinding',
      `metadata: {name: ${name}, namespace: team-platform}`,
      'roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kubeflow-view}',
      `subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: ${group}}]`, '',
    ].join('\n');
    // A group the user is not in grants nothing...
    admin(['apply', '-f', '-'], binding('developers-view', 'developers'));
    await sleep(500);
    r = canI();
    expect(r.code === 1, `a binding for a group the user is not in granted access: ${r.out}`);
    // ...one of their directory groups (platform: through the nested admins group) does.
    admin(['apply', '-f', '-'], binding('platform-view', 'platform'));
    await until('the Group RoleBinding to take effect', () => canI().code === 0);
    r = kubectl(kubeconfig, ['get', 'notebooks', '-n', 'team-platform']);
    expect(r.code === 0, `get notebooks in team-platform after the binding: ${r.out}`);
  });

  await check(`a user deleted from the directory: refresh → 400 invalid_grant, gatekeeper session ends`, async () => {
    const scope = 'openid email groups offline_access';
    let r = await tokenRequest({ grant_type: 'password', username: fx.LDAP_USER2, password: fx.LDAP_PASSWORD2, scope });
    expect(r.status === 200, `password grant (oauth2.passwordConnector: ldap): ${r.status} ${r.text}`);
    let tok = JSON.parse(r.text);
    expect(jwtClaims(tok.id_token).email === fx.LDAP_EMAIL2, `password grant token email ${jwtClaims(tok.id_token).email}`);
    expect(tok.refresh_token, 'no refresh token');
    r = await tokenRequest({ grant_type: 'refresh_token', refresh_token: tok.refresh_token });
    expect(r.status === 200, `refresh while the user exists: ${r.status} ${r.text}`);
    tok = JSON.parse(r.text);

    const { context, page } = await newPage();
    await openChooser(page);
    await Promise.all([page.waitForURL(/\/dex\/auth\/ldap\/login/), page.click('#connector-ldap')]);
    await submitLogin(page, fx.LDAP_USER2, fx.LDAP_PASSWORD2);
    const s = await expectHome(page, context, fx.LDAP_EMAIL2, ['admins', 'platform', 'developers'], null);

    const del = spawnSync('ldapdelete', ['-x', '-H', fx.LDAP_URI, '-D', fx.LDAP_ROOT_DN, '-w', fx.LDAP_ROOT_PW,
      `uid=${fx.LDAP_USER2},ou=people,dc=example,dc=org`], { encoding: 'utf8', timeout: 10_000 });
    expect(del.status === 0, `ldapdelete: ${del.stdout}${del.stderr}`);

    r = await tokenRequest({ grant_type: 'refresh_token', refresh_token: tok.refresh_token });
    expect(r.status === 400, `refresh after the deletion: ${r.status} ${r.text}`);
    expect((r.headers['content-type'] || '').startsWith('application/json'), `content-type ${r.headers['content-type']}`);
    expect(JSON.parse(r.text).error === 'invalid_grant', r.text);
    const c = await https(`${base}/authservice/check`, { headers: { Cookie: `authservice_session=${s.value}` } });
    expect(c.status === 401, `the deleted user's session still accepted: HTTP ${c.status}`);
    await page.goto(`${base}/`, { waitUntil: 'load' });
    await page.locator('.choices').waitFor({ state: 'visible' });
    expect(page.url().startsWith(`${base}/dex/auth?`), `the deleted user's next request went to ${page.url()}`);
    await context.close();
  });
}

let setupOk = false;
try {
  await setup();
  setupOk = true;
  await tests();
} catch (e) {
  console.error(`federated: FAIL setup: ${e.message}`);
} finally {
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  try { await stopProcess(kfsec); } catch (e) { console.error(`federated: stopping kfsec: ${e.message}`); }
  if (fixturesUp) {
    try { execFileSync('bash', [FIXTURES, 'stop', path.join(dataRoot, 'fixtures')], { stdio: 'inherit' }); } catch (e) { console.error(`federated: stopping fixtures: ${e.message}`); }
  }
}
const passed = results.filter(Boolean).length;
const failed = results.length - passed + (setupOk ? 0 : 1);
if (failed > 0 && logFile && existsSync(logFile)) {
  const lines = readFileSync(logFile, 'utf8').trimEnd().split('\n').filter((l) => !/^\s+(\d+:|at )/.test(l));
  console.error(`federated: last kfsec log lines (${logFile}):`);
  for (const l of lines.slice(-25)) console.error(`  ${l}`);
}
if (dataRoot && failed === 0 && !process.env.KEEP_DATA) rmSync(dataRoot, { recursive: true, force: true });
console.log(`federated: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
