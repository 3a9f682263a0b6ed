// Publishing with pillion-client and receiving with its SubscriptionServer, through a real sidecar.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { DaprClient, DROP, RETRY, SubscriptionServer } from '../index.js';
import { eventually, freePort, PUBSUB, startSidecar } from './sidecar.mjs';

const inbox = new Map(); // handler name -> events it accepted
const calls = new Map(); // handler name|event id -> times called

function recorder(name, verdict = () => undefined) {
  return (event) => {
    const id = `${name}|${event.id}`;
    calls.set(id, (calls.get(id) ?? 0) + 1);
    const status = verdict(calls.get(id));
    if (status === undefined) inbox.set(name, [...(inbox.get(name) ?? []), event]);
    return status;
  };
}

const arrived = (name, predicate) =>
  eventually(() => (inbox.get(name) ?? []).find(predicate), { what: `an event for ${name}` });

const server = new SubscriptionServer({ onError: () => {} })
  .subscribe('pubsub', 'orders', recorder('orders'))
  .subscribe('pubsub', 'orders', recorder('widgets'), { match: 'event.type == "widget.created"' })
  .subscribe('pubsub', 'raw', recorder('raw'), { metadata: { rawPayload: 'true' } })
  .subscribe('pubsub', 'flaky', recorder('flaky', (n) => (n === 1 ? RETRY : undefined)), { route: '/flaky' })
  .subscribe('pubsub', 'doomed', recorder('doomed', () => DROP), { deadLetterTopic: 'poison' })
  .subscribe('pubsub', 'poison', recorder('poison'))
  .subscribe('pubsub', 'throws', recorder('throws', (n) => {
    if (n === 1) throw new Error('first try fails');
  }));

let sidecar;
let client;

before(async () => {
  const appPort = await server.listen(await freePort());
  sidecar = await startSidecar({ appId: 'nodepub', resources: { 'pubsub.yaml': PUBSUB }, appPort });
  client = new DaprClient({ port: sidecar.port });
});

after(async () => {
  await sidecar?.stop();
  await server.close();
});

test('JSON is wrapped in a CloudEvent and delivered', async () => {
  await client.pubsub.publish('pubsub', 'orders', { item: 'book' }, { metadata: { 'cloudevent.id': 'json-1' } });
  const event = await arrived('orders', (e) => e.id === 'json-1');
  assert.deepEqual(event.data, { item: 'book' });
  assert.equal(event.type, 'com.dapr.event.sent');
  assert.equal(event.source, 'nodepub');
  assert.equal(event.topic, 'orders');
  assert.equal(event.pubsubName, 'pubsub');
  assert.equal(event.dataContentType, 'application/json');
  assert.equal(event.headers['content-type'], 'application/cloudevents+json');
});

test('strings go as text/plain', async () => {
  await client.pubsub.publish('pubsub', 'orders', 'hello', { metadata: { 'cloudevent.id': 'text-1' } });
  const event = await arrived('orders', (e) => e.id === 'text-1');
  assert.equal(event.data, 'hello');
  assert.equal(event.dataContentType, 'text/plain');
});

test('a CloudEvent keeps its fields and is routed by the match rule', async () => {
  await client.pubsub.publishCloudEvent('pubsub', 'orders', {
    id: 'ce-1',
    source: 'factory',
    type: 'widget.created',
    specversion: '1.0',
    datacontenttype: 'application/json',
    data: { size: 3 },
  });
  const event = await arrived('widgets', (e) => e.id === 'ce-1');
  assert.equal(event.source, 'factory');
  assert.deepEqual(event.data, { size: 3 });
  assert.equal((inbox.get('orders') ?? []).some((e) => e.id === 'ce-1'), false);
});

test('raw payloads arrive as the bytes that were sent', async () => {
  const bytes = Buffer.from([0, 1, 2, 250, 251]);
  await client.pubsub.publishRaw('pubsub', 'raw', bytes);
  const event = await arrived('raw', (e) => Buffer.isBuffer(e.data) && e.data.equals(bytes));
  assert.equal(event.dataContentType, 'application/octet-stream');
});

test('bulk publish delivers every entry', async () => {
  const result = await client.pubsub.publishBulk('pubsub', 'orders', [
    { event: { bulk: 'object' } },
    { event: 'bulk-text' },
    { event: Buffer.from('bulk-bytes'), entryId: 'bytes' },
  ]);
  assert.deepEqual(result, { failedEntries: [] });
  await arrived('orders', (e) => e.data?.bulk === 'object');
  await arrived('orders', (e) => e.data === 'bulk-text');
  await arrived('orders', (e) => Buffer.isBuffer(e.data) && e.data.toString() === 'bulk-bytes');
});

test('RETRY and a throwing handler are tried again', async () => {
  await client.pubsub.publish('pubsub', 'flaky', 'again', { metadata: { 'cloudevent.id': 'retry-1' } });
  await arrived('flaky', (e) => e.id === 'retry-1');
  assert.equal(calls.get('flaky|retry-1'), 2);
  await client.pubsub.publish('pubsub', 'throws', 'again', { metadata: { 'cloudevent.id': 'throw-1' } });
  await arrived('throws', (e) => e.id === 'throw-1');
  assert.equal(calls.get('throws|throw-1'), 2);
});

test('DROP sends the event to the dead-letter topic', async () => {
  await client.pubsub.publish('pubsub', 'doomed', 'bad', { metadata: { 'cloudevent.id': 'drop-1' } });
  const event = await arrived('poison', (e) => e.id === 'drop-1');
  assert.equal(event.topic, 'doomed');
  assert.equal(calls.get('doomed|drop-1'), 1);
});

test('the sidecar lists the subscriptions it got from GET /dapr/subscribe', async () => {
  const { subscriptions } = await client.metadata.get();
  const orders = subscriptions.find((s) => s.topic === 'orders');
  assert.equal(orders.type, 'PROGRAMMATIC');
  assert.deepEqual(
    orders.rules.map((r) => r.match ?? ''),
    ['event.type == "widget.created"', ''],
  );
});

test('an unknown pubsub is a DaprError', async () => {
  await assert.rejects(client.pubsub.publish('nope', 'orders', {}), {
    name: 'DaprError',
    status: 404,
    errorCode: 'ERR_PUBSUB_NOT_FOUND',
  });
  await assert.rejects(client.pubsub.publishBulk('nope', 'orders', [{ event: 1 }]), { errorCode: 'ERR_PUBSUB_NOT_FOUND' });
});

test('the subscription server checks the app token and ignores routes it does not own', async () => {
  const guarded = new SubscriptionServer({ appApiToken: 'app-token' }).subscribe('p', 't', () => {}, { route: '/t' });
  const port = await guarded.listen(0);
  try {
    const base = `http://127.0.0.1:${port}`;
    assert.equal((await fetch(`${base}/dapr/subscribe`)).status, 401);
    const listed = await fetch(`${base}/dapr/subscribe`, { headers: { 'dapr-api-token': 'app-token' } });
    assert.deepEqual(await listed.json(), [{ pubsubname: 'p', topic: 't', routes: { rules: [], default: '/t' } }]);
    assert.equal((await fetch(`${base}/elsewhere`, { method: 'POST' })).status, 404);
    assert.throws(() => guarded.subscribe('p', 't', () => {}), /already has a handler without a match/);
  } finally {
    await guarded.close();
  }
});
