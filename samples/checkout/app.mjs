// checkout: takes orders over HTTP, keeps them in the shared state store and publishes them on
// "orders" for fulfilment; records the shipments fulfilment announces on "shipments".
//
//   POST /orders      {"id": "1", "item": "book", "qty": 2, "priority": false}
//                     201 the stored order, with fulfilment's quote (asked by service invocation;
//                     null when fulfilment gave none); 409 when an order with that id exists;
//                     400 no usable id
//   GET  /orders/:id  200 {"order": {...}, "etag": "...", "shipment": {...} | null}; 404 unknown id
//
// Checkout checks only what it needs to store an order (its id). Whether an order can be shipped
// is fulfilment's call: one it cannot ship ends on the dead-letter topic and comes back "rejected".
import http from 'node:http';
import { DROP, DaprClient, DaprError, SubscriptionServer } from '../../clients/node/index.js';

const STORE = process.env.STATE_STORE ?? 'statestore';
const PUBSUB = process.env.PUBSUB ?? 'pubsub';
const PORT = Number(process.env.APP_PORT ?? 3001);
const VALID_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const MAX_BODY = 64 * 1024;

const dapr = new DaprClient();
const QUOTE_TIMEOUT_MS = 5000;

const isConflict = (error) => error instanceof DaprError && error.status === 409;

async function recordShipment(event) {
  const shipment = event.data;
  if (typeof shipment?.orderId !== 'string' || !VALID_ID.test(shipment.orderId)) {
    console.error(`dropping a shipment without a valid orderId: ${JSON.stringify(shipment)}`);
    return DROP;
  }
  try {
    // first-write: a redelivered shipment finds its record there and changes nothing.
    await dapr.state.save(STORE, {
      key: `shipment-${shipment.orderId}`,
      value: { ...shipment, receivedAt: new Date().toISOString() },
      options: { concurrency: 'first-write' },
    });
  } catch (error) {
    if (isConflict(error)) return;
    throw error; // the sidecar retries the delivery
  }
  console.log(`order ${shipment.orderId} is on its way: ${shipment.carrier} ${shipment.tracking}`);
}

const subscriptions = new SubscriptionServer().subscribe(PUBSUB, 'shipments', recordShipment, {
  route: '/shipments',
});

function send(response, status, body, headers = {}) {
  response.writeHead(status, { 'content-type': 'application/json', ...headers });
  response.end(JSON.stringify(body));
}

async function readJSON(request) {
  const chunks = [];
  let size = 0;
  for await (const chunk of request) {
    size += chunk.length;
    if (size > MAX_BODY) throw new Error('body too large');
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

// Fulfilment's price for the order, asked through the sidecar (service invocation): the sidecar
// finds fulfilment's sidecar, which calls GET /quote on fulfilment. null when there is none.
async function askQuote(order) {
  const query = new URLSearchParams({
    item: String(order.item ?? ''),
    qty: String(order.qty ?? ''),
    priority: String(order.priority),
  });
  try {
    const answer = await dapr.request('GET', '/v1.0/invoke/fulfilment/method/quote', {
      query,
      signal: AbortSignal.timeout(QUOTE_TIMEOUT_MS),
    });
    return await answer.json();
  } catch (error) {
    console.error(`order ${order.id}: no quote from fulfilment: ${error.message}`);
    return null;
  }
}

async function createOrder(request, response) {
  let body;
  try {
    body = await readJSON(request);
  } catch (error) {
    return send(response, 400, { error: `not JSON: ${error.message}` });
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return send(response, 400, { error: 'an order is a JSON object' });
  }
  const id = typeof body.id === 'number' ? String(body.id) : body.id;
  if (typeof id !== 'string' || !VALID_ID.test(id)) {
    return send(response, 400, { error: 'id: 1 to 64 letters, digits, "_", "." or "-"' });
  }
  // priority is always a boolean on the topic, so fulfilment's routing rule never meets a gap.
  const published = { id, item: body.item, qty: body.qty, priority: body.priority === true };
  const quote = await askQuote(published);
  const order = { ...published, quote, status: 'accepted', acceptedAt: new Date().toISOString() };
  const key = `order-${id}`;
  try {
    await dapr.state.save(STORE, { key, value: order, options: { concurrency: 'first-write' } });
  } catch (error) {
    if (isConflict(error)) return send(response, 409, { error: `order ${id} exists` });
    throw error;
  }
  try {
    await dapr.pubsub.publish(PUBSUB, 'orders', published);
  } catch (error) {
    // Not published, so nobody will ever ship it: take it back and let the caller try again.
    await dapr.state.delete(STORE, key).catch(() => {});
    console.error(`order ${id}: publishing failed: ${error.message}`);
    return send(response, 503, { error: 'the order could not be passed on; try again' });
  }
  const price = quote ? `, quoted ${quote.totalCents / 100} ${quote.currency}` : '';
  console.log(`order ${id} accepted: ${body.qty} x ${body.item}${published.priority ? ' (priority)' : ''}${price}`);
  send(response, 201, order, { location: `/orders/${id}` });
}

async function getOrder(id, response) {
  const [order, shipment] = await dapr.state.getBulk(STORE, [`order-${id}`, `shipment-${id}`]);
  if (order.value === undefined) return send(response, 404, { error: `no order ${id}` });
  send(response, 200, { order: order.value, etag: order.etag, shipment: shipment.value ?? null });
}

async function route(request, response) {
  if (await subscriptions.handle(request, response)) return;
  const { pathname } = new URL(request.url ?? '/', 'http://checkout');
  if (pathname === '/orders' && request.method === 'POST') return createOrder(request, response);
  const match = /^\/orders\/([^/]+)$/.exec(pathname);
  const id = match ? decodeURIComponent(match[1]) : '';
  if (VALID_ID.test(id) && request.method === 'GET') return getOrder(id, response);
  send(response, 404, { error: 'not found' });
}

const server = http.createServer((request, response) => {
  route(request, response).catch((error) => {
    console.error(`${request.method} ${request.url}: ${error.message}`);
    if (!response.headersSent) send(response, 500, { error: 'internal error' });
  });
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.closeAllConnections();
    server.close(() => {
      console.log('checkout stopped');
      process.exit(0);
    });
  });
}

server.listen(PORT, '127.0.0.1', () => console.log(`checkout listening on 127.0.0.1:${PORT}`));
