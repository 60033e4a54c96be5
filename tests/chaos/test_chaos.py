"""Chaos: the agent must converge to the last accepted revision whatever happens around it.

Each round maybe publishes a new revision, then interleaves a few faults (the agent killed with
SIGKILL and restarted, NATS stopped or killed, an API storm of 409/429/500, watches cut with the
history compacted, objects edited by hand), ends them and waits until the cluster, and the
status the agent reports, match that revision with nothing duplicated and nothing leaked.
Everything random comes from one seed, printed and in every failure message, so a failure can
be replayed:

    OUTPOST_CHAOS_SEED=<seed> .venv/bin/pytest tests/chaos -s

The default run is short (CI); a long one:

    OUTPOST_CHAOS_ROUNDS=200 .venv/bin/pytest tests/chaos -s
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from agent.spec import ClusterSpec, capi
from agent.spec.wire import STATUS_BUCKET
from tests.chaos.agent_process import AgentProcess
from tests.fixtures.site import CLUSTER, NS, Site, spec_dict

SEED = int(os.environ.get("OUTPOST_CHAOS_SEED") or secrets.randbits(32))
ROUNDS = int(os.environ.get("OUTPOST_CHAOS_ROUNDS") or 5)
CONVERGE_DEADLINE = 120.0  # only bounds a failure: rounds wait for conditions, never for time
FD_MARGIN = 16  # sockets come and go with the API's keep-alive pool and NATS reconnects
THREAD_MARGIN = 8  # the default executor grows lazily up to its cap

POOLS = ("a", "b", "c")
IMAGES = (None, "registry.local/node:a", "registry.local/node:b")
MERGE = "application/merge-patch+json"
CAPI = "cluster.x-k8s.io"
CP = "controlplane.cluster.x-k8s.io"
STORM_PATHS = (None, "machinedeployments|kubeadmcontrolplanes|templates",
               "machinedeployments|kubeadmcontrolplanes|templates|leases")


@dataclass(frozen=True)
class Want:
    """What one revision asks for, in the terms the cluster is checked in."""

    revision: int
    cp: int
    version: str
    workers: dict[str, int]
    images: dict[str, str | None]

    def spec(self) -> ClusterSpec:
        data = spec_dict(revision=self.revision, cp=self.cp, workers=self.workers,
                         version=self.version)
        for pool in data["workers"]:
            if self.images[pool["name"]]:
                pool["machine"]["image"] = self.images[pool["name"]]
        return ClusterSpec.model_validate(data)


def next_want(rng: random.Random, prev: Want | None) -> Want:
    pools = [p for p in POOLS if rng.random() < 0.6] or [rng.choice(POOLS)]
    old_images = prev.images if prev else {}
    images = {p: old_images[p] if p in old_images and rng.random() < 0.7 else rng.choice(IMAGES)
              for p in pools}
    version = prev.version if prev else "v1.35.2"
    if prev and rng.random() < 0.2:  # a patch upgrade now and then: rollouts of every pool
        major_minor, patch = version.rsplit(".", 1)
        version = f"{major_minor}.{int(patch) + 1}"
    return Want(revision=(prev.revision + 1) if prev else 1, cp=rng.choice((1, 3)),
                version=version, workers={p: rng.randint(0, 3) for p in pools}, images=images)


@dataclass
class Round:
    """One round's script: (step, argument) pairs, run in order with short random pauses."""

    number: int
    publish: Want | None
    steps: list[tuple[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        steps = ", ".join(s if a is None else f"{s}({a})" for s, a in self.steps)
        return f"round {self.number}: {steps}"


def plan_round(rng: random.Random, number: int, want: Want | None) -> Round:
    """Faults with a duration become a start and an end step, interleaved at random; an edit
    by hand goes where no storm is on (it uses the API too) and a publish where NATS is up."""
    publish = next_want(rng, want) if want is None or rng.random() < 0.6 else None
    faults = rng.sample(("kill9", "nats", "storm", "watches", "edit"), rng.randint(1, 3))
    steps: list[tuple[str, Any]] = []
    for fault in faults:
        if fault == "kill9":
            steps += [("kill9", None), ("restart", None)]
        elif fault == "nats":
            steps += [("nats-down", rng.choice(("stop", "kill"))), ("nats-up", None)]
        elif fault == "storm":
            codes = rng.sample((409, 429, 500), rng.randint(1, 3))
            rules = [(code, method, rng.randint(3, 20), rng.choice(STORM_PATHS))
                     for code in codes
                     for method in ("PATCH", "POST", "PUT", "DELETE", "GET")
                     if not (code == 409 and method == "GET") and rng.random() < 0.6]
            steps += [("storm-on", rules or [(500, "PATCH", 5, None)]), ("storm-off", None)]
        elif fault == "watches":
            steps.append(("watches", None))
    rng.shuffle(steps)
    for first, last in (("kill9", "restart"), ("nats-down", "nats-up"),
                        ("storm-on", "storm-off")):
        names = [s for s, _ in steps]
        if first in names and names.index(last) < names.index(first):
            i, j = names.index(last), names.index(first)
            steps[i], steps[j] = steps[j], steps[i]

    def free_slots(start: str, end: str) -> list[int]:
        on, slots = False, []
        for i in range(len(steps) + 1):
            if not on:
                slots.append(i)
            if i < len(steps):
                on = {start: True, end: False}.get(steps[i][0], on)
        return slots

    if "edit" in faults:
        what = rng.choice(("scale-md", "delete-md", "kcp-replicas"))
        steps.insert(rng.choice(free_slots("storm-on", "storm-off")), ("edit", what))
    if publish is not None:
        steps.insert(rng.choice(free_slots("nats-down", "nats-up")),
                     ("publish", publish.revision))
    return Round(number, publish, steps)


@dataclass
class Baseline:
    starts: int
    fds: int
    threads: int | None


class Chaos:
    def __init__(self, site: Site, agent: AgentProcess, rng: random.Random) -> None:
        self.site, self.agent, self.rng = site, agent, rng
        self.want: Want | None = None
        self.baseline: Baseline | None = None
        self.context = f"seed={SEED}"
        self.injected = 0
        self.last_status: str | None = None

    async def fail(self, message: str, stuck: bool = False) -> None:
        """Fail with the replay context, the last status read and the agent's log; an agent
        that is stuck first dumps its threads' stacks there."""
        if stuck:
            if self.want is not None:
                await self.status_problems(datetime.now(UTC))  # refreshes last_status
            await self.agent.dump_and_abort()
        pytest.fail(f"[{self.context}] {message}\n--- last status read ---\n"
                    f"{self.last_status}\n--- agent log (tail) ---\n{self.agent.tail(12000)}",
                    pytrace=False)

    # -- faults --------------------------------------------------------------------------
    async def run_round(self, rnd: Round) -> None:
        self.context = f"seed={SEED} {rnd.describe()}"
        print(rnd.describe(), flush=True)
        injected = self.site.api.faults.injected
        for step, arg in rnd.steps:
            await self.step(step, arg, rnd)
            await asyncio.sleep(self.rng.uniform(0.1, 1.0))
        self.site.api.faults.clear()
        self.injected = self.site.api.faults.injected - injected

    async def step(self, step: str, arg: Any, rnd: Round) -> None:
        site = self.site
        if step == "publish":
            assert rnd.publish is not None
            await site.publish(rnd.publish.spec())
            self.want = rnd.publish
        elif step == "kill9":
            await self.agent.kill9()
        elif step == "restart":
            await self.agent.start()
        elif step == "nats-down":
            await (site.nats.stop() if arg == "stop" else site.nats.kill())
        elif step == "nats-up":
            await site.nats.start()
        elif step == "storm-on":
            for code, method, n, path in arg:
                site.api.faults.fail_next(n, code, path=path, method=method)
        elif step == "storm-off":
            site.api.faults.clear()
        elif step == "watches":
            site.api.cut_watches()
            site.api.store.compact()
        elif step == "edit":
            await self.edit(arg)
        else:
            raise AssertionError(step)

    async def edit(self, what: str) -> None:
        """What a person on site might do with kubectl: the agent must undo it."""
        mds = sorted(self.site.names("machinedeployments"))
        if not mds:
            what = "kcp-replicas"
        async with self.site.client() as api:
            custom = client.CustomObjectsApi(api)
            if what == "kcp-replicas":
                kcp = self.site.obj("kubeadmcontrolplanes", f"{CLUSTER}-control-plane")
                now = int((kcp or {}).get("spec", {}).get("replicas") or 1)
                await custom.patch_namespaced_custom_object(
                    CP, "v1beta2", NS, "kubeadmcontrolplanes", f"{CLUSTER}-control-plane",
                    {"spec": {"replicas": self.rng.choice([r for r in (1, 3, 5) if r != now])}},
                    field_manager="kubectl-edit", _content_type=MERGE)
            elif what == "scale-md":
                await custom.patch_namespaced_custom_object(
                    CAPI, "v1beta2", NS, "machinedeployments", self.rng.choice(mds),
                    {"spec": {"replicas": self.rng.randint(0, 4)}}, field_manager="kubectl-edit",
                    _content_type=MERGE)
            else:
                await custom.delete_namespaced_custom_object(
                    CAPI, "v1beta2", NS, "machinedeployments", self.rng.choice(mds))

    def want_spec(self) -> ClusterSpec:
        assert self.want is not None
        return self.want.spec()

    # -- convergence ---------------------------------------------------------------------
    def cluster_problems(self) -> list[str]:
        """How the objects differ from the last published revision; [] when they match.
        Read from the emulator's store, so the check itself never meets an injected fault."""
        site, want, spec = self.site, self.want, self.want_spec()
        assert want is not None
        problems: list[str] = []
        kcps = site.names("kubeadmcontrolplanes")
        if kcps != {capi.kcp_name(spec)}:
            problems.append(f"control planes {sorted(kcps)}")
        kcp = site.obj("kubeadmcontrolplanes", capi.kcp_name(spec)) or {}
        kspec = kcp.get("spec") or {}
        if (kspec.get("replicas"), kspec.get("version")) != (want.cp, want.version):
            problems.append(f"kcp replicas/version {kspec.get('replicas')}/"
                            f"{kspec.get('version')}, want {want.cp}/{want.version}")
        cp_template = capi.machine_template(spec, capi.ROLE_CONTROL_PLANE)["metadata"]["name"]
        cp_ref = (((kspec.get("machineTemplate") or {}).get("spec") or {})
                  .get("infrastructureRef") or {}).get("name")
        if cp_ref != cp_template:
            problems.append(f"kcp template {cp_ref}, want {cp_template}")
        expected = {cp_template}
        mds = site.names("machinedeployments")
        if mds != {capi.md_name(spec, p) for p in want.workers}:
            problems.append(f"machine deployments {sorted(mds)}, pools {sorted(want.workers)}")
        for pool in spec.workers:
            md = site.obj("machinedeployments", capi.md_name(spec, pool)) or {}
            mspec = md.get("spec") or {}
            tspec = ((mspec.get("template") or {}).get("spec")) or {}
            infra = capi.machine_template(spec, capi.ROLE_WORKER, pool)["metadata"]["name"]
            boot = capi.bootstrap_template(spec, pool)["metadata"]["name"]
            expected |= {infra, boot}
            got = (mspec.get("replicas"), tspec.get("version"),
                   (tspec.get("infrastructureRef") or {}).get("name"),
                   ((tspec.get("bootstrap") or {}).get("configRef") or {}).get("name"))
            if got != (pool.replicas, want.version, infra, boot):
                problems.append(f"pool {pool.name}: replicas/version/templates {got}, want "
                                f"{(pool.replicas, want.version, infra, boot)}")
        label = f"{capi.LABEL_CLUSTER}={CLUSTER}"
        templates = (site.names("devmachinetemplates", label)
                     | site.names("kubeadmconfigtemplates", label))
        if templates != expected:
            problems.append(f"templates: missing {sorted(expected - templates)}, left over "
                            f"{sorted(templates - expected)}")
        machines = len(site.names("machines", f"{capi.CAPI_CLUSTER_LABEL}={CLUSTER}"))
        if machines != want.cp + sum(want.workers.values()):
            problems.append(f"{machines} machines, want {want.cp + sum(want.workers.values())}")
        return problems

    async def status_problems(self, quiet_at: datetime) -> list[str]:
        """The status in the KV bucket: this revision, Converged, and reported after the faults
        ended (an older Converged could predate a hand edit)."""
        want = self.want
        assert want is not None
        nc = await self.site.nats_client()
        try:
            kv = await nc.jetstream().key_value(STATUS_BUCKET)
            raw = (await kv.get(CLUSTER)).value
            self.last_status = raw.decode()
            status = json.loads(raw)
        except Exception as e:
            return [f"status unreadable: {type(e).__name__}: {e}"]
        finally:
            await nc.close()
        got = (status.get("appliedRevision"), status.get("observedRevision"),
               status.get("phase"))
        problems = []
        if got != (want.revision, want.revision, "Converged"):
            problems.append(f"status applied/observed/phase {got}, last error "
                            f"{status.get('lastError')!r}")
        if datetime.fromisoformat(status["reportedAt"]) < quiet_at:
            problems.append(f"status reported at {status['reportedAt']}, before the faults "
                            f"ended at {quiet_at.isoformat()}")
        pools = {w["name"]: w["desired"] for w in status.get("workers") or ()}
        if pools != want.workers or (status.get("controlPlane") or {}).get("desired") != want.cp:
            problems.append(f"status pools {pools} cp {status.get('controlPlane')}")
        return problems

    async def wait_converged(self) -> None:
        quiet_at = datetime.now(UTC)
        deadline = time.monotonic() + CONVERGE_DEADLINE
        problems: list[str] = []
        while True:
            if not self.agent.running:
                await self.fail(f"the agent exited with code {self.agent.exit_code}")
            problems = self.cluster_problems()
            if not problems:
                problems = await self.status_problems(quiet_at)
                if not problems:
                    return
            if time.monotonic() > deadline:
                await self.fail(f"not converged to revision "
                                f"{self.want and self.want.revision}: " + "; ".join(problems),
                                stuck=True)
            await asyncio.sleep(0.2)

    async def check_leaks(self) -> None:
        """Descriptors and threads of an agent that was not restarted stay near what it had
        at its first converged round; the least of a few samples ignores passing sockets."""
        samples = []
        for _ in range(3):
            samples.append((self.agent.fds(), self.agent.threads()))
            await asyncio.sleep(0.2)
        fds = min(s[0] for s in samples)
        threads_seen = [s[1] for s in samples if s[1] is not None]
        threads = min(threads_seen) if threads_seen else None
        print(f"  converged: revision {self.want and self.want.revision}, "
              f"{self.injected} API faults injected, agent fds={fds} threads={threads}",
              flush=True)
        base = self.baseline
        if base is None or base.starts != self.agent.starts:
            self.baseline = Baseline(self.agent.starts, fds, threads)
            return
        if fds > base.fds + FD_MARGIN:
            await self.fail(f"file descriptors grew from {base.fds} to {fds}")
        if threads is not None and base.threads is not None and \
                threads > base.threads + THREAD_MARGIN:
            await self.fail(f"threads grew from {base.threads} to {threads}")


async def run_chaos(site: Site, root: Path, seed: int, rounds: int) -> None:
    rng = random.Random(seed)
    agent = AgentProcess(site, root)
    chaos = Chaos(site, agent, rng)
    await agent.start()
    try:
        for number in range(1, rounds + 1):
            await chaos.run_round(plan_round(rng, number, chaos.want))
            await chaos.wait_converged()
            await chaos.check_leaks()
        code = await agent.stop()
        if code != 0:
            await chaos.fail(f"the agent exited with code {code} on SIGTERM after the chaos")
    finally:
        if agent.running:
            await agent.kill9()


@pytest.mark.timeout(120 + 150 * ROUNDS)
async def test_chaos_converges_to_the_last_revision(site: Site, tmp_path: Path) -> None:
    print(f"\nchaos seed={SEED} rounds={ROUNDS} "
          f"(replay: OUTPOST_CHAOS_SEED={SEED} OUTPOST_CHAOS_ROUNDS={ROUNDS})", flush=True)
    await run_chaos(site, tmp_path / "chaos", SEED, ROUNDS)
