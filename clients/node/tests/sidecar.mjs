// Test support: a real Pillion sidecar in a child process, on a free port, with in-memory components.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export const STATE_STORE = `apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.in-memory
  version: v1
`;

export const PUBSUB = `apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: pubsub
spec:
  type: pubsub.in-memory
  version: v1
  metadata:
  - name: deliveryRetryInterval
    value: 20ms
`;

export function secretStore(file) {
  return `apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: localsecrets
spec:
  type: secretstores.local.file
  version: v1
  metadata:
  - name: secretsFile
    value: ${JSON.stringify(file)}
`;
}

export function pythonPath() {
  const python = process.env.PILLION_PYTHON ?? path.join(REPO, '.venv', 'bin', 'python');
  if (!existsSync(python)) {
    throw new Error(
      `no Python for the sidecar at ${python}: run ./scripts/test once (it creates .venv) or set PILLION_PYTHON`,
    );
  }
  return python;
}

export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Start `python -m runtime serve` with the given resource files and wait until it is ready:
 * GET /v1.0/healthz/outbound = 204, or with an app port (unless `waitForApp` is false)
 * GET /v1.0/healthz = 204, the app's subscriptions being loaded by then.
 * With `grpcPort` the gRPC API listens there. Returns {port, grpcPort, url, dir, log(), stop()}.
 */
export async function startSidecar({
  appId = 'nodetest',
  resources = { 'statestore.yaml': STATE_STORE },
  appPort,
  waitForApp = true,
  env = {},
  files = {},
  grpcPort,
} = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), 'pillion-node-'));
  const resourcesDir = path.join(dir, 'resources');
  for (const [name, text] of Object.entries(files)) writeFileSync(path.join(dir, name), text);
  mkdirSync(resourcesDir);
  for (const [name, text] of Object.entries(resources)) writeFileSync(path.join(resourcesDir, name), text);
  const port = await freePort();
  const args = ['-m', 'runtime', 'serve', '--app-id', appId, '--dapr-http-port', String(port)];
  args.push('--resources-path', resourcesDir, '--data-dir', path.join(dir, 'data'));
  if (appPort) args.push('--app-port', String(appPort));
  if (grpcPort) args.push('--dapr-grpc-port', String(grpcPort));
  const logPath = path.join(dir, 'sidecar.log');
  const out = openSync(logPath, 'w');
  const child = spawn(pythonPath(), args, {
    cwd: dir,
    env: { ...process.env, PYTHONUNBUFFERED: '1', ...env },
    stdio: ['ignore', out, out],
  });
  const url = `http://127.0.0.1:${port}`;
  const log = () => readFileSync(logPath, 'utf8');
  let exited = null;
  child.on('exit', (code, signal) => {
    exited = { code, signal };
  });
  const stop = async () => {
    if (exited === null) {
      const done = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await done;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (exited !== null) throw new Error(`sidecar exited (${JSON.stringify(exited)}):\n${log()}`);
    try {
      const ready = appPort && waitForApp ? '/v1.0/healthz' : '/v1.0/healthz/outbound';
      const response = await fetch(url + ready, { signal: AbortSignal.timeout(1000) });
      if (response.status === 204) return { port, grpcPort, url, dir, log, stop };
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const text = log();
  await stop();
  throw new Error(`sidecar not ready within 20 s:\n${text}`);
}

/** Poll `check` until it returns a truthy value, or fail after `timeoutMs`. */
export async function eventually(check, { timeoutMs = 10_000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
