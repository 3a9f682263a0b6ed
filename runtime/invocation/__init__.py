"""Service invocation: calls between sidecars, name resolution, mTLS and access control."""
