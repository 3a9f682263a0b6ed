// Test support: the official Dapr JavaScript SDK (@dapr/dapr 3.x), installed once from the npm
// registry into an ignored cache folder and loaded from there.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

import { REPO } from './sidecar.mjs';

const SDK_RANGE = '3';

export function loadDaprSDK() {
  const dir = process.env.PILLION_DAPR_SDK_DIR ?? path.join(REPO, '.cache', `dapr-js-sdk-${SDK_RANGE}`);
  const manifest = path.join(dir, 'package.json');
  if (!existsSync(path.join(dir, 'node_modules', '@dapr', 'dapr', 'package.json'))) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(manifest, JSON.stringify({ name: 'pillion-dapr-sdk-cache', private: true }));
    const npm = spawnSync(
      'npm',
      ['install', '--no-audit', '--no-fund', '--no-save', '--loglevel=error', `@dapr/dapr@${SDK_RANGE}`],
      { cwd: dir, encoding: 'utf8', timeout: 300_000 },
    );
    if (npm.error || npm.status !== 0) {
      throw new Error(
        `npm install @dapr/dapr@${SDK_RANGE} failed in ${dir} (npm and the npm registry are needed for this test): ` +
          `${npm.error ?? ''}\n${npm.stdout ?? ''}\n${npm.stderr ?? ''}`,
      );
    }
  }
  const require = createRequire(manifest);
  const sdk = require('@dapr/dapr');
  const version = require('@dapr/dapr/package.json').version;
  return { sdk, version };
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
