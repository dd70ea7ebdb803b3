// Helpers shared by the browser tests (login.mjs, federated.mjs, pipeline.mjs): free ports,
// starting and stopping a kfsec process, launching Debian's Chromium through playwright-core,
// fresh browser contexts, kfsec's login form, screenshots under tests/artifacts.

import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
/** The repository's root and the directory the tests' screenshots go to. */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ARTIFACTS = path.join(ROOT, 'tests', 'artifacts');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `kfsec serve` on loopback (output to logFile) and waits until its /readyz answers 200;
 * returns the child process. Throws if it exits or is not ready within deadlineMs.
 */
export async function startKfsec(bin, { config, dataDir, httpsPort, adminPort, logFile, deadlineMs = 30_000 }) {
  const fd = openSync(logFile, 'w');
  const proc = spawn(bin,
    ['serve', '--config', config, '--data-dir', dataDir,
      '--https-addr', `127.0.0.1:${httpsPort}`, '--admin-addr', `127.0.0.1:${adminPort}`, '--webhook-addr', '127.0.0.1:0'],
    { stdio: ['ignore', fd, fd], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' } });
  closeSync(fd);
  const end = Date.now() + deadlineMs;
  let last = 'no answer';
  while (Date.now() < end) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`kfsec exited early (code ${proc.exitCode}, signal ${proc.signalCode})`);
    }
    try {
      const r = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
      if (r.status === 200) return proc;
      last = `HTTP ${r.status}`;
    } catch (e) {
      last = e.cause?.code || e.message;
    }
    await sleep(100);
  }
  proc.kill('SIGKILL');
  throw new Error(`kfsec not ready after ${deadlineMs} ms (/readyz: ${last})`);
}

/** SIGTERM, then SIGKILL after 5 s; resolves once the process has exited. */
export async function stopProcess(proc) {
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once('exit', r));
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(t);
}

/** Headless Debian Chromium, quiet (no background networking, sync or updates). */
export function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60_000,
  });
}

/**
 * A fresh browser context (its own cookies: a logged-out browser) for kfsec's self-signed
 * certificate, with one viewport and a per-step timeout.
 */
export async function newContext(browser, timeoutMs = 15_000) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 700 } });
  context.setDefaultTimeout(timeoutMs);
  return context;
}

/**
 * Fills kfsec's login form (#login, #password) on `page` and submits it by clicking its button;
 * resolves once the browser has landed on `landing` (what page.waitForURL accepts).
 */
export async function submitLogin(page, email, password, landing) {
  await page.locator('#login').waitFor({ state: 'visible' });
  await page.fill('#login', email);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL(landing, { waitUntil: 'load' }), page.click('#submit-login')]);
}

/** Saves a full-page screenshot as tests/artifacts/NAME.png; returns its repository-relative path. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return path.relative(ROOT, file);
}
