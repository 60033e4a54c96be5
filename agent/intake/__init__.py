"""Spec intake: receive signed specs over NATS, check them, cache the last good one on disk."""

from .cache import CachedSpec, SpecCache
from .intake import Intake, OnDesired, OnReject
from .verify import DEFAULT_MAX_BYTES, REASONS, Rejected, check_candidate
from .watcher import BUCKET, SpecWatcher, WatcherSettings

__all__ = [
    "BUCKET", "DEFAULT_MAX_BYTES", "REASONS", "CachedSpec", "Intake", "OnDesired", "OnReject",
    "Rejected", "SpecCache", "SpecWatcher", "WatcherSettings", "check_candidate",
]
