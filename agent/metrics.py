"""Prometheus metrics of one agent, in its own registry (several agents may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.intake.verify import REASONS


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.revision_desired = Gauge(
            "outpost_agent_spec_revision_desired", "Revision of the newest accepted spec.",
            registry=r)
        self.revision_applied = Gauge(
            "outpost_agent_spec_revision_applied",
            "Revision the cluster has converged to.", registry=r)
        self.rejections = Counter(
            "outpost_agent_spec_rejections_total", "Candidate specs rejected, by reason.",
            ["reason"], registry=r)
        for reason in REASONS:
            self.rejections.labels(reason=reason)
        self.reconciles = Counter(
            "outpost_agent_reconcile_total", "Reconcile passes, by result.", ["result"],
            registry=r)
        for result in ("converged", "progressing", "error"):
            self.reconciles.labels(result=result)
        self.reconcile_crashes = Counter(
            "outpost_agent_reconcile_crashes_total",
            "Passes that raised an unexpected exception (caught, requeued with backoff).",
            registry=r)
        self.reconcile_duration = Histogram(
            "outpost_agent_reconcile_duration_seconds", "Duration of reconcile passes.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.api_writes = Counter(
            "outpost_agent_api_writes_total", "Writes the agent made to the Kubernetes API.",
            ["verb"], registry=r)
        self.queue_depth = Gauge(
            "outpost_agent_reconcile_queue_depth", "Keys waiting in the work queue.", registry=r)
        self.nats_connected = Gauge(
            "outpost_agent_nats_connected", "1 while connected to NATS.", registry=r)
        self.outbox_depth = Gauge(
            "outpost_agent_outbox_depth", "Records waiting in the disk outbox.", registry=r)
        self.outbox_dropped = Counter(
            "outpost_agent_outbox_dropped_total",
            "Oldest records dropped because the disk outbox was full.", registry=r)
        self.leader = Gauge(
            "outpost_agent_leader", "1 while this replica holds the leader lease.", registry=r)
        self.cert_expiry = Gauge(
            "outpost_agent_certificate_expiry_timestamp_seconds",
            "Earliest control-plane certificate expiry (Unix time).", registry=r)
        self.machine_cert_expiry = Gauge(
            "outpost_agent_machine_certificate_expiry_timestamp_seconds",
            "Earliest certificate expiry of each control-plane machine (Unix time).",
            ["machine"], registry=r)
        self.cache_corrupt = Counter(
            "outpost_agent_spec_cache_corrupt_total",
            "Corrupt spec cache files detected at load.", registry=r)
        self.addons = Gauge(
            "outpost_agent_addons", "Add-ons of the profile, by phase.", ["phase"], registry=r)
        for phase in ("Pending", "Applying", "Ready", "Degraded", "Failed", "Pruning"):
            self.addons.labels(phase=phase)
        self.addon_writes = Gauge(
            "outpost_agent_addon_writes", "API writes the add-on controller has made since the "
            "agent started (applies, deletes); flat once converged.", registry=r)
        self.last_contact_age = Gauge(
            "outpost_agent_last_contact_age_seconds", "Seconds since the management plane was "
            "last heard from (persisted across restarts; the stale-spec guard's measure).",
            registry=r)
        self.bundle_bytes = Gauge(
            "outpost_agent_bundle_fetched_bytes", "Bundle bytes fetched from NATS since the "
            "agent started.", registry=r)
