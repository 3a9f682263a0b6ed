"""Metadata the runtime itself reads from a component, whatever its type (Dapr's well-known keys)."""

from __future__ import annotations

from components.metadata import FieldType, MetadataField, MetadataSchema

STATE_FIELDS = MetadataSchema(
    (
        MetadataField(
            "keyPrefix",
            default="appid",
            description="How stored keys are prefixed: `appid` (default), `name`, `namespace`, `none`, "
            "or any other text used as a literal prefix.",
        ),
        MetadataField(
            "actorStateStore",
            FieldType.BOOLEAN,
            default=False,
            description="Accepted for compatibility; Pillion has no actors.",
        ),
        MetadataField(
            "primaryEncryptionKey",
            default="",
            sensitive=True,
            description="Encrypt values at rest with AES-GCM under this hex-encoded 128, 192 or "
            "256-bit key, usually given as a secretKeyRef (see docs/secrets.md). The store then "
            "offers no query API.",
        ),
        MetadataField(
            "outboxPublishPubsub",
            default="",
            description="Transactional outbox: the pubsub that receives a message for each upsert of a "
            "state transaction, published only if the transaction committed (docs/outbox.md).",
        ),
        MetadataField("outboxPublishTopic", default="", description="Transactional outbox: their topic."),
        MetadataField(
            "outboxPubsub",
            default="",
            description="Transactional outbox: the pubsub of the internal hand-off topic (default: "
            "`outboxPublishPubsub`).",
        ),
        MetadataField(
            "outboxDiscardWhenMissingState",
            FieldType.BOOLEAN,
            default=False,
            description="Transactional outbox: drop a staged message at once when its transaction's "
            "marker is not found (default: wait for it, dropping it after 2 minutes).",
        ),
        MetadataField(
            "secondaryEncryptionKey",
            default="",
            sensitive=True,
            description="An older key values may still be encrypted with; they are read with it and "
            "rewritten with the primary key on their next save.",
        ),
    )
)

# How the runtime delivers a message to the app; a subscription's metadata may override each one.
DELIVERY_FIELDS = MetadataSchema(
    (
        MetadataField(
            "deliveryMaxAttempts",
            FieldType.INTEGER,
            default=None,
            description="Pillion: tries per message (the first included) while the app answers RETRY "
            "or an error; then the message goes to the dead-letter topic, or is dropped with a warning. "
            "-1 retries forever. Unset: a Resiliency inbound retry policy decides, else 1 with a "
            "dead-letter topic (as daprd) and 5 without.",
        ),
        MetadataField(
            "deliveryRetryInterval",
            FieldType.DURATION,
            default=1.0,
            description="Pillion: wait before the first retry; each next wait is 1.5 times longer "
            "(with +/-50% jitter).",
        ),
        MetadataField(
            "deliveryMaxRetryInterval",
            FieldType.DURATION,
            default=15.0,
            description="Pillion: the longest wait between two tries.",
        ),
        MetadataField(
            "deliveryTimeout",
            FieldType.DURATION,
            default=60.0,
            description="Pillion: how long one call to the app may take before it counts as a failed "
            "try; 0 waits forever.",
        ),
    )
)

PUBSUB_FIELDS = (
    MetadataSchema(
        (
            MetadataField(
                "allowedTopics",
                default="",
                description="Comma-separated topics this component may be used with; empty allows all.",
            ),
            MetadataField(
                "publishingScopes",
                default="",
                description="Per app, the topics it may publish: `app1=t1,t2;app2=` (`app2=` means none). "
                "Apps not listed may publish any allowed topic.",
            ),
            MetadataField(
                "subscriptionScopes",
                default="",
                description="Per app, the topics it may subscribe to, in the `publishingScopes` format.",
            ),
            MetadataField(
                "protectedTopics",
                default="",
                description="Comma-separated topics that only apps with an explicit scope may use.",
            ),
        )
    )
    + DELIVERY_FIELDS
)

LOCK_FIELDS = MetadataSchema(
    (
        MetadataField(
            "keyPrefix",
            default="appid",
            description="What the stored key `lock||<prefix>||<resourceId>` carries: `appid` (default), "
            "`name` (the component's name), `none` (just `lock||<resourceId>`), or any other text.",
        ),
    )
)

BINDING_FIELDS = MetadataSchema(
    (
        MetadataField(
            "direction",
            default="",
            description="`input`, `output` or `input, output`; empty: every direction the type has. "
            "Naming `input` skips the `OPTIONS` question to the app.",
        ),
        MetadataField(
            "route",
            default="",
            description="Path on the app that receives input events (default: the component's name).",
        ),
    )
)

BLOCK_FIELDS: dict[str, MetadataSchema] = {
    "bindings": BINDING_FIELDS,
    "state": STATE_FIELDS,
    "pubsub": PUBSUB_FIELDS,
    "lock": LOCK_FIELDS,
}


def schema_for(type_name: str, component_schema: MetadataSchema) -> MetadataSchema:
    block = type_name.split(".", 1)[0]
    common = BLOCK_FIELDS.get(block)
    return component_schema + common if common is not None else component_schema
