// pillion-client against a real Pillion sidecar: state, secrets, metadata, health and errors.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { DaprClient, DaprError } from '../index.js';
import { secretStore, startSidecar, STATE_STORE } from './sidecar.mjs';

const SECRETS = JSON.stringify({ 'db-password': 'hunter2', api: { key: 'k-123' } });

let sidecar;
let client;

before(async () => {
  sidecar = await startSidecar({
    resources: { 'statestore.yaml': STATE_STORE, 'secrets.yaml': secretStore('../secrets.json') },
    files: { 'secrets.json': SECRETS },
  });
  client = new DaprClient({ port: sidecar.port });
});

after(async () => {
  await sidecar?.stop();
});

describe('state', () => {
  test('save then get returns the JSON value and an ETag', async () => {
    await client.state.save('statestore', { key: 'order-1', value: { item: 'book', qty: 2 } });
    const item = await client.state.get('statestore', 'order-1');
    assert.deepEqual(item.value, { item: 'book', qty: 2 });
    assert.equal(item.key, 'order-1');
    assert.ok(item.etag, 'an ETag');
  });

  test('a missing key is undefined', async () => {
    assert.equal(await client.state.get('statestore', 'no-such-key'), undefined);
  });

  test('strings, numbers and keys that need escaping round-trip', async () => {
    const key = 'a/b c+d?é';
    await client.state.save('statestore', [
      { key, value: 'text' },
      { key: 'n', value: 42 },
    ]);
    assert.equal((await client.state.get('statestore', key)).value, 'text');
    assert.equal((await client.state.get('statestore', 'n')).value, 42);
  });

  test('a stale ETag is refused with 409 ERR_STATE_SAVE, the current one accepted', async () => {
    await client.state.save('statestore', { key: 'etag', value: 1 });
    const first = await client.state.get('statestore', 'etag');
    await client.state.save('statestore', { key: 'etag', value: 2, etag: first.etag });
    const error = await client.state
      .save('statestore', { key: 'etag', value: 3, etag: first.etag })
      .then(() => undefined, (e) => e);
    assert.ok(error instanceof DaprError);
    assert.ok(error instanceof Error);
    assert.equal(error.status, 409);
    assert.equal(error.errorCode, 'ERR_STATE_SAVE');
    assert.match(error.message, /etag/i);
    assert.equal((await client.state.get('statestore', 'etag')).value, 2);
  });

  test('first-write refuses to overwrite an existing key', async () => {
    await client.state.save('statestore', { key: 'fw', value: 'a', options: { concurrency: 'first-write' } });
    await assert.rejects(
      client.state.save('statestore', { key: 'fw', value: 'b', options: { concurrency: 'first-write' } }),
      (e) => e instanceof DaprError && e.status === 409,
    );
  });

  test('metadata reaches the store: a TTL shows up as ttlexpiretime (header names have no case)', async () => {
    await client.state.save('statestore', { key: 'ttl', value: 'x' }, { metadata: { ttlInSeconds: '60' } });
    const item = await client.state.get('statestore', 'ttl');
    assert.match(item.metadata.ttlexpiretime, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  });

  test('delete, with and without an ETag', async () => {
    await client.state.save('statestore', { key: 'gone', value: true });
    const { etag } = await client.state.get('statestore', 'gone');
    await assert.rejects(client.state.delete('statestore', 'gone', { etag: 'not-the-etag' }), { status: 409 });
    await client.state.delete('statestore', 'gone', { etag });
    assert.equal(await client.state.get('statestore', 'gone'), undefined);
    await client.state.delete('statestore', 'gone');
  });

  test('bulk get keeps the request order and marks missing keys', async () => {
    await client.state.save('statestore', [
      { key: 'b1', value: { n: 1 } },
      { key: 'b2', value: 'two' },
    ]);
    const items = await client.state.getBulk('statestore', ['b2', 'missing', 'b1'], { parallelism: 2 });
    assert.deepEqual(
      items.map((i) => [i.key, i.value]),
      [['b2', 'two'], ['missing', undefined], ['b1', { n: 1 }]],
    );
    assert.ok(items[0].etag);
    assert.equal('value' in items[1], false);
  });

  test('a transaction applies all operations, or none when an ETag is stale', async () => {
    await client.state.save('statestore', { key: 't-old', value: 'old' });
    await client.state.transaction('statestore', [
      { operation: 'upsert', request: { key: 't-new', value: { ok: true } } },
      { operation: 'delete', request: { key: 't-old' } },
    ]);
    assert.deepEqual((await client.state.get('statestore', 't-new')).value, { ok: true });
    assert.equal(await client.state.get('statestore', 't-old'), undefined);

    const error = await client.state
      .transaction('statestore', [
        { operation: 'upsert', request: { key: 't-other', value: 1 } },
        { operation: 'upsert', request: { key: 't-new', value: 2, etag: 'stale' } },
      ])
      .then(() => undefined, (e) => e);
    assert.equal(error.status, 500);
    assert.equal(error.errorCode, 'ERR_STATE_TRANSACTION');
    assert.equal(await client.state.get('statestore', 't-other'), undefined);
  });

  test('query filters, sorts and pages', async () => {
    await client.state.save('statestore', [
      { key: 'q1', value: { kind: 'fruit', name: 'apple', rank: 3 } },
      { key: 'q2', value: { kind: 'fruit', name: 'pear', rank: 1 } },
      { key: 'q3', value: { kind: 'veg', name: 'leek', rank: 2 } },
    ]);
    const page = await client.state.query('statestore', {
      filter: { EQ: { kind: 'fruit' } },
      sort: [{ key: 'rank', order: 'ASC' }],
      page: { limit: 1 },
    });
    assert.deepEqual(
      page.results.map((r) => [r.key, r.value.name]),
      [['q2', 'pear']],
    );
    assert.ok(page.token, 'a token for the next page');
    const next = await client.state.query('statestore', {
      filter: { EQ: { kind: 'fruit' } },
      sort: [{ key: 'rank', order: 'ASC' }],
      page: { limit: 1, token: page.token },
    });
    assert.deepEqual(next.results.map((r) => r.key), ['q1']);
    const none = await client.state.query('statestore', { filter: { EQ: { kind: 'mineral' } } });
    assert.deepEqual(none, { results: [] });
  });

  test('an unknown store is a DaprError with the sidecar status and code', async () => {
    await assert.rejects(client.state.get('nope', 'k'), {
      name: 'DaprError',
      status: 400,
      errorCode: 'ERR_STATE_STORE_NOT_FOUND',
      message: 'state store nope is not found',
    });
  });
});

describe('secrets', () => {
  test('get one secret and all of them', async () => {
    assert.deepEqual(await client.secrets.get('localsecrets', 'db-password'), { 'db-password': 'hunter2' });
    assert.deepEqual(await client.secrets.getBulk('localsecrets'), {
      'db-password': { 'db-password': 'hunter2' },
      'api:key': { 'api:key': 'k-123' },
    });
  });

  test('a missing secret and an unknown store are DaprErrors', async () => {
    await assert.rejects(client.secrets.get('localsecrets', 'nope'), { status: 500, errorCode: 'ERR_SECRET_GET' });
    await assert.rejects(client.secrets.get('nostore', 'x'), { status: 401, errorCode: 'ERR_SECRET_STORE_NOT_FOUND' });
  });
});

describe('metadata and health', () => {
  test('metadata names the app and its components; set adds an extended entry', async () => {
    await client.metadata.set('owner', 'node-tests');
    const metadata = await client.metadata.get();
    assert.equal(metadata.id, 'nodetest');
    assert.deepEqual(
      metadata.components.map((c) => c.name).sort(),
      ['localsecrets', 'statestore'],
    );
    assert.equal(metadata.extended.owner, 'node-tests');
  });

  test('waitForSidecar resolves for a running sidecar and fails fast for a closed port', async () => {
    await client.health.waitForSidecar({ timeoutMs: 2000 });
    assert.equal(await client.health.isHealthy(), true);
    const nobody = new DaprClient({ port: 1 });
    await assert.rejects(nobody.health.waitForSidecar({ timeoutMs: 300 }), /not ready within 300 ms/);
  });

  test('DAPR_HTTP_PORT and DAPR_HTTP_ENDPOINT are read when no option is given', async () => {
    const saved = { port: process.env.DAPR_HTTP_PORT, endpoint: process.env.DAPR_HTTP_ENDPOINT };
    try {
      delete process.env.DAPR_HTTP_ENDPOINT;
      process.env.DAPR_HTTP_PORT = String(sidecar.port);
      assert.equal((await new DaprClient().metadata.get()).id, 'nodetest');
      process.env.DAPR_HTTP_ENDPOINT = `${sidecar.url}/`;
      process.env.DAPR_HTTP_PORT = '1';
      assert.equal((await new DaprClient().metadata.get()).id, 'nodetest');
    } finally {
      for (const [name, value] of [['DAPR_HTTP_PORT', saved.port], ['DAPR_HTTP_ENDPOINT', saved.endpoint]]) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
  });

  test('a call that outlives its signal is aborted', async () => {
    await assert.rejects(
      client.state.get('statestore', 'order-1', { signal: AbortSignal.abort() }),
      { name: 'AbortError' },
    );
  });
});

describe('API token', () => {
  let guarded;
  before(async () => {
    guarded = await startSidecar({ env: { DAPR_API_TOKEN: 's3cret' } });
  });
  after(async () => {
    await guarded?.stop();
  });

  test('DAPR_API_TOKEN is sent; a wrong token is a 401 DaprError with the plain-text message', async () => {
    const saved = process.env.DAPR_API_TOKEN;
    try {
      process.env.DAPR_API_TOKEN = 's3cret';
      const withToken = new DaprClient({ port: guarded.port });
      await withToken.state.save('statestore', { key: 'k', value: 1 });
      assert.equal((await withToken.state.get('statestore', 'k')).value, 1);
    } finally {
      if (saved === undefined) delete process.env.DAPR_API_TOKEN;
      else process.env.DAPR_API_TOKEN = saved;
    }
    const wrong = new DaprClient({ port: guarded.port, apiToken: 'nope' });
    await assert.rejects(wrong.state.get('statestore', 'k'), {
      name: 'DaprError',
      status: 401,
      errorCode: '',
      message: 'invalid api token',
    });
  });
});
