// Browser test: a run created with the kfp SDK, opened in a logged-out Chromium from the link the
// SDK prints (<base>/pipeline/#/runs/details/<id>): kfsec's login page, then that run's page.
//
//   KFSEC_PASSWORD=... node tests/browser/pipeline.mjs BASE EMAIL RUN_ID RUN_NAME [LINK]
//
// tests/kfp/run.sh calls it against its own kfsec, with the run client_manager.py created (LINK:
// the "Run details" link the SDK printed; default BASE/pipeline/#/runs/details/RUN_ID). The
// password comes from the environment, not argv (argv is visible to every local user). Chromium
// ignores HTTPS errors: kfsec's certificate is from its own CA, which Chromium has no option to
// trust without a certificate database.
// Checks, each counted: the fragment-free path /pipeline/runs/details/<id> survives the login and
// shows the run; then the SDK's fragment link does (the login page must carry the fragment
// through its form POST). Prints `  ok …`/`  FAIL …` per check and `RESULT passed=N failed=M`
// (run.sh's format); screenshots tests/artifacts/pipeline-sdk-run-path.png and pipeline-sdk-run.png.

import { existsSync } from 'node:fs';
import { CHROMIUM, launchChromium, newContext, screenshot, submitLogin } from './lib.mjs';

const [BASE, EMAIL, RUN_ID, RUN_NAME, LINK_ARG] = process.argv.slice(2);
const PASSWORD = process.env.KFSEC_PASSWORD;
const LINK = LINK_ARG || `${BASE}/pipeline/#/runs/details/${RUN_ID}`;
const DETAILS = `${BASE}/pipeline/runs/details/${RUN_ID}`;

let passed = 0;
let failed = 0;

async function check(name, fn) {
  try {
    await fn();
    passed += 1;
    console.log(`  ok   ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`  FAIL ${name}: ${e.message.split('\n')[0]}`);
  }
}

function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}

/** The value cell of the run page's field `label` (the #fields table: th label, td value). */
function field(page, label) {
  return page.locator('#fields tr', { has: page.locator('th', { hasText: new RegExp(`^${label}$`) }) }).locator('td');
}

/**
 * In a fresh (logged-out) context: opens `url`, expects kfsec's login form, logs in, waits for
 * the run's page, checks it shows the run (heading, id, the state the KFP API reports) and saves
 * a screenshot as `shot` whatever the outcome.
 */
async function openRunLoggedOut(browser, url, shot) {
  const context = await newContext(browser);
  const page = await context.newPage();
  try {
    await page.goto(url, { waitUntil: 'load' });
    await page.locator('#login').waitFor({ state: 'visible' });
    expect(new URL(page.url()).pathname.startsWith('/dex/auth/'), `a logged-out ${url} is at ${page.url()}, not the login page`);
    await submitLogin(page, EMAIL, PASSWORD, (u) => u.pathname.startsWith('/pipeline/'));
    try {
      await page.waitForURL(DETAILS, { waitUntil: 'load', timeout: 5_000 });
    } catch {
      throw new Error(`after login at ${page.url()}, not the run's page ${DETAILS}`);
    }
    const heading = (await page.locator('h1').innerText()).trim();
    expect(heading === `Run ${RUN_NAME}`, `heading ${JSON.stringify(heading)}`);
    expect((await field(page, 'Run id').innerText()).trim() === RUN_ID, 'the run id is not shown');
    const api = await context.request.get(`${BASE}/pipeline/apis/v2beta1/runs/${RUN_ID}`);
    expect(api.status() === 200, `the KFP API's run: HTTP ${api.status()}`);
    const { state } = await api.json();
    const shown = (await field(page, 'State').innerText()).trim();
    expect(state && shown === state, `state shown ${JSON.stringify(shown)}, the API says ${JSON.stringify(state)}`);
    return `${RUN_NAME} (${shown})`;
  } finally {
    console.log(`  screenshot ${await screenshot(page, shot)} (at ${page.url()})`);
    await context.close();
  }
}

async function main() {
  if (!BASE || !EMAIL || !RUN_ID || !RUN_NAME || !PASSWORD) {
    console.log('usage: KFSEC_PASSWORD=... node pipeline.mjs BASE EMAIL RUN_ID RUN_NAME [LINK]');
    failed += 1;
    return;
  }
  if (!existsSync(CHROMIUM)) {
    console.log(`  FAIL ${CHROMIUM} not found (run scripts/install-test-deps.sh)`);
    failed += 1;
    return;
  }
  const browser = await launchChromium();
  try {
    await check('Chromium, logged out: /pipeline/runs/details/<id> → login → the SDK run\'s page', async () => {
      console.log(`  saw ${await openRunLoggedOut(browser, DETAILS, 'pipeline-sdk-run-path')}`);
    });
    await check('Chromium, logged out: the SDK\'s link /pipeline/#/runs/details/<id> → login → the run\'s page', async () => {
      console.log(`  saw ${await openRunLoggedOut(browser, LINK, 'pipeline-sdk-run')}`);
    });
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (e) {
  console.log(`  FAIL pipeline.mjs: ${e.message}`);
  failed += 1;
}
console.log(`RESULT passed=${passed} failed=${failed}`);
process.exit(failed === 0 ? 0 : 1);
