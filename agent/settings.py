"""Agent settings from the environment (OUTPOST_AGENT_*) or a .env-style file."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.replace("\n", ",").split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTPOST_AGENT_", env_file=None,
                                      extra="ignore")

    cluster_name: str = Field(description="this cluster's name: the key of its spec in NATS")
    nats_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        description="comma-separated NATS URLs")
    nats_credentials: Path | None = Field(default=None, description="NATS .creds file")
    public_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="trusted gateway signing keys (base64 raw Ed25519 or PEM), comma-separated")
    public_keys_file: Path | None = Field(
        default=None, description="file with one trusted key per line (e.g. a mounted Secret)")
    state_dir: Path = Field(default=Path("/var/lib/outpost"),
                            description="spec cache and status outbox (a persistent volume)")
    kubeconfig: Path | None = Field(default=None,
                                    description="kubeconfig; in-cluster config when unset")
    agent_namespace: str = Field(default="outpost-system",
                                 description="namespace of the agent's Lease and Events")
    identity: str = Field(default_factory=socket.gethostname,
                          description="this replica's identity for leader election")
    leader_election: bool = True
    lease_name: str = "outpost-agent"
    lease_duration_seconds: float = Field(
        default=15.0, gt=1, description="how long a lease holds after its last renewal, as "
        "measured by each replica's own monotonic clock (remote timestamps are never trusted)")
    renew_deadline_seconds: float | None = Field(
        default=None, gt=0, description="a leader that cannot renew its lease for this long "
        "stops writing; shorter than the lease duration (default 2/3 of it)")
    retry_period_seconds: float | None = Field(
        default=None, gt=0, description="how often the leader renews and candidates retry "
        "(default 2/15 of the lease duration)")
    resync_seconds: float = Field(default=30.0, gt=0)
    status_interval_seconds: float = Field(default=30.0, gt=0)
    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)
    max_spec_bytes: int = Field(default=256 * 1024, ge=1024)
    retry_max_seconds: float = Field(
        default=30.0, gt=0, description="longest wait between NATS reconnect/publish attempts")
    liveness_seconds: float = Field(
        default=120.0, gt=0,
        description="/healthz fails when the reconcile worker or the informers make no "
                    "progress for this long (a stuck pass or a dead watch)")
    log_level: str = "INFO"

    @field_validator("nats_servers", "public_keys", mode="before")
    @classmethod
    def _lists(cls, v: object) -> object:
        return _split(v)

    def trusted_keys(self) -> list[str]:
        keys = list(self.public_keys)
        if self.public_keys_file is not None:
            keys += [line for line in self.public_keys_file.read_text().splitlines()
                     if line.strip()]
        return keys
