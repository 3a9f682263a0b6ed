// The official Dapr JavaScript SDK (@dapr/dapr 3.x) in its gRPC mode, unchanged, against Pillion's
// gRPC API: state and publish.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { collectingLogger, loadDaprSDK } from './npm-cache.mjs';
import { eventually, freePort, PUBSUB, startSidecar, STATE_STORE } from './sidecar.mjs';

const { sdk, version } = loadDaprSDK();
const { DaprClient, CommunicationProtocolEnum, LogLevel } = sdk;

let sidecar;
let client;
const logger = collectingLogger();
let failed = false;

function tracked(fn) {
  return async (...args) => {
    try {
      return await fn(...args);
    } catch (error) {
      failed = true;
      throw error;
    }
  };
}

const sdkTest = (name, fn) => test(name, tracked(fn));

before(tracked(async () => {
  assert.match(version, /^3\./);
  sidecar = await startSidecar({
    appId: 'grpcsdkapp',
    resources: { 'statestore.yaml': STATE_STORE, 'pubsub.yaml': PUBSUB },
    grpcPort: await freePort(),
  });
  client = new DaprClient({
    daprHost: '127.0.0.1',
    daprPort: String(sidecar.grpcPort),
    communicationProtocol: CommunicationProtocolEnum.GRPC,
    logger: { level: LogLevel.Debug, service: logger.service },
  });
  await client.start();
}));

after(async () => {
  await client?.stop();
  const sidecarLog = sidecar?.log();
  await sidecar?.stop();
  if (failed) console.error(`@dapr/dapr ${version} log:\n${logger.lines.join('\n')}\nsidecar log:\n${sidecarLog}`);
});

describe('@dapr/dapr over gRPC: state', () => {
  sdkTest('save, get, bulk get, delete', async () => {
    await client.state.save('statestore', [
      { key: 'g-1', value: { item: 'book', qty: 2 } },
      { key: 'g-2', value: 'plain text' },
    ]);
    assert.deepEqual(await client.state.get('statestore', 'g-1'), { item: 'book', qty: 2 });
    assert.equal(await client.state.get('statestore', 'g-2'), 'plain text');
    const bulk = await client.state.getBulk('statestore', ['g-1', 'g-2']);
    assert.deepEqual(bulk.map((item) => item.key).sort(), ['g-1', 'g-2']);
    await client.state.delete('statestore', 'g-2');
    assert.equal(await client.state.get('statestore', 'g-2'), '');
  });

  sdkTest('a value saved over gRPC reads back over HTTP', async () => {
    await client.state.save('statestore', [{ key: 'g-http', value: { a: 1 } }]);
    const response = await fetch(`${sidecar.url}/v1.0/state/statestore/g-http`);
    assert.equal(response.status, 200);
    assert.deepEqual(await response.json(), { a: 1 });
  });

  sdkTest('transactions', async () => {
    await client.state.transaction('statestore', [
      { operation: 'upsert', request: { key: 'g-t', value: 'in a transaction' } },
      { operation: 'delete', request: { key: 'g-1' } },
    ]);
    assert.equal(await client.state.get('statestore', 'g-t'), 'in a transaction');
    assert.equal(await client.state.get('statestore', 'g-1'), '');
  });

  sdkTest('an unknown store is an error', async () => {
    await assert.rejects(client.state.get('nostore', 'k'), /not found/);
  });
});

describe('@dapr/dapr over gRPC: publish', () => {
  sdkTest('publish, and a publish to an unknown pubsub', async () => {
    assert.deepEqual(await client.pubsub.publish('pubsub', 'orders', { id: 1 }), {});
    assert.deepEqual(await client.pubsub.publish('pubsub', 'orders', 'text'), {});
    // INVALID_ARGUMENT (3), as daprd answers it; the SDK throws {error}.
    await assert.rejects(client.pubsub.publish('nopubsub', 'orders', { id: 2 }), (thrown) => thrown.error.code === 3);
  });

  sdkTest('bulk publish', async () => {
    const answer = await client.pubsub.publishBulk('pubsub', 'orders', [{ n: 1 }, { n: 2 }]);
    assert.deepEqual(answer.failedMessages, []);
  });

  sdkTest('metadata over gRPC', async () => {
    const metadata = await eventually(() => client.metadata.get(), { what: 'metadata' });
    assert.equal(metadata.id, 'grpcsdkapp');
  });
});
