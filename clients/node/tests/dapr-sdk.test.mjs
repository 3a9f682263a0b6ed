// The official Dapr JavaScript SDK (@dapr/dapr 3.x, HTTP protocol), unchanged, against Pillion.
import assert from 'node:assert/strict';
import { after, before, describe } from 'node:test';

import { collectingLogger, failureTracking, loadDaprSDK } from './npm-cache.mjs';
import { eventually, freePort, PUBSUB, secretStore, startSidecar, STATE_STORE } from './sidecar.mjs';

const SECRETS = JSON.stringify({ 'db-password': 'hunter2', smtp: { user: 'mailer' } });

const { sdk, version } = loadDaprSDK();
const { DaprClient, DaprServer, CommunicationProtocolEnum, DaprPubSubStatusEnum, LogLevel } = sdk;

let sidecar;
let client;
let appPort;
const logger = collectingLogger();
const { tracked, sdkTest, failed } = failureTracking();

before(tracked(async () => {
  assert.match(version, /^3\./);
  appPort = await freePort();
  // The DaprServer app starts later, in its own suite: until then the sidecar waits for its port.
  sidecar = await startSidecar({
    appId: 'sdkapp',
    resources: {
      'statestore.yaml': STATE_STORE,
      'pubsub.yaml': PUBSUB,
      'secrets.yaml': secretStore('../secrets.json'),
    },
    files: { 'secrets.json': SECRETS },
    appPort,
    waitForApp: false,
  });
  client = new DaprClient(clientOptions());
  await client.start();
}));

function clientOptions() {
  return {
    daprHost: '127.0.0.1',
    daprPort: String(sidecar.port),
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    logger: { level: LogLevel.Debug, service: logger.service },
  };
}

after(async () => {
  await client?.stop();
  const sidecarLog = sidecar?.log();
  await sidecar?.stop();
  if (failed()) console.error(`@dapr/dapr ${version} log:\n${logger.lines.join('\n')}\nsidecar log:\n${sidecarLog}`);
});

describe(`@dapr/dapr state`, () => {
  sdkTest('save, get and delete', async () => {
    const saved = await client.state.save('statestore', [
      { key: 'sdk-1', value: { item: 'book', qty: 2 } },
      { key: 'sdk-2', value: 'plain text' },
    ]);
    assert.deepEqual(saved, {});
    assert.deepEqual(await client.state.get('statestore', 'sdk-1'), { item: 'book', qty: 2 });
    assert.equal(await client.state.get('statestore', 'sdk-2'), 'plain text');
    assert.deepEqual(await client.state.delete('statestore', 'sdk-2'), {});
    assert.equal(await client.state.get('statestore', 'sdk-2'), '', 'the SDK reads a missing key as ""');
  });

  sdkTest('ETags from getBulk guard save and delete', async () => {
    await client.state.save('statestore', [{ key: 'sdk-etag', value: 1 }]);
    const [{ etag, data }] = await client.state.getBulk('statestore', ['sdk-etag']);
    assert.equal(data, 1);
    assert.ok(etag);

    assert.deepEqual(await client.state.save('statestore', [{ key: 'sdk-etag', value: 2, etag }]), {});
    const stale = await client.state.save('statestore', [{ key: 'sdk-etag', value: 3, etag }]);
    assert.ok(stale.error, 'a save at a stale ETag reports an error');
    assert.match(String(stale.error), /409|ERR_STATE_SAVE/);
    assert.equal(await client.state.get('statestore', 'sdk-etag'), 2);

    const staleDelete = await client.state.delete('statestore', 'sdk-etag', { etag });
    assert.ok(staleDelete.error, 'a delete at a stale ETag reports an error');
    const [{ etag: current }] = await client.state.getBulk('statestore', ['sdk-etag']);
    assert.deepEqual(await client.state.delete('statestore', 'sdk-etag', { etag: current }), {});
    assert.equal(await client.state.get('statestore', 'sdk-etag'), '');
  });

  sdkTest('concurrency options and metadata are honoured', async () => {
    // A fresh object each time: the SDK rewrites the options of the objects it is given.
    const firstWrite = (value) => ({
      key: 'sdk-fw',
      value,
      options: { concurrency: sdk.StateConcurrencyEnum.CONCURRENCY_FIRST_WRITE },
    });
    assert.deepEqual(await client.state.save('statestore', [firstWrite('a')]), {});
    const again = await client.state.save('statestore', [firstWrite('b')]);
    assert.ok(again.error, 'first-write refuses to overwrite');

    await client.state.save('statestore', [{ key: 'sdk-ttl', value: 'x' }], { metadata: { ttlInSeconds: '60' } });
    const [item] = await client.state.getBulk('statestore', ['sdk-ttl']);
    assert.match(item.metadata.ttlExpireTime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });

  sdkTest('getBulk returns data, etags and bare keys for missing ones', async () => {
    await client.state.save('statestore', [
      { key: 'sdk-b1', value: { n: 1 } },
      { key: 'sdk-b2', value: [1, 2] },
    ]);
    const items = await client.state.getBulk('statestore', ['sdk-b1', 'sdk-missing', 'sdk-b2']);
    assert.deepEqual(
      items.map(({ key, data }) => ({ key, data })),
      [{ key: 'sdk-b1', data: { n: 1 } }, { key: 'sdk-missing', data: undefined }, { key: 'sdk-b2', data: [1, 2] }],
    );
  });

  sdkTest('transactions commit together, and a stale ETag rejects all of them', async () => {
    await client.state.save('statestore', [{ key: 'sdk-tx-old', value: 'old' }]);
    await client.state.transaction(
      'statestore',
      [
        { operation: 'upsert', request: { key: 'sdk-tx-new', value: { ok: true } } },
        { operation: 'delete', request: { key: 'sdk-tx-old' } },
      ],
      { traceId: 'tx-1' },
    );
    assert.deepEqual(await client.state.get('statestore', 'sdk-tx-new'), { ok: true });
    assert.equal(await client.state.get('statestore', 'sdk-tx-old'), '');

    const [{ etag }] = await client.state.getBulk('statestore', ['sdk-tx-new']);
    await client.state.transaction('statestore', [
      { operation: 'upsert', request: { key: 'sdk-tx-new', value: { ok: 2 }, etag } },
    ]);
    await assert.rejects(
      client.state.transaction('statestore', [
        { operation: 'upsert', request: { key: 'sdk-tx-side', value: 1 } },
        { operation: 'upsert', request: { key: 'sdk-tx-new', value: { ok: 3 }, etag } },
      ]),
      /ERR_STATE_TRANSACTION/,
    );
    assert.equal(await client.state.get('statestore', 'sdk-tx-side'), '');
    assert.deepEqual(await client.state.get('statestore', 'sdk-tx-new'), { ok: 2 });
  });

  sdkTest('query, including an empty result', async () => {
    await client.state.save('statestore', [
      { key: 'sdk-q1', value: { city: 'Oslo', n: 2 } },
      { key: 'sdk-q2', value: { city: 'Oslo', n: 1 } },
      { key: 'sdk-q3', value: { city: 'Rome', n: 3 } },
    ]);
    const page = await client.state.query('statestore', {
      filter: { EQ: { city: 'Oslo' } },
      sort: [{ key: 'n', order: 'ASC' }],
      page: { limit: 10 },
    });
    assert.deepEqual(page.results.map((r) => [r.key, r.data.n]), [['sdk-q2', 1], ['sdk-q1', 2]]);
    const none = await client.state.query('statestore', { filter: { EQ: { city: 'Lima' } }, sort: [], page: { limit: 1 } });
    assert.deepEqual(none, { results: [] });
  });
});

describe('@dapr/dapr secrets', () => {
  sdkTest('get and getBulk', async () => {
    assert.deepEqual(await client.secret.get('localsecrets', 'db-password'), { 'db-password': 'hunter2' });
    assert.deepEqual(await client.secret.getBulk('localsecrets'), {
      'db-password': { 'db-password': 'hunter2' },
      'smtp:user': { 'smtp:user': 'mailer' },
    });
  });
});

describe('@dapr/dapr metadata', () => {
  sdkTest('get and set', async () => {
    await client.metadata.set('team', 'payments');
    const metadata = await client.metadata.get();
    assert.equal(metadata.id, 'sdkapp');
    assert.equal(metadata.extended.team, 'payments');
    const names = metadata.components.map((c) => `${c.name}:${c.type}`).sort();
    assert.deepEqual(names, [
      'localsecrets:secretstores.local.file',
      'pubsub:pubsub.in-memory',
      'statestore:state.in-memory',
    ]);
  });
});

describe('@dapr/dapr DaprServer subscriber', () => {
  const inbox = new Map(); // topic or route name -> data received
  const calls = new Map();
  let server;

  const keep = (name, verdict = () => DaprPubSubStatusEnum.SUCCESS) => async (data) => {
    const n = (calls.get(name) ?? 0) + 1;
    calls.set(name, n);
    const status = verdict(n);
    if (status === DaprPubSubStatusEnum.SUCCESS) inbox.set(name, [...(inbox.get(name) ?? []), data]);
    return status;
  };
  const arrived = (name, predicate) =>
    eventually(() => (inbox.get(name) ?? []).find(predicate), { what: `a delivery to ${name}` });

  before(tracked(async () => {
    server = new DaprServer({
      serverHost: '127.0.0.1',
      serverPort: String(appPort),
      communicationProtocol: CommunicationProtocolEnum.HTTP,
      clientOptions: clientOptions(),
      logger: { level: LogLevel.Debug, service: logger.service },
    });
    await server.pubsub.subscribe('pubsub', 'orders', keep('orders'));
    await server.pubsub.subscribeWithOptions('pubsub', 'widgets', {
      route: { rules: [{ match: 'event.type == "widget.created"', path: 'created' }], default: 'other' },
      callback: keep('widgets'),
    });
    await server.pubsub.subscribe('pubsub', 'raw', keep('raw'), '', { rawPayload: true });
    await server.pubsub.subscribe(
      'pubsub',
      'flaky',
      keep('flaky', (n) => (n === 1 ? DaprPubSubStatusEnum.RETRY : DaprPubSubStatusEnum.SUCCESS)),
    );
    await server.start();
    // The sidecar reads GET /dapr/subscribe once the app port opens; healthz is 204 after that.
    await eventually(async () => (await fetch(`${sidecar.url}/v1.0/healthz`)).status === 204, {
      what: 'the sidecar to load the subscriptions',
    });
  }));

  after(async () => {
    await server?.stop();
  });

  sdkTest('an object published with the SDK reaches the subscriber as its data', async () => {
    assert.deepEqual(await client.pubsub.publish('pubsub', 'orders', { order: 1, item: 'book' }), {});
    assert.deepEqual(await arrived('orders', (d) => d?.order === 1), { order: 1, item: 'book' });
  });

  sdkTest('text goes as text/plain and arrives as a string', async () => {
    await client.pubsub.publish('pubsub', 'orders', 'hello');
    assert.equal(await arrived('orders', (d) => d === 'hello'), 'hello');
  });

  sdkTest('a CloudEvent is routed by the subscription rules', async () => {
    const base = { specversion: '1.0', source: 'factory', datacontenttype: 'application/json' };
    await client.pubsub.publish('pubsub', 'widgets', { ...base, id: 'w1', type: 'widget.created', data: { w: 1 } });
    await client.pubsub.publish('pubsub', 'widgets', { ...base, id: 'w2', type: 'widget.sold', data: { w: 2 } });
    await arrived('widgets', (d) => d?.w === 1);
    await arrived('widgets', (d) => d?.w === 2);
    const subscriptions = server.pubsub.getSubscriptions();
    assert.ok(subscriptions, 'the SDK keeps its subscription table');
  });

  sdkTest('raw payloads', async () => {
    await client.pubsub.publish('pubsub', 'raw', { raw: true, n: 7 }, { metadata: { rawPayload: true } });
    assert.deepEqual(await arrived('raw', (d) => d?.n === 7), { raw: true, n: 7 });
  });

  sdkTest('RETRY from the subscriber redelivers the event', async () => {
    await client.pubsub.publish('pubsub', 'flaky', { attempt: 'x' });
    await arrived('flaky', (d) => d?.attempt === 'x');
    assert.equal(calls.get('flaky'), 2);
  });

  sdkTest('bulk publish', async () => {
    const result = await client.pubsub.publishBulk('pubsub', 'orders', [
      { order: 10 },
      'bulk-text',
      { entryID: 'mine', event: { order: 11 }, contentType: 'application/json' },
    ]);
    assert.deepEqual(result.failedMessages, []);
    await arrived('orders', (d) => d?.order === 10);
    await arrived('orders', (d) => d === 'bulk-text');
    await arrived('orders', (d) => d?.order === 11);
  });

  sdkTest('the sidecar lists what DaprServer subscribed', async () => {
    const { subscriptions } = await client.metadata.get();
    const topics = subscriptions.map((s) => s.topic).sort();
    assert.deepEqual(topics, ['flaky', 'orders', 'raw', 'widgets']);
  });
});
