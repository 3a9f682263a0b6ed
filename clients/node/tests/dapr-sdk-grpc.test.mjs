// The official Dapr JavaScript SDK (@dapr/dapr 3.x) in its gRPC mode, unchanged, against Pillion's
// gRPC API: state, publish, and service invocation (InvokeService) of the sidecar's own app.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe } from 'node:test';

import { collectingLogger, failureTracking, loadDaprSDK } from './npm-cache.mjs';
import { eventually, freePort, PUBSUB, startSidecar, STATE_STORE } from './sidecar.mjs';

const { sdk, version } = loadDaprSDK();
const { DaprClient, CommunicationProtocolEnum, HttpMethod, LogLevel } = sdk;

let sidecar;
let client;
let app;
const logger = collectingLogger();
const { tracked, sdkTest, failed } = failureTracking();

// The app the invocation tests call: it answers with what it was sent.
function startApp() {
  const server = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      const answer = request.url === '/dapr/subscribe' ? [] : { method: request.method, url: request.url, body };
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify(answer));
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

before(tracked(async () => {
  assert.match(version, /^3\./);
  app = await startApp();
  sidecar = await startSidecar({
    appId: 'grpcsdkapp',
    resources: { 'statestore.yaml': STATE_STORE, 'pubsub.yaml': PUBSUB },
    grpcPort: await freePort(),
    appPort: app.address().port,
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
  app?.close();
  if (failed()) console.error(`@dapr/dapr ${version} log:\n${logger.lines.join('\n')}\nsidecar log:\n${sidecarLog}`);
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

describe('@dapr/dapr over gRPC: service invocation', () => {
  sdkTest('invoke an app with a verb and a JSON body', async () => {
    const answer = await client.invoker.invoke('grpcsdkapp', 'orders/7', HttpMethod.POST, { qty: 3 });
    assert.equal(answer.method, 'POST');
    assert.equal(answer.url, '/orders/7');
    assert.deepEqual(JSON.parse(answer.body), { qty: 3 });
  });

  sdkTest('an unknown app is an error', async () => {
    await assert.rejects(client.invoker.invoke('nobody-here', 'x', HttpMethod.GET));
  });
});
