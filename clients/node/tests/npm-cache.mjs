// Test support: packages from the npm registry (the official Dapr JavaScript SDK, TypeScript),
// installed once into an ignored cache folder and loaded from there.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { test } from 'node:test';

import { REPO } from './sidecar.mjs';

const SDK_RANGE = '3';

/**
 * A folder under <repo>/.cache (ignored by git) holding `packages` installed from the npm
 * registry; installed on first use, reused afterwards. Returns a require() rooted there.
 */
export function npmCache(name, packages) {
  const dir = path.join(process.env.PILLION_NPM_CACHE ?? path.join(REPO, '.cache'), name);
  const manifest = path.join(dir, 'package.json');
  const stamp = path.join(dir, '.installed');
  const wanted = packages.join(' ');
  if (!existsSync(stamp) || readFileSync(stamp, 'utf8') !== wanted) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(manifest, JSON.stringify({ name: `pillion-cache-${name}`, private: true }));
    const npm = spawnSync('npm', ['install', '--no-audit', '--no-fund', '--no-save', '--loglevel=error', ...packages], {
      cwd: dir,
      encoding: 'utf8',
      timeout: 300_000,
    });
    if (npm.error || npm.status !== 0) {
      throw new Error(
        `npm install ${wanted} failed in ${dir} (npm and the npm registry are needed for this test): ` +
          `${npm.error ?? ''}\n${npm.stdout ?? ''}\n${npm.stderr ?? ''}`,
      );
    }
    writeFileSync(stamp, wanted);
  }
  return { dir, require: createRequire(manifest) };
}

export function loadDaprSDK() {
  const { require } = npmCache(`dapr-js-sdk-${SDK_RANGE}`, [`@dapr/dapr@${SDK_RANGE}`]);
  return { sdk: require('@dapr/dapr'), version: require('@dapr/dapr/package.json').version };
}

/**
 * SDK tests that note a failure, so that the SDK's and the sidecar's logs get printed at the end:
 * `tracked(fn)` wraps a hook, `sdkTest(name, fn)` is a tracked test, `failed()` says whether any threw.
 */
export function failureTracking() {
  let failed = false;
  const tracked = (fn) => async (...args) => {
    try {
      return await fn(...args);
    } catch (error) {
      failed = true;
      throw error;
    }
  };
  return { tracked, sdkTest: (name, fn) => test(name, tracked(fn)), failed: () => failed };
}

/** A logger service for the SDK that keeps its lines, to show them only when a test fails. */
export function collectingLogger() {
  const lines = [];
  const keep = (level) => (message, ...args) => lines.push(`${level} ${message} ${args.join(' ')}`);
  return {
    lines,
    service: {
      error: keep('ERROR'),
      warn: keep('WARN'),
      info: keep('INFO'),
      verbose: keep('VERBOSE'),
      debug: keep('DEBUG'),
    },
  };
}
