"""Access control for invocations (Configuration ``spec.accessControl``), decided on the target.

The caller is known only by the SPIFFE id of its verified certificate: the ``dapr-caller-app-id``
header proves nothing. Without mTLS there is no identity, so only the global ``defaultAction``
applies, as in daprd.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from runtime.invocation.mtls import Identity

log = logging.getLogger("pillion.acl")


@dataclass(frozen=True)
class Operation:
    name: str
    pattern: re.Pattern[str]
    verbs: dict[str, bool]  # upper-case verb (or "*") -> allowed
    action: bool | None  # the operation's own action (gRPC callees; unused for HTTP)


@dataclass(frozen=True)
class AppPolicy:
    app_id: str
    trust_domain: str
    namespace: str
    default_allow: bool | None
    operations: tuple[Operation, ...] = ()


@dataclass(frozen=True)
class AccessControl:
    default_allow: bool = True
    trust_domain: str = "public"
    policies: dict[tuple[str, str], AppPolicy] = field(default_factory=dict)

    def allows(self, caller: Identity | None, operation: str, verb: str) -> bool:
        allowed = self.default_allow
        if caller is None:
            return allowed
        policy = self.policies.get((caller.app_id, caller.namespace))
        if policy is None or policy.trust_domain != caller.trust_domain:
            return allowed
        if policy.default_allow is not None:
            allowed = policy.default_allow
        path = "/" + operation.lstrip("/").lower()
        for op in policy.operations:
            if not op.pattern.fullmatch(path):
                continue
            verb_rule = op.verbs.get(verb.upper(), op.verbs.get("*"))
            return allowed if verb_rule is None else verb_rule
        return allowed

    def denied(self, caller: Identity | None, operation: str, verb: str) -> str | None:
        """daprd's denial message, or None when the call may go on."""
        if self.allows(caller, operation, verb):
            return None
        who = caller.uri if caller is not None else ""
        return (
            "rpc error: code = PermissionDenied desc = access control policy has denied access to "
            f"id: {who} operation: {operation} verb: {verb.upper()}"
        )


def _pattern(name: str) -> re.Pattern[str]:
    """``/**`` any depth, ``/*`` one segment, ``*`` inside a segment; matched lower-cased."""
    if not name.startswith("/"):
        name = "/" + name
    out = []
    i = 0
    lowered = name.lower()
    while i < len(lowered):
        if lowered.startswith("/**", i):
            out.append("(/.*)?")
            i += 3
        elif lowered[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(lowered[i]))
            i += 1
    return re.compile("".join(out))


def _action(value: Any, where: str) -> bool:
    text = str(value or "").strip().lower()
    if text not in ("allow", "deny"):
        raise ValueError(f"{where}: {value!r} is not allow or deny")
    return text == "allow"


def parse_access_control(spec: Any) -> AccessControl | None:
    """``spec.accessControl`` as read by daprd; ``ValueError`` naming the field for what it refuses."""
    if not spec:
        return None
    if not isinstance(spec, dict):
        raise ValueError("spec.accessControl: must be a mapping")
    policies_spec = spec.get("policies") or []
    if not isinstance(policies_spec, list):
        raise ValueError("spec.accessControl.policies: must be a list")
    if spec.get("defaultAction") in (None, ""):
        default = not policies_spec
        if policies_spec:
            log.warning("spec.accessControl has policies but no defaultAction: denying by default, as daprd")
    else:
        default = _action(spec["defaultAction"], "spec.accessControl.defaultAction")
    trust_domain = str(spec.get("trustDomain") or "public")
    policies: dict[tuple[str, str], AppPolicy] = {}
    for i, item in enumerate(policies_spec):
        where = f"spec.accessControl.policies[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: must be a mapping")
        for key in ("appId", "trustDomain", "namespace"):
            if not item.get(key):
                raise ValueError(f"{where}.{key}: is required")
        operations = []
        for j, op in enumerate(item.get("operations") or []):
            at = f"{where}.operations[{j}]"
            if not isinstance(op, dict) or not op.get("name"):
                raise ValueError(f"{at}.name: is required")
            action = _action(op["action"], f"{at}.action") if op.get("action") else None
            verbs = {str(v).upper(): action if action is not None else True for v in op.get("httpVerb") or []}
            operations.append(Operation(str(op["name"]), _pattern(str(op["name"])), verbs, action))
        policy_default = (
            _action(item["defaultAction"], f"{where}.defaultAction") if item.get("defaultAction") else None
        )
        policies[(str(item["appId"]), str(item["namespace"]))] = AppPolicy(
            str(item["appId"]),
            str(item["trustDomain"]),
            str(item["namespace"]),
            policy_default,
            tuple(operations),
        )
    return AccessControl(default, trust_domain, policies)
