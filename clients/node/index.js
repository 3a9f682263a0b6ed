// A thin client for the Dapr HTTP API v1.0 (Pillion or daprd). Node 18+, no dependencies:
// global fetch for calls to the sidecar, node:http for the subscription server.
import { randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';

const METADATA_PREFIX = 'metadata.';

/** A non-2xx answer from the sidecar, with daprd's status and errorCode. */
export class DaprError extends Error {
  constructor(status, errorCode, message, { details = [], body = '', method = '', path = '' } = {}) {
    super(message || `sidecar answered ${status}`);
    this.name = 'DaprError';
    this.status = status;
    this.errorCode = errorCode;
    this.details = details;
    this.body = body;
    this.method = method;
    this.path = path;
  }
}

const segment = (value) => encodeURIComponent(String(value));

function metadataQuery(metadata, query = new URLSearchParams()) {
  for (const [key, value] of Object.entries(metadata ?? {})) {
    query.set(METADATA_PREFIX + key, String(value));
  }
  return query;
}

function responseMetadata(headers) {
  const metadata = {};
  for (const [name, value] of headers) {
    if (name.startsWith(METADATA_PREFIX)) metadata[name.slice(METADATA_PREFIX.length)] = value;
  }
  return metadata;
}

// daprd stores JSON text; a value that is not JSON (possible through other clients) is kept as text.
function parseValue(text) {
  if (text === '') return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function isBytes(value) {
  return value instanceof Uint8Array || value instanceof ArrayBuffer;
}

function publishBody(data, contentType) {
  if (isBytes(data)) return { body: data, contentType: contentType ?? 'application/octet-stream' };
  if (typeof data === 'string') return { body: data, contentType: contentType ?? 'text/plain' };
  return { body: JSON.stringify(data), contentType: contentType ?? 'application/json' };
}

function bulkEntry(entry) {
  const { event } = entry;
  let contentType = entry.contentType;
  let wireEvent = event;
  if (isBytes(event)) {
    contentType ??= 'application/octet-stream';
    wireEvent = Buffer.from(event instanceof ArrayBuffer ? new Uint8Array(event) : event).toString('base64');
  } else if (typeof event === 'string') {
    contentType ??= 'text/plain';
  } else {
    contentType ??= 'application/json';
  }
  const wire = { entryId: entry.entryId ?? randomUUID(), event: wireEvent, contentType };
  if (entry.metadata) wire.metadata = entry.metadata;
  return wire;
}

function saveItem(item) {
  const wire = { key: item.key };
  if (item.value !== undefined) wire.value = item.value;
  if (item.etag) wire.etag = item.etag;
  if (item.metadata) wire.metadata = item.metadata;
  if (item.options) wire.options = item.options;
  return wire;
}

function resultItem(raw) {
  const item = { key: raw.key };
  if ('data' in raw) item.value = raw.data;
  if (raw.etag) item.etag = raw.etag;
  if (raw.metadata) item.metadata = raw.metadata;
  if (raw.error) item.error = raw.error;
  return item;
}

export class DaprClient {
  constructor(options = {}) {
    const env = process.env;
    const port = options.port ?? env.DAPR_HTTP_PORT ?? 3500;
    const endpoint = options.endpoint ?? env.DAPR_HTTP_ENDPOINT ?? `http://${options.host ?? '127.0.0.1'}:${port}`;
    this.endpoint = endpoint.replace(/\/+$/, '');
    this.apiToken = options.apiToken ?? (env.DAPR_API_TOKEN || undefined);
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.state = new StateAPI(this);
    this.pubsub = new PubSubAPI(this);
    this.secrets = new SecretsAPI(this);
    this.metadata = new MetadataAPI(this);
    this.health = new HealthAPI(this);
  }

  /** One call to the sidecar; a non-2xx answer throws DaprError. Returns the fetch Response. */
  async request(method, path, { query, headers = {}, body, signal } = {}) {
    const qs = query?.toString() ? `?${query}` : '';
    const allHeaders = { ...headers };
    if (this.apiToken) allHeaders['dapr-api-token'] = this.apiToken;
    const response = await fetch(this.endpoint + path + qs, {
      method,
      headers: allHeaders,
      body,
      signal: signal ?? AbortSignal.timeout(this.timeoutMs),
    });
    if (response.ok) return response;
    const text = await response.text();
    let errorCode = '';
    let message = text.trim();
    let details = [];
    try {
      const parsed = JSON.parse(text);
      errorCode = parsed.errorCode ?? '';
      message = parsed.message ?? message;
      details = parsed.details ?? [];
    } catch {
      // Not every failure is JSON: a bad API token is answered in plain text.
    }
    throw new DaprError(response.status, errorCode, message, { details, body: text, method, path });
  }

  async requestJSON(method, path, { body, ...rest } = {}) {
    return this.request(method, path, {
      ...rest,
      headers: { 'content-type': 'application/json', ...rest.headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }
}

class StateAPI {
  constructor(client) {
    this.client = client;
  }

  async get(store, key, { consistency, metadata, signal } = {}) {
    const query = metadataQuery(metadata);
    if (consistency) query.set('consistency', consistency);
    const response = await this.client.request('GET', `/v1.0/state/${segment(store)}/${segment(key)}`, {
      query,
      signal,
    });
    if (response.status === 204) return undefined;
    const item = { key, value: parseValue(await response.text()), metadata: responseMetadata(response.headers) };
    const etag = response.headers.get('etag');
    if (etag) item.etag = etag;
    return item;
  }

  async save(store, items, { metadata, signal } = {}) {
    const list = Array.isArray(items) ? items : [items];
    await this.client.requestJSON('POST', `/v1.0/state/${segment(store)}`, {
      query: metadataQuery(metadata),
      body: list.map(saveItem),
      signal,
    });
  }

  async delete(store, key, { etag, concurrency, consistency, metadata, signal } = {}) {
    const query = metadataQuery(metadata);
    if (concurrency) query.set('concurrency', concurrency);
    if (consistency) query.set('consistency', consistency);
    await this.client.request('DELETE', `/v1.0/state/${segment(store)}/${segment(key)}`, {
      query,
      headers: etag ? { 'if-match': etag } : {},
      signal,
    });
  }

  async getBulk(store, keys, { parallelism, metadata, signal } = {}) {
    const body = { keys };
    if (parallelism !== undefined) body.parallelism = parallelism;
    if (metadata) body.metadata = metadata;
    const response = await this.client.requestJSON('POST', `/v1.0/state/${segment(store)}/bulk`, {
      body,
      signal,
    });
    return (await response.json()).map(resultItem);
  }

  async transaction(store, operations, { metadata, signal } = {}) {
    const body = {
      operations: operations.map((op) => ({ operation: op.operation, request: saveItem(op.request) })),
    };
    if (metadata) body.metadata = metadata;
    await this.client.requestJSON('POST', `/v1.0/state/${segment(store)}/transaction`, { body, signal });
  }

  async query(store, query, { metadata, signal } = {}) {
    const response = await this.client.requestJSON('POST', `/v1.0-alpha1/state/${segment(store)}/query`, {
      query: metadataQuery(metadata),
      body: query,
      signal,
    });
    if (response.status === 204) return { results: [] };
    const raw = await response.json();
    const page = { results: (raw.results ?? []).map(resultItem) };
    if (raw.token) page.token = raw.token;
    if (raw.metadata) page.metadata = raw.metadata;
    return page;
  }
}

class PubSubAPI {
  constructor(client) {
    this.client = client;
  }

  async publish(pubsub, topic, data, { contentType, metadata, signal } = {}) {
    const wire = publishBody(data, contentType);
    await this.client.request('POST', `/v1.0/publish/${segment(pubsub)}/${segment(topic)}`, {
      query: metadataQuery(metadata),
      headers: { 'content-type': wire.contentType },
      body: wire.body,
      signal,
    });
  }

  async publishCloudEvent(pubsub, topic, event, { metadata, signal } = {}) {
    await this.publish(pubsub, topic, JSON.stringify(event), {
      contentType: 'application/cloudevents+json',
      metadata,
      signal,
    });
  }

  async publishRaw(pubsub, topic, data, { contentType, metadata, signal } = {}) {
    await this.publish(pubsub, topic, data, {
      contentType,
      metadata: { ...metadata, rawPayload: 'true' },
      signal,
    });
  }

  async publishBulk(pubsub, topic, entries, { metadata, signal } = {}) {
    const body = entries.map(bulkEntry);
    try {
      await this.client.requestJSON('POST', `/v1.0-alpha1/publish/bulk/${segment(pubsub)}/${segment(topic)}`, {
        query: metadataQuery(metadata),
        body,
        signal,
      });
    } catch (error) {
      // A partial failure names the entries that did not go out: that is a result, not an exception.
      const failed = error instanceof DaprError && error.status === 500 && parseFailedEntries(error.body);
      if (failed) return { failedEntries: failed };
      throw error;
    }
    return { failedEntries: [] };
  }
}

function parseFailedEntries(text) {
  try {
    const parsed = JSON.parse(text);
    return Array.isArray(parsed.failedEntries) ? parsed.failedEntries : undefined;
  } catch {
    return undefined;
  }
}

class SecretsAPI {
  constructor(client) {
    this.client = client;
  }

  async get(store, name, { metadata, signal } = {}) {
    const response = await this.client.request('GET', `/v1.0/secrets/${segment(store)}/${segment(name)}`, {
      query: metadataQuery(metadata),
      signal,
    });
    return response.status === 204 ? {} : response.json();
  }

  async getBulk(store, { metadata, signal } = {}) {
    const response = await this.client.request('GET', `/v1.0/secrets/${segment(store)}/bulk`, {
      query: metadataQuery(metadata),
      signal,
    });
    return response.status === 204 ? {} : response.json();
  }
}

class MetadataAPI {
  constructor(client) {
    this.client = client;
  }

  async get({ signal } = {}) {
    return (await this.client.request('GET', '/v1.0/metadata', { signal })).json();
  }

  async set(key, value, { signal } = {}) {
    await this.client.request('PUT', `/v1.0/metadata/${segment(key)}`, {
      headers: { 'content-type': 'text/plain' },
      body: value,
      signal,
    });
  }
}

class HealthAPI {
  constructor(client) {
    this.client = client;
  }

  /** True once the sidecar is fully up, the app included (GET /v1.0/healthz). */
  async isHealthy({ signal } = {}) {
    try {
      await this.client.request('GET', '/v1.0/healthz', { signal });
      return true;
    } catch (error) {
      if (error instanceof DaprError) return false;
      throw error;
    }
  }

  /** Wait until the sidecar's components and API are up (GET /v1.0/healthz/outbound = 204). */
  async waitForSidecar({ timeoutMs = 60_000, intervalMs = 100 } = {}) {
    const deadline = Date.now() + timeoutMs;
    let last;
    for (;;) {
      try {
        const left = Math.max(1, Math.min(2_000, deadline - Date.now()));
        await this.client.request('GET', '/v1.0/healthz/outbound', { signal: AbortSignal.timeout(left) });
        return;
      } catch (error) {
        last = error;
      }
      if (Date.now() + intervalMs > deadline) {
        throw new Error(`sidecar at ${this.client.endpoint} not ready within ${timeoutMs} ms: ${last?.message}`, {
          cause: last,
        });
      }
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
  }
}

// --- Subscriptions: the app side of pub/sub --------------------------------------------------

export const SUCCESS = 'SUCCESS';
export const RETRY = 'RETRY';
export const DROP = 'DROP';
const STATUSES = new Set([SUCCESS, RETRY, DROP]);

const slug = (text) => String(text).replace(/[^A-Za-z0-9_.-]+/g, '_');

function tokenMatches(given, expected) {
  const a = Buffer.from(given ?? '');
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

async function readBody(request) {
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  return Buffer.concat(chunks);
}

function reply(response, status, body) {
  const text = body === undefined ? '' : JSON.stringify(body);
  response.writeHead(status, text ? { 'content-type': 'application/json' } : {});
  response.end(text);
}

function topicEvent(cloudEvent, headers) {
  const data = 'data_base64' in cloudEvent ? Buffer.from(cloudEvent.data_base64, 'base64') : cloudEvent.data;
  return {
    id: cloudEvent.id,
    source: cloudEvent.source,
    type: cloudEvent.type,
    topic: cloudEvent.topic,
    pubsubName: cloudEvent.pubsubname,
    dataContentType: cloudEvent.datacontenttype,
    data,
    cloudEvent,
    headers,
  };
}

/**
 * Answers GET /dapr/subscribe with the registered subscriptions and hands each delivery to its
 * handler. A handler returns SUCCESS, RETRY or DROP (nothing means SUCCESS; a throw means RETRY).
 */
export class SubscriptionServer {
  constructor({ appApiToken = process.env.APP_API_TOKEN || undefined, onError } = {}) {
    this.appApiToken = appApiToken;
    this.onError = onError ?? ((error) => console.error('subscription handler failed:', error));
    this.topics = new Map(); // "pubsub\0topic" -> {pubsubname, topic, deadLetterTopic, metadata, rules[], default}
    this.handlers = new Map(); // route path -> handler
    this.server = undefined;
  }

  /**
   * Subscribe `handler` to `topic` on `pubsub`. With `match` (a CEL expression over `event`) the
   * handler gets only the events it matches; several subscriptions to one topic become one
   * subscription with rules, checked in the order they were added.
   */
  subscribe(pubsub, topic, handler, { route, match, deadLetterTopic, metadata } = {}) {
    const id = `${pubsub}\0${topic}`;
    let entry = this.topics.get(id);
    if (!entry) {
      entry = { pubsubname: pubsub, topic, rules: [], default: undefined, deadLetterTopic: undefined, metadata: {} };
      this.topics.set(id, entry);
    }
    const path = route ?? `/dapr/events/${slug(pubsub)}/${slug(topic)}/${this.handlers.size}`;
    if (this.handlers.has(path)) throw new Error(`route ${path} is already subscribed`);
    this.handlers.set(path, handler);
    if (match) entry.rules.push({ match, path });
    else if (entry.default) throw new Error(`${pubsub}/${topic} already has a handler without a match`);
    else entry.default = path;
    if (deadLetterTopic) entry.deadLetterTopic = deadLetterTopic;
    Object.assign(entry.metadata, metadata);
    return this;
  }

  /** The body of GET /dapr/subscribe. */
  subscriptions() {
    return [...this.topics.values()].map((entry) => {
      const wire = { pubsubname: entry.pubsubname, topic: entry.topic, routes: { rules: entry.rules } };
      if (entry.default) wire.routes.default = entry.default;
      if (entry.deadLetterTopic) wire.deadLetterTopic = entry.deadLetterTopic;
      if (Object.keys(entry.metadata).length) wire.metadata = entry.metadata;
      return wire;
    });
  }

  /**
   * Handle `request` if it is for this server (GET /dapr/subscribe or a subscribed route); resolve
   * to false otherwise, so that it can sit in front of an app's own routes.
   */
  async handle(request, response) {
    const path = new URL(request.url ?? '/', 'http://app').pathname;
    const isDiscovery = request.method === 'GET' && path === '/dapr/subscribe';
    const handler = request.method === 'POST' ? this.handlers.get(path) : undefined;
    if (!isDiscovery && !handler) return false;
    if (this.appApiToken && !tokenMatches(request.headers['dapr-api-token'], this.appApiToken)) {
      reply(response, 401, { message: 'invalid app api token' });
      return true;
    }
    if (isDiscovery) {
      reply(response, 200, this.subscriptions());
      return true;
    }
    let cloudEvent;
    try {
      cloudEvent = JSON.parse((await readBody(request)).toString('utf8'));
    } catch (error) {
      // Redelivering bytes that are not JSON cannot help.
      this.onError(error);
      reply(response, 200, { status: DROP });
      return true;
    }
    let status;
    try {
      status = (await handler(topicEvent(cloudEvent, request.headers))) ?? SUCCESS;
      if (!STATUSES.has(status)) throw new Error(`handler returned ${JSON.stringify(status)}`);
    } catch (error) {
      this.onError(error);
      status = RETRY;
    }
    reply(response, 200, { status });
    return true;
  }

  /** Serve on its own HTTP server; resolves to the bound port. */
  async listen(port = Number(process.env.APP_PORT ?? 3000), host = '127.0.0.1') {
    this.server = http.createServer((request, response) => {
      this.handle(request, response).then(
        (handled) => handled || reply(response, 404, { message: 'not found' }),
        (error) => {
          this.onError(error);
          if (!response.headersSent) reply(response, 500, { message: 'internal error' });
        },
      );
    });
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, resolve);
    });
    return this.server.address().port;
  }

  async close() {
    if (!this.server) return;
    const server = this.server;
    this.server = undefined;
    server.closeAllConnections?.();
    await new Promise((resolve) => server.close(() => resolve()));
  }
}
