// Compiled (never run) by types.test.mjs: typical use of pillion-client must type-check under
// --strict against index.d.ts, and misuse must not.
import {
  DaprClient,
  DaprError,
  DROP,
  SubscriptionServer,
  type BulkStateItem,
  type SidecarMetadata,
  type StateItem,
  type Status,
  type TopicEvent,
} from '../index.js';

interface Order {
  item: string;
  qty: number;
}

export async function usage(): Promise<void> {
  const client = new DaprClient({ port: 3500, apiToken: 'token', timeoutMs: 5_000 });
  await client.health.waitForSidecar({ timeoutMs: 10_000 });

  await client.state.save('statestore', { key: 'o1', value: { item: 'book', qty: 1 } }, { metadata: { ttlInSeconds: '60' } });
  const item: StateItem<Order> | undefined = await client.state.get<Order>('statestore', 'o1', { consistency: 'strong' });
  if (item) {
    const qty: number = item.value.qty;
    await client.state.save('statestore', [{ key: 'o1', value: { ...item.value, qty: qty + 1 }, etag: item.etag, options: { concurrency: 'first-write' } }]);
  }
  await client.state.delete('statestore', 'o1', { etag: 'e', concurrency: 'last-write' });
  const bulk: BulkStateItem<Order>[] = await client.state.getBulk<Order>('statestore', ['a', 'b'], { parallelism: 2 });
  bulk.forEach((b) => b.value?.item);
  await client.state.transaction('statestore', [
    { operation: 'upsert', request: { key: 'a', value: 1 } },
    { operation: 'delete', request: { key: 'b', etag: 'e' } },
  ]);
  const page = await client.state.query<Order>('statestore', { filter: { EQ: { item: 'book' } }, page: { limit: 10 } });
  const token: string | undefined = page.token;
  void token;

  await client.pubsub.publish('pubsub', 'orders', { id: 1 }, { metadata: { ttlInSeconds: '10' } });
  await client.pubsub.publishCloudEvent('pubsub', 'orders', { id: 'e', type: 't', specversion: '1.0', data: {} });
  await client.pubsub.publishRaw('pubsub', 'orders', new Uint8Array([1, 2]));
  const { failedEntries } = await client.pubsub.publishBulk('pubsub', 'orders', [{ event: { id: 2 } }, { event: 'x', entryId: 'x' }]);
  failedEntries.map((f) => f.entryId + f.error);

  const secret: Record<string, string> = await client.secrets.get('localsecrets', 'db');
  const all: Record<string, Record<string, string>> = await client.secrets.getBulk('localsecrets');
  void secret;
  void all;
  const metadata: SidecarMetadata = await client.metadata.get();
  metadata.components?.map((c) => c.capabilities);
  await client.metadata.set('owner', 'me');

  try {
    await client.state.get('nope', 'k', { signal: AbortSignal.timeout(100) });
  } catch (error) {
    if (error instanceof DaprError) {
      const status: number = error.status;
      const code: string = error.errorCode;
      void status;
      void code;
    }
  }

  const server = new SubscriptionServer({ appApiToken: 'app' })
    .subscribe<Order>('pubsub', 'orders', (event: TopicEvent<Order>) => {
      const qty: number = event.data.qty;
      return qty > 0 ? undefined : DROP;
    })
    .subscribe('pubsub', 'orders', async (): Promise<Status> => 'RETRY', { match: 'event.type == "x"' });
  const port: number = await server.listen(0);
  void port;
  await server.close();
}

export async function misuse(client: DaprClient): Promise<void> {
  // @ts-expect-error: the concurrency is one of two strings
  await client.state.save('s', { key: 'k', value: 1, options: { concurrency: 'sometimes' } });
  // @ts-expect-error: save needs a key
  await client.state.save('s', { value: 1 });
  // @ts-expect-error: a handler's status is SUCCESS, RETRY or DROP
  new SubscriptionServer().subscribe('p', 't', () => 'OK');
  // @ts-expect-error: metadata values are strings
  await client.pubsub.publish('p', 't', {}, { metadata: { ttlInSeconds: 10 } });
}
