"""The signed envelope: canonical spec bytes, an Ed25519 signature by the gateway, a key id.

The agent trusts nothing it receives over NATS until the signature verifies against one of its
configured public keys; holding several keys lets the gateway rotate its signing key without a
flag day. The signature covers a domain-separation prefix plus the exact payload bytes, so a
signature made for anything else can never be replayed as a spec.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, ValidationError

from .base import Model
from .models import ClusterSpec

DOMAIN = b"outpost.spec.v1\n"


class EnvelopeError(ValueError):
    """A candidate spec that must not be enforced; `reason` is a stable, metric-friendly label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SignedSpec(Model):
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(min_length=1, max_length=64)
    payload: str = Field(min_length=1, description="base64 of the canonical spec JSON")
    signature: str = Field(min_length=1, description="base64 Ed25519 signature")


def canonical_bytes(spec: ClusterSpec) -> bytes:
    """One byte string per spec: sorted keys, no whitespace, camelCase, UTF-8."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(spec: ClusterSpec, private: Ed25519PrivateKey) -> bytes:
    """The envelope the gateway publishes, as JSON bytes."""
    payload = canonical_bytes(spec)
    env = SignedSpec(key_id=key_id(private.public_key()),
                     payload=base64.b64encode(payload).decode(),
                     signature=base64.b64encode(private.sign(DOMAIN + payload)).decode())
    return env.model_dump_json(by_alias=True).encode()


def parse_envelope(raw: bytes) -> SignedSpec:
    try:
        return SignedSpec.model_validate_json(raw)
    except ValidationError as e:
        raise EnvelopeError("malformed", f"not a signed spec envelope: {explain(e)}") from e


def verify(env: SignedSpec, keys: Mapping[str, Ed25519PublicKey]) -> bytes:
    """Check the signature; returns the payload bytes it covers."""
    public = keys.get(env.key_id)
    if public is None:
        raise EnvelopeError("unknown_key", f"signed with key {env.key_id!r}, which this agent "
                            "does not trust (configured: " + (", ".join(sorted(keys)) or "none")
                            + ")")
    try:
        payload = base64.b64decode(env.payload, validate=True)
        signature = base64.b64decode(env.signature, validate=True)
    except (binascii.Error, ValueError) as e:
        raise EnvelopeError("malformed", f"payload or signature is not valid base64: {e}") from e
    try:
        public.verify(signature, DOMAIN + payload)
    except InvalidSignature as e:
        raise EnvelopeError("bad_signature", "the signature does not match the payload: the "
                            "spec was altered or signed by another key") from e
    return payload


def explain(err: ValidationError) -> str:
    """A validation error as one line a person can act on: `field.path: what is wrong`."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def explain_settings(err: ValidationError, prefix: str) -> str:
    """Settings errors named by the environment variable a person sets, e.g. OUTPOST_AGENT_X."""
    return "; ".join(f"{prefix}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                     for e in err.errors(include_url=False))


def load_public_keys(encoded: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    """Public keys given as PEM or as base64 of the 32 raw bytes, indexed by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for text in encoded:
        text = text.strip()
        if not text:
            continue
        if text.startswith("-----BEGIN"):
            key: Any = serialization.load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("a configured public key is not an Ed25519 key")
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
        keys[key_id(key)] = key
    return keys


def public_key_text(public: Ed25519PublicKey) -> str:
    """The base64 raw form, short enough for an environment variable."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()
