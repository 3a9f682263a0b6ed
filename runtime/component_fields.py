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
    )
)

BLOCK_FIELDS: dict[str, MetadataSchema] = {"state": STATE_FIELDS}


def schema_for(type_name: str, component_schema: MetadataSchema) -> MetadataSchema:
    block = type_name.split(".", 1)[0]
    common = BLOCK_FIELDS.get(block)
    return component_schema + common if common is not None else component_schema
