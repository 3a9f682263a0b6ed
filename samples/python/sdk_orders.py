"""An order service written with the official Dapr Python SDK (`pip install dapr`), unchanged.

Run it beside Pillion:

    pillion run --app-id orders -- python samples/python/sdk_orders.py

`pillion run` sets DAPR_HTTP_PORT and DAPR_GRPC_PORT, and DaprClient talks gRPC to the sidecar:
the order is saved with optimistic concurrency (ETags), an event is published, and the same app
reads it back through a streaming subscription (no port of its own). It exits 0 when every step
worked, so it doubles as a smoke test.
"""

from __future__ import annotations

import json
import sys
import uuid

from dapr.clients import DaprClient
from dapr.clients.exceptions import DaprGrpcError
from dapr.clients.grpc._state import Concurrency, StateOptions

STORE = "statestore"
PUBSUB = "pubsub"
TOPIC = "orders"


def main() -> int:
    order_id = uuid.uuid4().hex[:8]
    order = {"id": order_id, "item": "book", "qty": 2}
    with DaprClient() as client:
        # Subscribe first, so the event published below is waiting for us.
        subscription = client.subscribe(PUBSUB, TOPIC)
        try:
            client.save_state(STORE, f"order-{order_id}", json.dumps(order))
            saved = client.get_state(STORE, f"order-{order_id}")
            print(f"saved order {order_id} (etag {saved.etag})")

            # A stale ETag loses: the write is refused with ABORTED, as daprd does.
            client.save_state(STORE, f"order-{order_id}", json.dumps({**order, "qty": 3}), etag=saved.etag)
            try:
                client.save_state(
                    STORE,
                    f"order-{order_id}",
                    json.dumps({**order, "qty": 4}),
                    etag=saved.etag,
                    options=StateOptions(concurrency=Concurrency.first_write),
                )
                print("FAIL: a stale etag was accepted")
                return 1
            except DaprGrpcError as error:
                print(f"stale update refused: {error.code().name}")

            client.publish_event(PUBSUB, TOPIC, data=json.dumps(order), data_content_type="application/json")
            while True:
                message = subscription.next_message()
                subscription.respond_success(message)
                if message.data().get("id") == order_id:
                    break
            print(f"received order {order_id} on topic {message.topic()}")
            final = json.loads(client.get_state(STORE, f"order-{order_id}").data)
            print(f"stored quantity: {final['qty']}")
            return 0 if final["qty"] == 3 else 1
        finally:
            subscription.close()


if __name__ == "__main__":
    sys.exit(main())
