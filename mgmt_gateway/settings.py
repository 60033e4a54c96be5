"""Gateway settings from the environment (OUTPOST_GATEWAY_*)."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()]
    return value


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTPOST_GATEWAY_", extra="ignore")

    kubeconfig: Path | None = Field(
        default=None, description="management cluster kubeconfig; in-cluster config when unset")
    namespace: str = Field(default="outpost-system",
                           description="the gateway's own namespace: its lease, and the "
                                       "ConfigMap cluster records of older versions it adopts")
    nats_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        description="NATS URLs the gateway publishes specs to")
    nats_credentials: Path | None = Field(default=None, description="gateway NATS .creds file")
    signing_key_file: Path = Field(
        default=Path("/var/lib/outpost-gateway/signing-key.pem"),
        description="Ed25519 private key that signs specs (created when missing)")
    extra_trusted_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="more public keys agents should trust (key rotation), comma-separated")
    agent_image: str = Field(default="outpost:latest", description="agent container image")
    agent_nats_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="NATS URLs as agents reach them (default: same)")
    agent_nats_credentials_file: Path | None = Field(
        default=None, description="NATS .creds installed for agents")
    agent_extra_env: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="extra KEY=VALUE settings for every agent (e.g. OUTPOST_AGENT_LOG_LEVEL=DEBUG)")
    components: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="CAPI components bundle (YAML files/dirs) installed into workload clusters")
    api_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted bearer tokens, comma-separated")
    api_tokens_file: Path | None = Field(default=None,
                                         description="file with one accepted token per line")
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8443, ge=0, le=65535)
    poll_seconds: float = Field(
        default=2.0, gt=0,
        description="how soon a cluster waiting on Cluster API or its agent is looked at again")
    workers: int = Field(default=4, ge=1, le=256,
                         description="OutpostClusters reconciled at once")
    leader_election: bool = Field(
        default=True, description="elect one acting replica on a Lease (off: this one acts)")
    lease_duration_seconds: float = Field(
        default=15.0, gt=1, description="how long a silent leader keeps the lease")
    identity: str = Field(
        default_factory=lambda: (f"{os.environ.get('POD_NAME') or socket.gethostname()}_"
                                 f"{uuid.uuid4().hex[:8]}"),
        description="this replica's name in the lease, unique per process (default: $POD_NAME "
                    "or the host name, and a random suffix)")
    status_stale_seconds: float = Field(
        default=90.0, gt=0, description="an agent silent for longer is shown disconnected")
    last_seen_refresh_seconds: float = Field(
        default=600.0, ge=0,
        description="how often status.lastSeen alone is rewritten (the REST fleet view is exact)")
    helm: str = Field(default="helm",
                      description="the helm (v4) binary that renders chart add-ons")
    cache_dir: Path = Field(default=Path("/var/cache/outpost-gateway"),
                            description="pulled Helm charts (a cache: safe to lose)")
    step_timeout_seconds: float = Field(default=1800.0, gt=0)
    retry_max_seconds: float = Field(
        default=30.0, gt=0,
        description="longest wait between retries (NATS, a cluster's failing step, a crashed "
                    "background task)")
    liveness_seconds: float = Field(
        default=120.0, gt=0,
        description="/healthz fails when a worker or informer makes no progress for this long")
    log_level: str = "INFO"

    @field_validator("nats_servers", "extra_trusted_keys", "agent_nats_servers", "components",
                     "api_tokens", "agent_extra_env", mode="before")
    @classmethod
    def _lists(cls, v: object) -> object:
        return _split(v)

    @field_validator("agent_extra_env")
    @classmethod
    def _pairs(cls, v: list[str]) -> list[str]:
        bad = [item for item in v if "=" not in item or not item.split("=", 1)[0]]
        if bad:
            raise ValueError(f"expected KEY=VALUE items, got: {', '.join(bad)}")
        return v

    def agent_env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.agent_extra_env)

    def tokens(self) -> set[str]:
        tokens = set(self.api_tokens)
        if self.api_tokens_file is not None:
            tokens |= {t.strip() for t in self.api_tokens_file.read_text().splitlines()
                       if t.strip()}
        return tokens
