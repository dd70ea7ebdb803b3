// Browser test: people log in to kfsec with headless Chromium, use the dashboard pages (home,
// contributors, registration, /pipeline, "Download kubeconfig" used by kubectl) and log out.
//
//   KFSEC_BIN=target/debug/kfsec node tests/browser/login.mjs
//
// Starts kfsec on free loopback ports with a temporary data dir and a config holding three
// static users (an owner, a viewer, a newcomer who owns nothing) and `registrationFlow: true`,
// drives Debian's /usr/bin/chromium through playwright-core, and always stops kfsec.
// Screenshots go to tests/artifacts/.
// Last line printed: `browser: 1 passed, 0 failed` or `browser: 0 passed, 1 failed`.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  CHROMIUM, ROOT, freePort, launchChromium, newContext, screenshot, sleep, startKfsec, stopProcess, submitLogin,
} from './lib.mjs';

const BIN = path.resolve(ROOT, process.env.KFSEC_BIN || 'target/debug/kfsec');
const EMAIL = 'user@example.com';
const PASSWORD = 'correct-horse-battery';
const VIEWER = 'viewer@example.com';
// Owns no workspace: the registration flow creates one for them.
const NEWCOMER = 'new.comer@example.com';

let kfsec = null;
let browser = null;
let dataRoot = null;
let logFile = null;
let step = 'setup';

function log(msg) {
  console.log(`browser: ${msg}`);
}

function fail(msg) {
  throw new Error(`[${step}] ${msg}`);
}

async function main() {
  if (!existsSync(BIN)) fail(`kfsec binary not found at ${BIN} (build it: cargo build -p kfsec, or set KFSEC_BIN)`);
  if (!existsSync(CHROMIUM)) fail(`${CHROMIUM} not found (run scripts/install-test-deps.sh)`);

  dataRoot = mkdtempSync(path.join(tmpdir(), 'kfsec-browser-'));
  const dataDir = path.join(dataRoot, 'data');
  const httpsPort = await freePort();
  const adminPort = await freePort();
  const base = `https://localhost:${httpsPort}`;

  step = 'hash-password';
  const hash = execFileSync(BIN, ['hash-password'], { input: `${PASSWORD}\n`, encoding: 'utf8' }).trim();
  if (!hash.startsWith('$2')) fail(`unexpected hash-password output: ${JSON.stringify(hash)}`);

  const configPath = path.join(dataRoot, 'kfsec.yaml');
  writeFileSync(
    configPath,
    [
      'apiVersion: kfsec/v1',
      `publicURL: ${base}`,
      'registrationFlow: true',
      'staticPasswords:',
      `- email: ${EMAIL}`,
      `  hash: "${hash}"`,
      '  username: user',
      '  userID: "15841185641784"',
      `- email: ${VIEWER}`,
      `  hash: "${hash}"`,
      '  username: viewer',
      '  userID: "15841185641785"',
      `- email: ${NEWCOMER}`,
      `  hash: "${hash}"`,
      '  username: newcomer',
      '  userID: "15841185641786"',
      '',
    ].join('\n'),
  );

  step = 'start kfsec';
  logFile = path.join(dataRoot, 'kfsec.log');
  kfsec = await startKfsec(BIN, { config: configPath, dataDir, httpsPort, adminPort, logFile });
  log(`kfsec ready at ${base} (pid ${kfsec.pid})`);

  step = 'launch chromium';
  browser = await launchChromium();
  const context = await newContext(browser);
  const page = await context.newPage();

  step = 'open / and get redirected to the login form';
  await page.goto(`${base}/`, { waitUntil: 'load' });
  await page.locator('#login').waitFor({ state: 'visible' });
  if (!page.url().startsWith(`${base}/dex/auth/local/login`)) fail(`expected the login form, at ${page.url()}`);
  log(`login form at ${new URL(page.url()).pathname}`);

  step = 'wrong password';
  await page.fill('#login', EMAIL);
  await page.fill('#password', 'not-the-password');
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click('#submit-login')]);
  if (page.url().includes('code=')) fail(`URL carries a code after a wrong password: ${page.url()}`);
  if (!page.url().startsWith(`${base}/dex/auth/local/login`)) fail(`expected the login form again, at ${page.url()}`);
  if (!(await page.locator('#login').isVisible())) fail('login form not shown again after a wrong password');
  const err = page.locator('.err, [role=alert]');
  if ((await err.count()) === 0) fail('no error message after a wrong password');
  const errText = (await err.first().innerText()).trim();
  if (!/invalid/i.test(errText)) fail(`unexpected error text: ${JSON.stringify(errText)}`);
  if ((await context.cookies()).some((c) => c.name.endsWith('authservice_session'))) fail('session cookie set after a wrong password');
  log(`wrong password refused: "${errText}"`);

  step = 'right password';
  await submitLogin(page, EMAIL, PASSWORD, `${base}/`);
  const user = (await page.locator('#user').innerText()).trim();
  if (user !== EMAIL) fail(`#user shows ${JSON.stringify(user)}, expected ${EMAIL}`);
  // The browser holds the session under the `__Host-` name (which it is held to) and the plain
  // name Kubeflow's scripts read, one value, the flags `__Host-` requires.
  const session = (await context.cookies(base)).find((c) => c.name === '__Host-authservice_session');
  if (!session) fail('no __Host-authservice_session cookie after login');
  if (!session.httpOnly || !session.secure || session.sameSite !== 'Lax' || session.path !== '/') {
    fail(`session cookie flags: httpOnly=${session.httpOnly} secure=${session.secure} sameSite=${session.sameSite} path=${session.path}`);
  }
  const plainTwin = (await context.cookies(base)).find((c) => c.name === 'authservice_session');
  if (plainTwin?.value !== session.value) fail('the plain-named session cookie is not the same session');
  log(`home page shows #user=${user}; screenshot ${await screenshot(page, 'home')}`);

  step = 'a run through the KFP API, opened from the link the KFP SDK prints';
  execFileSync('kubectl', ['--kubeconfig', path.join(dataDir, 'admin.kubeconfig'), 'apply', '-f', '-'], {
    input: `apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: browser-ws\nspec:\n  owner:\n    kind: User\n    name: ${EMAIL}\n`,
    stdio: ['pipe', 'ignore', 'inherit'],
  });
  let exp = null;
  for (let i = 0; i < 100 && !exp; i++) {
    const r = await context.request.post(`${base}/pipeline/apis/v2beta1/experiments`, {
      data: { display_name: 'browser-exp', namespace: 'browser-ws' },
    });
    if (r.status() === 200) exp = await r.json();
    else await sleep(100);
  }
  if (!exp) fail('could not create an experiment in the new workspace');
  const spec = { pipelineInfo: { name: 'browser-pipeline' }, root: { dag: { tasks: {} } }, schemaVersion: '2.1.0', sdkVersion: 'kfp-2.14.6' };
  const made = await context.request.post(`${base}/pipeline/apis/v2beta1/runs`, {
    data: { display_name: 'browser-run', experiment_id: exp.experiment_id, pipeline_spec: spec },
  });
  if (made.status() !== 200) fail(`creating a run: HTTP ${made.status()} ${await made.text()}`);
  const run = await made.json();
  await page.goto(`${base}/pipeline/#/runs/details/${run.run_id}`);
  await page.waitForURL(`${base}/pipeline/runs/details/${run.run_id}`, { waitUntil: 'load' });
  const heading = (await page.locator('h1').innerText()).trim();
  if (heading !== 'Run browser-run') fail(`run page heading: ${JSON.stringify(heading)}`);
  if (!(await page.locator('#fields').innerText()).includes(run.state)) fail(`run state ${run.state} not shown`);
  const runShot = await screenshot(page, 'pipeline-run');
  await Promise.all([page.waitForURL(`${base}/pipeline/?ns=browser-ws`, { waitUntil: 'load' }), page.click('#back')]);
  const listed = page.locator(`a[href="/pipeline/runs/details/${run.run_id}"]`);
  if ((await listed.count()) !== 1) fail('the run is not listed in the Pipelines view');
  const viewShot = await screenshot(page, 'pipeline');
  log(`/pipeline/#/runs/details/<id> landed on the run (${run.state}); screenshots ${runShot}, ${viewShot}`);
  await page.goto(`${base}/`, { waitUntil: 'load' });

  step = 'dashboard pages: the owner adds a viewer through the contributors form';
  execFileSync('kubectl', ['--kubeconfig', path.join(dataDir, 'admin.kubeconfig'), 'apply', '-f', '-'], {
    input: `apiVersion: kubeflow.org/v1\nkind: Profile\nmetadata:\n  name: pages-ws\nspec:\n  owner:\n    kind: User\n    name: ${EMAIL}\n`,
    stdio: ['pipe', 'ignore', 'inherit'],
  });
  const ownerRow = page.locator('#workspaces tr', { hasText: 'pages-ws' });
  for (let i = 0; i < 100; i++) {
    await page.goto(`${base}/?ns=pages-ws`, { waitUntil: 'load' });
    if ((await ownerRow.count()) === 1) break;
    await sleep(100);
  }
  if ((await ownerRow.locator('.role').innerText()).trim() !== 'owner') fail('pages-ws is not shown with the role owner');
  if ((await page.locator('#ns').inputValue()) !== 'pages-ws') fail('?ns=pages-ws is not the selected namespace');
  const dashShot = await screenshot(page, 'dashboard');
  const contributorsUrl = `${base}/workspaces/pages-ws/contributors`;
  await Promise.all([page.waitForURL(contributorsUrl, { waitUntil: 'load' }), page.click('a[href="/workspaces/pages-ws/contributors"]')]);
  // By keyboard: the labelled email field, the role select, the Add button.
  await page.getByLabel('Email address').fill(VIEWER);
  await page.getByLabel('Role').selectOption('view');
  await page.getByLabel('Role').focus();
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.keyboard.press('Tab').then(() => page.keyboard.press('Enter'))]);
  if (page.url() !== contributorsUrl) fail(`after adding: at ${page.url()}`);
  const added = page.locator('#contributors tr', { hasText: VIEWER });
  if ((await added.count()) !== 1 || (await added.locator('.role').innerText()).trim() !== 'viewer') fail(`${VIEWER} is not listed as viewer`);
  const contribShot = await screenshot(page, 'contributors');

  step = 'dashboard pages: the viewer sees the workspace as viewer, without controls';
  const vctx = await newContext(browser);
  const vpage = await vctx.newPage();
  await vpage.goto(`${base}/`, { waitUntil: 'load' });
  await submitLogin(vpage, VIEWER, PASSWORD, `${base}/`);
  const viewerRow = vpage.locator('#workspaces tr', { hasText: 'pages-ws' });
  if ((await viewerRow.locator('.role').innerText()).trim() !== 'viewer') fail('the viewer does not see pages-ws as viewer');
  await vpage.goto(contributorsUrl, { waitUntil: 'load' });
  if ((await vpage.locator('form').count()) !== 0) fail('the viewer is shown contributor controls');
  const viewerShot = await screenshot(vpage, 'contributors-viewer');
  const forged = await vctx.request.post(contributorsUrl, {
    form: { action: 'add', contributor: 'someone@example.com', role: 'edit' },
    headers: { Origin: base },
    maxRedirects: 0,
  });
  if (forged.status() !== 403) fail(`a forged POST by the viewer: HTTP ${forged.status()}`);

  step = 'dashboard pages: the owner removes the viewer; their next page load no longer shows it';
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), page.click(`button[aria-label="Remove ${VIEWER}"]`)]);
  if ((await page.locator('#contributors tr', { hasText: VIEWER }).count()) !== 0) fail('the viewer is still listed');
  await vpage.goto(`${base}/`, { waitUntil: 'load' });
  if ((await vpage.locator('#workspaces tr', { hasText: 'pages-ws' }).count()) !== 0) fail('the removed viewer still sees pages-ws');
  await vctx.close();
  log(`dashboard pages: owner added and removed a viewer in the page, the viewer saw no controls and a forged POST got 403; screenshots ${dashShot}, ${contribShot}, ${viewerShot}`);
  await page.goto(`${base}/`, { waitUntil: 'load' });

  step = 'dashboard pages: "Download kubeconfig" by keyboard, then kubectl as the user';
  await page.goto(`${base}/?ns=pages-ws`, { waitUntil: 'load' });
  const validity = (await page.locator('#kubeconfig-validity').innerText()).trim();
  if (!/valid for 24 hours, never past this session/.test(validity)) fail(`the page says: ${JSON.stringify(validity)}`);
  await page.getByRole('button', { name: 'Download kubeconfig' }).focus();
  const [download] = await Promise.all([page.waitForEvent('download'), page.keyboard.press('Enter')]);
  const kcName = download.suggestedFilename();
  if (kcName !== 'kubeconfig-user-example-com.yaml') fail(`downloaded as ${JSON.stringify(kcName)}`);
  const kcPath = path.join(dataRoot, kcName);
  await download.saveAs(kcPath);
  const kubectlAs = (...args) => execFileSync('kubectl', ['--kubeconfig', kcPath, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const whoami = JSON.parse(kubectlAs('auth', 'whoami', '-o', 'json'));
  if (whoami.status.userInfo.username !== EMAIL) fail(`kubectl auth whoami: ${JSON.stringify(whoami.status.userInfo)}`);
  const kcNs = kubectlAs('config', 'view', '--minify', '-o', 'jsonpath={.contexts[0].context.namespace}');
  if (kcNs !== 'pages-ws') fail(`the kubeconfig's namespace is ${JSON.stringify(kcNs)}`);
  kubectlAs('get', 'pods');
  log(`"Download kubeconfig" (keyboard) saved ${kcName}; kubectl auth whoami with it: ${EMAIL}, namespace ${kcNs}`);
  // A script on this origin (as a proxied app's page could run) posting the same form with the
  // page's token gets no token: only the button's top-level navigation is answered.
  // kfsec's own pages forbid fetch (CSP); a proxied app's page need not: /oauth2/userinfo (JSON,
  // no policy) stands in for one.
  const kcForm = {
    csrf: await page.locator('#kubeconfig input[name=csrf]').getAttribute('value'),
    ns: 'pages-ws',
  };
  await page.goto(`${base}/oauth2/userinfo`, { waitUntil: 'load' });
  const scripted = await page.evaluate(async (f) => {
    const r = await fetch('/kubeconfig', { method: 'POST', body: new URLSearchParams(f) });
    return { status: r.status, body: await r.text() };
  }, kcForm);
  if (scripted.status !== 403 || scripted.body.includes('apiVersion') || !scripted.body.includes('Download the kubeconfig with the home page')) {
    fail(`a same-origin fetch of /kubeconfig: HTTP ${scripted.status} ${scripted.body.slice(0, 300)}`);
  }
  log('a same-origin script\'s fetch of /kubeconfig (with the page\'s token) got 403, no token');
  await page.goto(`${base}/`, { waitUntil: 'load' });

  step = 'registration flow: a user who owns no workspace creates one, by keyboard';
  const rctx = await newContext(browser);
  const rpage = await rctx.newPage();
  await rpage.goto(`${base}/`, { waitUntil: 'load' });
  await submitLogin(rpage, NEWCOMER, PASSWORD, (u) => u.href === `${base}/` || u.href === `${base}/register`);
  if (new URL(rpage.url()).pathname === '/') {
    // Home offers the registration page to a user who owns no workspace.
    if (!(await rpage.locator('#no-workspaces').isVisible())) fail('home does not say the newcomer has no workspace');
    await rpage.getByRole('link', { name: 'Create your workspace' }).focus();
    await Promise.all([rpage.waitForURL(`${base}/register`, { waitUntil: 'load' }), rpage.keyboard.press('Enter')]);
  }
  const nsField = rpage.getByLabel('Workspace name');
  const proposed = await nsField.inputValue();
  if (proposed !== 'new-comer') fail(`the registration page proposes ${JSON.stringify(proposed)}, expected "new-comer"`);
  const registerShot = await screenshot(rpage, 'register');
  await nsField.focus();
  await Promise.all([rpage.waitForURL(`${base}/?ns=${proposed}`, { waitUntil: 'load' }), rpage.keyboard.press('Enter')]);
  const newRow = rpage.locator('#workspaces tr', { hasText: proposed });
  for (let i = 0; i < 100 && (await newRow.count()) === 0; i++) {
    await sleep(100);
    await rpage.reload({ waitUntil: 'load' });
  }
  if ((await newRow.count()) !== 1) fail(`${proposed} is not listed on home after registering`);
  if ((await newRow.locator('.role').innerText()).trim() !== 'owner') fail(`${proposed} is not shown with the role owner`);
  if ((await rpage.locator('#ns').inputValue()) !== proposed) fail(`${proposed} is not the selected namespace`);
  if ((await rpage.locator('#register').count()) !== 0) fail('home still offers registration to an owner');
  const registeredShot = await screenshot(rpage, 'register-home');
  const planterValue = (await rctx.cookies(base)).find((c) => c.name === '__Host-authservice_session')?.value;
  if (!planterValue) fail(`no session cookie for ${NEWCOMER}`);
  await rctx.close();
  log(`registration: ${NEWCOMER} created ${proposed} by keyboard and is shown as its owner; screenshots ${registerShot}, ${registeredShot}`);

  step = 'a session cookie planted under the plain name signs no one in';
  // Another site of the domain or a plain-HTTP attacker can set `authservice_session`, never
  // `__Host-authservice_session`: a browser (it sends Fetch Metadata) is held to the latter.
  const pctx = await newContext(browser);
  const ppage = await pctx.newPage();
  const plant = () => pctx.addCookies([{ name: 'authservice_session', value: planterValue, url: base, secure: true, sameSite: 'Lax' }]);
  await plant();
  await ppage.goto(`${base}/`, { waitUntil: 'load' });
  await ppage.locator('#login').waitFor({ state: 'visible' });
  if (!ppage.url().startsWith(`${base}/dex/auth/local/login`)) fail(`a planted cookie alone: at ${ppage.url()}, not the login form`);
  await submitLogin(ppage, EMAIL, PASSWORD, `${base}/`);
  await plant(); // now beside the user's own: it replaces the plain twin, not the `__Host-` cookie
  await ppage.reload({ waitUntil: 'load' });
  const shown = (await ppage.locator('#user').innerText()).trim();
  if (shown !== EMAIL) fail(`with a planted cookie beside the session, #user shows ${JSON.stringify(shown)}`);
  await pctx.close();
  log(`a planted authservice_session of ${NEWCOMER}: alone it led to the login form; beside ${EMAIL}'s session the page still shows ${EMAIL}`);

  step = 'check endpoint with the session';
  const hdr = { Cookie: `authservice_session=${session.value}` };
  const ok = await context.request.get(`${base}/authservice/check`, { headers: hdr, maxRedirects: 0 });
  if (ok.status() !== 200) fail(`/authservice/check with the session: HTTP ${ok.status()}`);
  if (ok.headers()['kubeflow-userid'] !== EMAIL) fail(`kubeflow-userid: ${ok.headers()['kubeflow-userid']}`);

  step = 'logout';
  await Promise.all([page.waitForURL((u) => u.pathname !== '/', { waitUntil: 'load' }), page.click('#logout')]);
  if ((await context.cookies(base)).some((c) => c.name.endsWith('authservice_session') && c.value)) {
    fail('session cookie still present after logout');
  }
  const firstLanding = await backToLogin(page, base);
  const revoked = await context.request.get(`${base}/authservice/check`, { headers: hdr, maxRedirects: 0 });
  if (revoked.status() !== 401) fail(`old session still accepted after logout: HTTP ${revoked.status()}`);
  log(`logged out (landed on ${firstLanding}); / then shows the login form; old session refused (401)`);

  step = 'login through /oauth2/start';
  await page.goto(`${base}/oauth2/start?rd=%2F`);
  await submitLogin(page, EMAIL, PASSWORD, `${base}/`);
  const second = (await context.cookies(base)).find((c) => c.name === '__Host-authservice_session');
  if (!second) fail('no session after logging in through /oauth2/start');

  step = 'logout through the page\'s /oauth2/sign_out link';
  const signOut = page.getByRole('link', { name: 'Log out', exact: true });
  if ((await signOut.getAttribute('href')) !== '/oauth2/sign_out') fail(`the "Log out" link goes to ${await signOut.getAttribute('href')}`);
  await Promise.all([page.waitForURL((u) => u.pathname !== '/', { waitUntil: 'load' }), signOut.click()]);
  const afterShot = await screenshot(page, 'logged-out');
  if ((await context.cookies(base)).some((c) => c.name.endsWith('authservice_session') && c.value)) {
    fail('session cookie still present after /oauth2/sign_out');
  }
  const landed = await backToLogin(page, base);
  // The old cookie put back into the browser is refused too: the session ended server-side.
  await context.addCookies([{ name: '__Host-authservice_session', value: second.value, url: base, httpOnly: true, secure: true, sameSite: 'Lax' }]);
  await page.goto(`${base}/`, { waitUntil: 'load' });
  await page.locator('#login').waitFor({ state: 'visible' });
  if (!page.url().startsWith(`${base}/dex/auth/local/login`)) fail(`/ with the old cookie: at ${page.url()}`);
  const gone = await context.request.get(`${base}/authservice/check`, {
    headers: { Cookie: `authservice_session=${second.value}` },
    maxRedirects: 0,
  });
  if (gone.status() !== 401) fail(`session still accepted after /oauth2/sign_out: HTTP ${gone.status()}`);
  log(`"Log out" link (/oauth2/sign_out) led to ${landed}; / then shows the login form, with the old cookie too (401); screenshot ${afterShot}`);
}

/**
 * After a logout: kfsec shows a "You are logged out" page (or, in builds before it, the login form
 * at once). From the logged-out page, its "Log in again" link (followed by keyboard) leads to /;
 * either way the page must end at the login form, i.e. / no longer accepts the browser. Returns
 * where the logout landed.
 */
async function backToLogin(page, base) {
  // A logout ends on kfsec's "You are logged out" page (it must not start a new login at once).
  const heading = (await page.getByRole('heading', { level: 1 }).innerText()).trim();
  if (!/logged out/i.test(heading)) fail(`after the logout, at ${page.url()}: heading ${JSON.stringify(heading)}`);
  if ((await page.locator('#user').count()) !== 0) fail('the logged-out page still shows the user');
  const landed = `"${heading}" (${new URL(page.url()).pathname})`;
  const again = page.getByRole('link', { name: 'Log in again' });
  if ((await again.getAttribute('href')) !== '/') fail(`"Log in again" goes to ${await again.getAttribute('href')}`);
  await again.focus();
  await Promise.all([page.waitForURL(/\/dex\/auth\//, { waitUntil: 'load' }), page.keyboard.press('Enter')]);
  await page.locator('#login').waitFor({ state: 'visible' });
  if (!page.url().startsWith(`${base}/dex/auth/local/login`)) fail(`/ after the logout: at ${page.url()}`);
  return landed;
}

let passed = false;
try {
  await main();
  passed = true;
} catch (e) {
  console.error(`browser: FAIL ${e.message}`);
  if (logFile && existsSync(logFile)) {
    const lines = readFileSync(logFile, 'utf8').trimEnd().split('\n');
    console.error(`browser: last kfsec log lines (${logFile}):`);
    for (const l of lines.slice(-30)) console.error(`  ${l}`);
  }
} finally {
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  try { await stopProcess(kfsec); } catch (e) { console.error(`browser: stopping kfsec: ${e.message}`); }
  if (dataRoot && passed && !process.env.KEEP_DATA) rmSync(dataRoot, { recursive: true, force: true });
}
console.log(passed ? 'browser: 1 passed, 0 failed' : 'browser: 0 passed, 1 failed');
process.exit(passed ? 0 : 1);
