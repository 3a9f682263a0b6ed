// index.d.ts: typecheck.ts, written against it, compiles with tsc --strict (TypeScript from npm).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

import { npmCache } from './npm-cache.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));

test('typecheck.ts compiles against index.d.ts under --strict', () => {
  const { require } = npmCache('typescript-5', ['typescript@5', '@types/node@20']);
  const tsc = require.resolve('typescript/bin/tsc');
  const typeRoots = path.join(path.dirname(require.resolve('@types/node/package.json')), '..');
  const result = spawnSync(
    process.execPath,
    [
      tsc,
      '--noEmit',
      '--strict',
      '--target', 'es2022',
      '--module', 'nodenext',
      '--moduleResolution', 'nodenext',
      '--typeRoots', typeRoots,
      '--types', 'node',
      path.join(HERE, 'typecheck.ts'),
    ],
    { encoding: 'utf8' },
  );
  assert.equal(result.status, 0, `tsc:\n${result.stdout}${result.stderr}`);
});
