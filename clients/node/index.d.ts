// Types for pillion-client: a thin client for the Dapr HTTP API v1.0.
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http';

export type Metadata = Record<string, string>;
export type Concurrency = 'first-write' | 'last-write';
export type Consistency = 'eventual' | 'strong';

/** Every call takes an optional AbortSignal; without one, the client's timeoutMs applies. */
export interface CallOptions {
  signal?: AbortSignal;
}

export interface ClientOptions {
  /** Full base URL of the sidecar; default DAPR_HTTP_ENDPOINT, else http://host:port. */
  endpoint?: string;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default DAPR_HTTP_PORT, else 3500. */
  port?: number | string;
  /** Sent as dapr-api-token; default DAPR_API_TOKEN. */
  apiToken?: string;
  /** Per-call time limit when no signal is given; default 60000. */
  timeoutMs?: number;
}

/** A non-2xx answer from the sidecar. */
export class DaprError extends Error {
  constructor(
    status: number,
    errorCode: string,
    message: string,
    options?: { details?: unknown[]; body?: string; method?: string; path?: string },
  );
  readonly name: 'DaprError';
  /** HTTP status, e.g. 409 for an ETag mismatch. */
  readonly status: number;
  /** daprd's errorCode, e.g. "ERR_STATE_SAVE"; "" when the answer was not JSON (a bad API token). */
  readonly errorCode: string;
  readonly details: unknown[];
  /** The response body as text. */
  readonly body: string;
  readonly method: string;
  readonly path: string;
}

export interface StateOptions {
  concurrency?: Concurrency;
  consistency?: Consistency;
}

export interface SaveItem<T = unknown> {
  key: string;
  /** Any JSON value; left out, the store keeps JSON null. */
  value?: T;
  /** Write only if the stored ETag is still this one. */
  etag?: string;
  metadata?: Metadata;
  options?: StateOptions;
}

export interface StateItem<T = unknown> {
  key: string;
  value: T;
  etag?: string;
  /** From the metadata.* response headers, so the keys are lower-case: e.g. ttlexpiretime. */
  metadata: Metadata;
}

export interface BulkStateItem<T = unknown> {
  key: string;
  /** Absent when the key does not exist. */
  value?: T;
  etag?: string;
  metadata?: Metadata;
  error?: string;
}

export type TransactionOperation<T = unknown> =
  | { operation: 'upsert'; request: SaveItem<T> }
  | { operation: 'delete'; request: { key: string; etag?: string; metadata?: Metadata; options?: StateOptions } };

export interface StateQuery {
  filter?: Record<string, unknown>;
  sort?: { key: string; order?: 'ASC' | 'DESC' }[];
  page?: { limit?: number; token?: string };
}

export interface QueryResponse<T = unknown> {
  results: BulkStateItem<T>[];
  token?: string;
  metadata?: Metadata;
}

export interface StateAPI {
  /** The item, or undefined when the key is missing (the sidecar answered 204). */
  get<T = unknown>(
    store: string,
    key: string,
    options?: CallOptions & { consistency?: Consistency; metadata?: Metadata },
  ): Promise<StateItem<T> | undefined>;
  save(store: string, items: SaveItem | SaveItem[], options?: CallOptions & { metadata?: Metadata }): Promise<void>;
  delete(
    store: string,
    key: string,
    options?: CallOptions & { etag?: string; metadata?: Metadata } & StateOptions,
  ): Promise<void>;
  getBulk<T = unknown>(
    store: string,
    keys: string[],
    options?: CallOptions & { parallelism?: number; metadata?: Metadata },
  ): Promise<BulkStateItem<T>[]>;
  /** All or nothing; an ETag mismatch fails the whole transaction (500 ERR_STATE_TRANSACTION). */
  transaction(
    store: string,
    operations: TransactionOperation[],
    options?: CallOptions & { metadata?: Metadata },
  ): Promise<void>;
  query<T = unknown>(
    store: string,
    query: StateQuery,
    options?: CallOptions & { metadata?: Metadata },
  ): Promise<QueryResponse<T>>;
}

export interface PublishOptions extends CallOptions {
  /** Default: application/octet-stream for bytes, text/plain for strings, application/json otherwise. */
  contentType?: string;
  /** Sent as metadata.* query parameters (ttlInSeconds, cloudevent.id, ...). */
  metadata?: Metadata;
}

export interface CloudEvent {
  id?: string;
  source?: string;
  type?: string;
  specversion?: string;
  datacontenttype?: string;
  subject?: string;
  data?: unknown;
  data_base64?: string;
  [extension: string]: unknown;
}

export interface BulkPublishEntry {
  event: unknown;
  /** Default: a new UUID. */
  entryId?: string;
  /** Default as for publish; bytes are sent base64-encoded as application/octet-stream. */
  contentType?: string;
  metadata?: Metadata;
}

export interface BulkPublishResult {
  /** Empty when every entry was published. */
  failedEntries: { entryId: string; error: string }[];
}

export interface PubSubAPI {
  /** Objects go as JSON; the sidecar wraps the data in a CloudEvent. */
  publish(pubsub: string, topic: string, data: unknown, options?: PublishOptions): Promise<void>;
  /** Publish your own CloudEvent (application/cloudevents+json); the sidecar keeps its fields. */
  publishCloudEvent(
    pubsub: string,
    topic: string,
    event: CloudEvent,
    options?: CallOptions & { metadata?: Metadata },
  ): Promise<void>;
  /** No CloudEvent envelope: subscribers get the bytes as they were (rawPayload=true). */
  publishRaw(pubsub: string, topic: string, data: unknown, options?: PublishOptions): Promise<void>;
  publishBulk(
    pubsub: string,
    topic: string,
    entries: BulkPublishEntry[],
    options?: CallOptions & { metadata?: Metadata },
  ): Promise<BulkPublishResult>;
}

export interface SecretsAPI {
  /** The secret's keys and values; {} when the store has nothing to say (204). */
  get(store: string, name: string, options?: CallOptions & { metadata?: Metadata }): Promise<Record<string, string>>;
  /** Secret name -> its keys and values. Secrets denied by scope are left out. */
  getBulk(
    store: string,
    options?: CallOptions & { metadata?: Metadata },
  ): Promise<Record<string, Record<string, string>>>;
}

export interface SidecarMetadata {
  id: string;
  runtimeVersion?: string;
  enabledFeatures?: string[];
  components?: { name: string; type: string; version?: string; capabilities?: string[] }[];
  extended?: Record<string, string>;
  subscriptions?: {
    pubsubname: string;
    topic: string;
    metadata?: Metadata;
    rules?: { match?: string; path: string }[];
    deadLetterTopic?: string;
    type: string;
  }[];
  [field: string]: unknown;
}

export interface MetadataAPI {
  get(options?: CallOptions): Promise<SidecarMetadata>;
  /** Set an entry of the extended metadata. */
  set(key: string, value: string, options?: CallOptions): Promise<void>;
}

export interface HealthAPI {
  isHealthy(options?: CallOptions): Promise<boolean>;
  waitForSidecar(options?: { timeoutMs?: number; intervalMs?: number }): Promise<void>;
}

export declare class DaprClient {
  constructor(options?: ClientOptions);
  readonly endpoint: string;
  readonly state: StateAPI;
  readonly pubsub: PubSubAPI;
  readonly secrets: SecretsAPI;
  readonly metadata: MetadataAPI;
  readonly health: HealthAPI;
  /** A raw call; non-2xx answers throw DaprError. */
  request(
    method: string,
    path: string,
    options?: CallOptions & { query?: URLSearchParams; headers?: Record<string, string>; body?: BodyInit },
  ): Promise<Response>;
}

export type Status = 'SUCCESS' | 'RETRY' | 'DROP';
export declare const SUCCESS: 'SUCCESS';
export declare const RETRY: 'RETRY';
export declare const DROP: 'DROP';

export interface TopicEvent<T = unknown> {
  id?: string;
  source?: string;
  type?: string;
  topic?: string;
  pubsubName?: string;
  dataContentType?: string;
  /** The CloudEvent's data; a Buffer when it came as data_base64. */
  data: T;
  cloudEvent: CloudEvent;
  headers: IncomingHttpHeaders;
}

/** Return nothing for SUCCESS; a thrown error means RETRY. */
export type TopicHandler<T = unknown> = (event: TopicEvent<T>) => Status | void | Promise<Status | void>;

export interface SubscribeOptions {
  /** The app path the sidecar delivers to; generated when left out. */
  route?: string;
  /** A CEL expression over `event`, e.g. 'event.type == "order.created"'. */
  match?: string;
  deadLetterTopic?: string;
  metadata?: Metadata;
}

export interface SubscriptionServerOptions {
  /** When set, deliveries must carry it as dapr-api-token; default APP_API_TOKEN. */
  appApiToken?: string;
  onError?: (error: unknown) => void;
}

export declare class SubscriptionServer {
  constructor(options?: SubscriptionServerOptions);
  subscribe<T = unknown>(
    pubsub: string,
    topic: string,
    handler: TopicHandler<T>,
    options?: SubscribeOptions,
  ): this;
  /** The body of GET /dapr/subscribe. */
  subscriptions(): {
    pubsubname: string;
    topic: string;
    routes: { rules: { match: string; path: string }[]; default?: string };
    deadLetterTopic?: string;
    metadata?: Metadata;
  }[];
  /** Resolves to false when the request is not for this server. */
  handle(request: IncomingMessage, response: ServerResponse): Promise<boolean>;
  /** Default port APP_PORT, else 3000; resolves to the bound port. */
  listen(port?: number, host?: string): Promise<number>;
  close(): Promise<void>;
}
