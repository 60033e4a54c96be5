"""`outpostctl`: create, inspect and change Outpost clusters through their custom resources.

Exit status: 0 done; 1 the operation failed (refused by the API, not found, a cluster that
failed or did not become ready in time); 2 the command line or an input file is wrong.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import aiohttp
import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from agent.kube import (
    AlreadyExists,
    ApiKubeClient,
    Conflict,
    Gone,
    KubeError,
    NotFound,
    Obj,
    Transient,
)
from agent.kube import resources as r
from agent.spec import explain
from agent.spec.maintenance import OPERATIONS

from ..bootstrap import kubeconfig_secret
from ..clusters import API_VERSION, CLUSTER_PROFILE, OUTPOST_CLUSTER, OutpostClusterSpec
from ..pivot import MemoryJournal, move
from . import edits, profiles, views

MANAGER = "outpostctl"
T = TypeVar("T")

app = typer.Typer(
    name="outpostctl", no_args_is_help=True, rich_markup_mode=None,
    help="Create, inspect and change Outpost edge clusters through their OutpostCluster "
         "resources in the management cluster (the kubeconfig's current context, as kubectl "
         "and clusterctl use it).",
    epilog="Exit status: 0 done; 1 the operation failed (refused, not found, a cluster that "
           "failed or was not ready in time); 2 a wrong command line or input file.")
create_app = typer.Typer(no_args_is_help=True, help="Create resources.")
get_app = typer.Typer(no_args_is_help=True, help="List resources.")
describe_app = typer.Typer(no_args_is_help=True, help="Show one resource in detail.")
set_app = typer.Typer(no_args_is_help=True, help="Change one setting of a cluster.")
profile_app = typer.Typer(no_args_is_help=True, help="Publish cluster profiles.")
app.add_typer(create_app, name="create")
app.add_typer(get_app, name="get")
app.add_typer(describe_app, name="describe")
app.add_typer(set_app, name="set")
app.add_typer(profile_app, name="profile")

out = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 1000)
err = Console(stderr=True, soft_wrap=True, highlight=False)


@dataclass
class Target:
    kubeconfig: str  # one path, or several joined by os.pathsep (merged, as kubectl does)
    context: str | None


class Failed(Exception):
    """The operation failed; exit 1 with this message."""


class Usage(Exception):
    """The command line or an input file is wrong; exit 2 with this message."""


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"outpostctl: {message}", markup=False)
    raise typer.Exit(code)


def _kubeconfig(value: str | None) -> str:
    """`--kubeconfig`, else $KUBECONFIG (all its files, merged), else ~/.kube/config: once one
    is given, nothing else is used, so a typo never reaches another cluster."""
    if value:
        return str(Path(value).expanduser())
    env = os.environ.get("KUBECONFIG") or ""
    parts = [str(Path(p).expanduser()) for p in env.split(os.pathsep) if p]
    if parts:
        return os.pathsep.join(parts)
    return str(Path("~/.kube/config").expanduser())


def _files(target: Target) -> list[Path]:
    return [Path(p) for p in target.kubeconfig.split(os.pathsep) if Path(p).exists()]


def _context_namespace(target: Target) -> str:
    """The namespace of the kubeconfig's context, as kubectl defaults to it (the first file
    naming the current context, or defining the context, wins, as in kubectl's merge)."""
    docs = []
    for f in _files(target):
        try:
            loaded = yaml.safe_load(f.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(loaded, dict):
            docs.append(loaded)
    name = target.context or next((d["current-context"] for d in docs
                                   if d.get("current-context")), None)
    for d in docs:
        for c in d.get("contexts") or ():
            if isinstance(c, dict) and c.get("name") == name:
                return str((c.get("context") or {}).get("namespace") or "default")
    return "default"


@app.callback()
def _main(ctx: typer.Context,
          kubeconfig: Annotated[str | None, typer.Option(
              help="kubeconfig of the management cluster [default: $KUBECONFIG, else "
                   "~/.kube/config]", show_default=False)] = None,
          context: Annotated[str | None, typer.Option(
              help="kubeconfig context to use [default: the current one]",
              show_default=False)] = None) -> None:
    ctx.obj = Target(_kubeconfig(kubeconfig), context)


def _run(ctx: typer.Context, work: Callable[[ApiKubeClient], Coroutine[Any, Any, T]]) -> T:
    """Run `work` with a client of the management cluster; errors end the command cleanly."""
    target: Target = ctx.obj

    async def go() -> T:
        if not _files(target):
            where = ("KUBECONFIG names no file that exists" if os.environ.get("KUBECONFIG")
                     else f"no kubeconfig at {target.kubeconfig}")
            raise Usage(f"{where}: pass --kubeconfig or set KUBECONFIG to the management "
                        "cluster's")
        kube = await ApiKubeClient.from_kubeconfig(target.kubeconfig, target.context,
                                                   user_agent=MANAGER, request_timeout=15)
        try:
            return await work(kube)
        finally:
            await kube.close()

    try:
        return asyncio.run(go())
    except Usage as e:
        _fail(str(e), 2)
    except Failed as e:
        _fail(str(e), 1)
    except NotFound as e:
        if "outpostclusters" in str(e) and "/outpostclusters/" not in str(e):
            _fail(NO_CRDS, 1)
        _fail(str(e), 1)
    except Transient as e:
        _fail(f"cannot reach the management cluster: {e} (check --kubeconfig/--context)", 1)
    except KubeError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _namespace(ctx: typer.Context, namespace: str | None) -> str:
    return namespace or _context_namespace(ctx.obj)


NO_CRDS = ("the management cluster does not serve OutpostClusters: apply the CRDs "
           "(kubectl apply -f manifests/gateway/crds)")


async def _served(kube: ApiKubeClient) -> bool:
    """Whether the management cluster serves OutpostClusters (its CRD is installed)."""
    try:
        await kube.get(r.CRD, f"{OUTPOST_CLUSTER.plural}.{OUTPOST_CLUSTER.group}")
    except NotFound:
        return False
    except KubeError:  # may not read CRDs: assume served, the request will tell
        return True
    return True


async def _cluster(kube: ApiKubeClient, name: str, namespace: str) -> Obj:
    try:
        return await kube.get(OUTPOST_CLUSTER, name, namespace)
    except NotFound:
        if not await _served(kube):
            raise Failed(NO_CRDS) from None
        raise Failed(f"no OutpostCluster {name!r} in namespace {namespace} (outpostctl get "
                     "clusters -A lists them all)") from None


NamespaceOpt = Annotated[str | None, typer.Option(
    "--namespace", "-n", help="namespace of the OutpostCluster [default: the context's]",
    show_default=False)]
OutputOpt = Annotated[views.Output, typer.Option(
    "--output", "-o", help="table (wide: more columns), json or yaml")]


def _now() -> datetime:
    return datetime.now(UTC)


# -- create --------------------------------------------------------------------------------
def _check_spec(name: str, namespace: str, spec: Any) -> None:
    """The same contract the gateway applies, cross-field rules included; raises
    ValidationError."""
    OutpostClusterSpec.model_validate(spec).to_spec(name, namespace, 1, None)


def _load_clusters(file: str, namespace: str | None, default_namespace: str) -> list[Obj]:
    """The OutpostClusters of a YAML or JSON file (several documents, or a List as
    `get -o yaml` prints it), checked before anything is sent."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except OSError as e:
        raise Usage(f"cannot read {file}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise Usage(f"{file} is not text (YAML or JSON)") from None
    except yaml.YAMLError as e:
        raise Usage(f"{file} is not valid YAML: {e}") from None
    items: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") in ("List", "OutpostClusterList"):
            items.extend(doc.get("items") or ())
        else:
            items.append(doc)
    if not items:
        raise Usage(f"{file} holds no resource")
    found: list[Obj] = []
    for i, doc in enumerate(items, 1):
        where = f"{file} item {i}"
        if not isinstance(doc, dict) or doc.get("kind") != "OutpostCluster":
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            raise Usage(f"{where} is a {kind}, not an OutpostCluster (apply other resources "
                        "with kubectl apply -f)")
        if doc.get("apiVersion") != API_VERSION:
            raise Usage(f"{where}: apiVersion must be {API_VERSION}, not "
                        f"{doc.get('apiVersion')}")
        meta = doc.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise Usage(f"{where}: metadata.name is missing")
        ns = str(meta.get("namespace") or namespace or default_namespace)
        if namespace and meta.get("namespace") and meta["namespace"] != namespace:
            raise Usage(f"{where} ({meta['name']}) is in namespace {meta['namespace']}, not "
                        f"{namespace} (-n): drop one of them")
        try:
            _check_spec(str(meta["name"]), ns, doc.get("spec") or {})
        except ValidationError as e:
            raise Usage(f"{where} ({meta['name']}): {explain(e)}") from None
        clean = {k: v for k, v in meta.items() if k not in (
            "uid", "resourceVersion", "creationTimestamp", "generation", "managedFields",
            "deletionTimestamp", "finalizers")}
        found.append({"apiVersion": API_VERSION, "kind": "OutpostCluster",
                      "metadata": {**clean, "namespace": ns}, "spec": doc.get("spec") or {}})
    return found


def _finished(obj: Obj) -> tuple[bool, str | None]:
    """Whether waiting for `obj` is over, and the failure if it failed."""
    st = obj.get("status") or {}
    if st.get("phase") == "Failed":
        return True, str(st.get("failedReason") or "failed")
    conditions = st.get("conditions") or ()
    accepted: dict[str, Any] = next(
        (c for c in conditions if c.get("type") == "SpecAccepted"), {})
    generation = (obj.get("metadata") or {}).get("generation")
    if accepted.get("status") == "False" and accepted.get("observedGeneration") == generation:
        return True, f"{accepted.get('reason')}: {accepted.get('message')}"
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    return st.get("phase") == "Managed" and ready.get("status") == "True", None


async def _wait(kube: ApiKubeClient, obj: Obj, deadline: float, timeout: float,
                say: Callable[[str], None]) -> Obj:
    """Follow one OutpostCluster (a watch, re-opened as needed) until it is Ready or Failed,
    printing its progress; raises Failed on failure or at `deadline` (monotonic)."""
    name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
    last: Obj | None = None
    pause = 0.5

    def seen(new: Obj) -> bool:
        nonlocal last
        for line in views.progress(last, new):
            say(line)
        last = new
        done, failure = _finished(new)
        if failure is not None:
            raise Failed(f"{name} failed: {failure} (outpostctl describe cluster {name} -n "
                         f"{ns})")
        return done

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            phase = ((last or {}).get("status") or {}).get("phase") or "Pending"
            raise Failed(f"{name} was not ready after {timeout:.0f}s (phase {phase}); it goes "
                         f"on in the background: outpostctl describe cluster {name} -n {ns}")
        try:
            async with asyncio.timeout(remaining):
                current = await _cluster(kube, name, ns)
                if seen(current):
                    return current
                stream = kube.watch(OUTPOST_CLUSTER, ns, timeout_seconds=int(min(remaining, 60))
                                    + 1, resource_version=current["metadata"]["resourceVersion"])
                async with contextlib.aclosing(stream):
                    async for ev in stream:
                        pause = 0.5
                        if ev.object.get("metadata", {}).get("name") != name:
                            continue
                        if ev.type == "DELETED":
                            raise Failed(f"{name} was deleted while waiting")
                        if ev.type != "BOOKMARK" and seen(ev.object):
                            return ev.object
        except TimeoutError:
            continue
        except (Gone, Transient):  # the API restarting or the link flapping: read again
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 10.0)


@create_app.command("cluster")
def create_cluster(
        ctx: typer.Context,
        file: Annotated[str, typer.Option(
            "--filename", "-f", help="YAML or JSON file of one or more OutpostClusters "
                                     "(- for standard input)")],
        namespace: NamespaceOpt = None,
        wait: Annotated[bool, typer.Option(
            help="follow the bootstrap steps until the cluster is Ready")] = False,
        timeout: Annotated[int, typer.Option(
            help="seconds --wait waits for all of them before giving up (the clusters go "
                 "on)", min=1)] = 1800,
) -> None:
    """Create OutpostClusters from a file: the gateway then bootstraps each one (Cluster API
    objects, first control-plane node, agent, pivot, signed spec)."""
    try:
        objs = _load_clusters(file, namespace, _namespace(ctx, None))
    except Usage as e:
        _fail(str(e), 2)

    async def work(kube: ApiKubeClient) -> None:
        made = []
        for obj in objs:
            meta = obj["metadata"]
            try:
                made.append(await kube.create(OUTPOST_CLUSTER, obj))
            except AlreadyExists:
                raise Failed(f"OutpostCluster {meta['name']} already exists in namespace "
                             f"{meta['namespace']}: change it with outpostctl scale/upgrade or "
                             "kubectl apply") from None
            except NotFound:
                if not await _served(kube):
                    raise Failed(NO_CRDS) from None
                raise Failed(f"namespace {meta['namespace']} does not exist: kubectl create "
                             f"namespace {meta['namespace']}") from None
            out.print(f"outpostcluster.outpost.io/{meta['name']} created", markup=False)
        if wait:
            start = time.monotonic()
            deadline = start + timeout
            for obj in made:
                await _wait(kube, obj, deadline, timeout,
                            lambda line: out.print(line, markup=False))
                out.print(f"{obj['metadata']['name']} is Ready "
                          f"({time.monotonic() - start:.0f}s)", markup=False)

    _run(ctx, work)


# -- get / describe ------------------------------------------------------------------------
@get_app.command("clusters")
def get_clusters(
        ctx: typer.Context,
        name: Annotated[str | None, typer.Argument(help="one cluster (default: all)",
                                                   show_default=False)] = None,
        namespace: NamespaceOpt = None,
        all_namespaces: Annotated[bool, typer.Option(
            "--all-namespaces", "-A", help="clusters of every namespace")] = False,
        output: OutputOpt = "table",
) -> None:
    """List OutpostClusters: phase, revisions (desired, published, applied), connected, Ready,
    age."""
    if name is not None and all_namespaces:
        raise typer.BadParameter("a cluster is named within one namespace: use -n NAMESPACE, "
                                 "not -A", param_hint="--all-namespaces")
    ns = None if all_namespaces else _namespace(ctx, namespace)

    async def work(kube: ApiKubeClient) -> list[Obj]:
        if name is not None:
            return [await _cluster(kube, name, ns or "default")]
        items = (await kube.list(OUTPOST_CLUSTER, ns)).items
        return sorted(items, key=lambda o: (o["metadata"].get("namespace", ""),
                                            o["metadata"]["name"]))

    objs = _run(ctx, work)
    if output in ("json", "yaml"):
        shown = [views.without_managed_fields(o) for o in objs]
        value = shown[0] if name is not None else views.as_list(shown)
        sys.stdout.write(views.dump(value, output))
        return
    if not objs:
        err.print(f"No OutpostClusters found{f' in namespace {ns}' if ns else ''}.",
                  markup=False)
        return
    out.print(views.cluster_table(objs, _now(), namespaces=ns is None, wide=output == "wide"))


@describe_app.command("cluster")
def describe_cluster(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="the OutpostCluster")],
        namespace: NamespaceOpt = None,
        output: OutputOpt = "table",
) -> None:
    """Where one cluster stands: readiness, revisions, agent, bootstrap steps with their
    timings, pivot, add-ons, conditions, the last error and recent Events."""
    ns = _namespace(ctx, namespace)

    async def work(kube: ApiKubeClient) -> tuple[Obj, list[Obj]]:
        obj = await _cluster(kube, name, ns)
        try:
            events = (await kube.list(r.EVENT, ns)).items
        except KubeError:  # Events are context; a user who may not list them still sees status
            events = []
        return obj, views.events_of(obj, events)

    obj, events = _run(ctx, work)
    if output in ("json", "yaml"):
        sys.stdout.write(views.dump(views.without_managed_fields(obj), output))
        return
    out.print(views.describe(obj, events, _now()))


# -- day-2 edits ---------------------------------------------------------------------------
Edit = Callable[[Obj, ApiKubeClient], Awaitable[tuple[dict[str, Any], list[str]]]]


def _edit(ctx: typer.Context, name: str, namespace: str | None, edit: Edit) -> None:
    """Read the cluster, edit its spec, write it back with the resourceVersion read (a
    concurrent change makes the write conflict, and the edit is redone on the new object)."""
    ns = _namespace(ctx, namespace)

    async def work(kube: ApiKubeClient) -> None:
        for _ in range(5):
            obj = await _cluster(kube, name, ns)
            try:
                spec, changes = await edit(obj, kube)
            except edits.EditRefused as e:
                raise Failed(f"{name}: {e}") from None
            if not changes:
                out.print(f"{name}: nothing to change", markup=False)
                return
            try:
                await kube.replace(OUTPOST_CLUSTER, {**obj, "spec": spec},
                                   field_manager=MANAGER)
            except Conflict:
                continue
            out.print(f"{name}: {'; '.join(changes)}. The gateway publishes a new revision "
                      f"(outpostctl describe cluster {name} -n {ns})", markup=False)
            return
        raise Failed(f"{name} kept changing under this edit; try again")

    _run(ctx, work)


def _pools(values: list[str]) -> dict[str, int]:
    pools: dict[str, int] = {}
    for v in values:
        pool, sep, count = v.partition("=")
        if not sep or not pool or not (count.isascii() and count.isdecimal()):
            raise typer.BadParameter(f"{v!r}: use POOL=REPLICAS, e.g. line-a=4",
                                     param_hint="--workers")
        pools[pool] = int(count)
    return pools


@app.command()
def scale(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="the OutpostCluster")],
        control_plane: Annotated[int | None, typer.Option(
            help="control-plane replicas: 1, 3 or 5", show_default=False)] = None,
        workers: Annotated[list[str] | None, typer.Option(
            help="POOL=REPLICAS, once per pool to change", metavar="POOL=REPLICAS",
            show_default=False)] = None,
        namespace: NamespaceOpt = None,
) -> None:
    """Scale the control plane and/or worker pools of a cluster."""
    pools = _pools(workers or [])
    if control_plane is not None and control_plane not in (1, 3, 5):
        raise typer.BadParameter("1, 3 or 5: stacked etcd needs an odd number of members",
                                 param_hint="--control-plane")
    if control_plane is None and not pools:
        raise typer.BadParameter("say what to scale: --control-plane N and/or "
                                 "--workers POOL=N")

    async def edit(obj: Obj, kube: ApiKubeClient) -> tuple[dict[str, Any], list[str]]:
        return edits.scale(obj.get("spec") or {}, control_plane, pools)

    _edit(ctx, name, namespace, edit)


@app.command()
def upgrade(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="the OutpostCluster")],
        version: Annotated[str, typer.Argument(help="Kubernetes version, e.g. v1.36.1")],
        pinned_workers: Annotated[bool, typer.Option(
            "--pinned-workers", help="also move worker pools pinned to another version (pools "
                                     "without a version always follow the control plane)")
        ] = False,
        via: Annotated[list[str] | None, typer.Option(
            "--via", help="the tested release to stop at for a minor in between (repeat it, "
                          "e.g. --via v1.36.4 --via v1.37.2 to go from v1.35 to v1.38)",
            show_default=False)] = None,
        namespace: NamespaceOpt = None,
) -> None:
    """Upgrade a cluster's Kubernetes version, once the previous change has converged: the
    agent rolls the control plane one minor at a time through the --via releases, each step
    to completion, then the worker pools."""
    for v in (version, *(via or ())):
        if not edits.is_version(v):
            raise typer.BadParameter(f"{v!r} is not a Kubernetes version like v1.36.1",
                                     param_hint="VERSION" if v == version else "--via")

    async def edit(obj: Obj, kube: ApiKubeClient) -> tuple[dict[str, Any], list[str]]:
        return edits.upgrade(obj, version, pinned_workers=pinned_workers, via=via or ())

    _edit(ctx, name, namespace, edit)


@app.command()
def approve(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="the OutpostCluster")],
        operation: Annotated[str, typer.Argument(
            help="upgrade, repave or rotation: what the cluster's maintenance policy holds "
                 "for an approval")],
        by: Annotated[str | None, typer.Option(
            help="who approves [default: $USER]", show_default=False)] = None,
        namespace: NamespaceOpt = None,
) -> None:
    """Approve a disruptive operation of the cluster's spec as it stands. The approval travels
    inside the signed spec, so a site cut off afterwards can still act on it; a later change of
    what it approves (another version, other machine templates) needs a new approval."""
    if operation not in OPERATIONS:
        raise typer.BadParameter(f"{operation!r} is not one of {', '.join(OPERATIONS)}",
                                 param_hint="OPERATION")
    who = by or os.environ.get("USER") or "unknown"

    async def edit(obj: Obj, kube: ApiKubeClient) -> tuple[dict[str, Any], list[str]]:
        return edits.approve(obj, operation, who, _now())

    _edit(ctx, name, namespace, edit)


@app.command("rotate-certs")
def rotate_certs(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="the OutpostCluster")],
        namespace: NamespaceOpt = None,
) -> None:
    """Renew a cluster's control-plane certificates now: its control-plane machines are
    rolled (spec.certificates.rotateAfter)."""
    async def edit(obj: Obj, kube: ApiKubeClient) -> tuple[dict[str, Any], list[str]]:
        return edits.rotate_certs(obj.get("spec") or {}, _now())

    _edit(ctx, name, namespace, edit)


@set_app.command("profile")
def set_profile(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="the OutpostCluster")],
        profile: Annotated[str, typer.Argument(help="ClusterProfile name (spec.name)")],
        version: Annotated[str, typer.Argument(help="ClusterProfile version")],
        values: Annotated[Path | None, typer.Option(
            help="YAML file of per-cluster values (default: keep the current ones)",
            show_default=False)] = None,
        namespace: NamespaceOpt = None,
) -> None:
    """Install a cluster profile's add-ons on a cluster (or move it to another version)."""
    loaded: dict[str, Any] | None = None
    if values is not None:
        try:
            loaded = yaml.safe_load(values.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            _fail(f"cannot read values from {values}: {e}", 2)
        if not isinstance(loaded, dict):
            _fail(f"{values} must hold a mapping of values", 2)

    async def edit(obj: Obj, kube: ApiKubeClient) -> tuple[dict[str, Any], list[str]]:
        profiles = (await kube.list(CLUSTER_PROFILE, obj["metadata"]["namespace"])).items
        available = [(str((p.get("spec") or {}).get("name")),
                      str((p.get("spec") or {}).get("version"))) for p in profiles]
        return edits.set_profile(obj.get("spec") or {}, profile, version, loaded, available)

    _edit(ctx, name, namespace, edit)


# -- move-plan -----------------------------------------------------------------------------
@app.command("move-plan")
def move_plan(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="the OutpostCluster")],
        namespace: NamespaceOpt = None,
        target_kubeconfig: Annotated[Path | None, typer.Option(
            help="kubeconfig of the cluster it would move into [default: the workload "
                 "cluster's, from its kubeconfig Secret]", show_default=False)] = None,
) -> None:
    """What the pivot of a cluster would move into it (clusterctl move semantics), and what
    it would skip or refuse. Reads only; changes nothing."""
    ns = _namespace(ctx, namespace)
    if target_kubeconfig is not None and not target_kubeconfig.is_file():
        raise typer.BadParameter(f"no file {target_kubeconfig}", param_hint="--target-kubeconfig")

    async def work(kube: ApiKubeClient) -> int:
        obj = await _cluster(kube, name, ns)
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Pivoted", "Managed"):
            out.print(f"{name} is already pivoted (phase {phase}): its Cluster API objects "
                      "live in the workload cluster; nothing is left to move", markup=False)
            return 0
        if target_kubeconfig is not None:
            target = await ApiKubeClient.from_kubeconfig(target_kubeconfig, user_agent=MANAGER)
        else:
            target = await ApiKubeClient.from_kubeconfig_data(
                await _workload_kubeconfig(kube, name, ns), user_agent=MANAGER)
        try:
            report = await move(kube, target, ns, name, journal=MemoryJournal(), dry_run=True)
        finally:
            await target.close()
        out.print(report.describe(), markup=False)
        return 1 if report.problems else 0

    if _run(ctx, work):
        raise typer.Exit(1)


@profile_app.command("push")
def profile_push(
        ctx: typer.Context,
        file: Annotated[Path, typer.Option(
            "--filename", "-f", help="the ClusterProfile (YAML); add-ons may name local "
                                     "files: manifestsFile, helm.chartPath")],
        namespace: NamespaceOpt = None,
        gateway: Annotated[str | None, typer.Option(
            envvar="OUTPOST_GATEWAY_URL", help="the gateway's API, where local files are "
                                               "uploaded (e.g. https://outpost.example.com)",
            show_default=False)] = None,
        token_file: Annotated[Path | None, typer.Option(
            help="file holding the gateway's API token [default: $OUTPOST_GATEWAY_TOKEN]",
            show_default=False)] = None,
) -> None:
    """Publish a ClusterProfile: upload the local files its add-ons name to the gateway, then
    create the resource. A published version is immutable: change the version to change it."""
    try:
        doc = profiles.load_profile(file, _namespace(ctx, namespace))
    except profiles.ProfileFileError as e:
        _fail(str(e), 2)
    token = (token_file.read_text().strip() if token_file is not None
             else os.environ.get("OUTPOST_GATEWAY_TOKEN", ""))

    async def upload(data: bytes, what: str) -> str:
        if not gateway:
            raise Usage(f"{what} is a local file: pass --gateway (or OUTPOST_GATEWAY_URL) to "
                        "upload it")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with aiohttp.ClientSession(headers=headers) as http, http.put(
                    f"{gateway.rstrip('/')}/v1/content", data=data) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, ValueError) as e:
            raise Failed(f"cannot upload {what} to {gateway}: {e}") from e
        if resp.status != 201:
            raise Failed(f"the gateway refused {what}: {body.get('detail', body)}")
        out.print(f"uploaded {what}: {body['digest']} ({len(data)} bytes)", markup=False)
        return str(body["digest"])

    async def work(kube: ApiKubeClient) -> None:
        try:
            await profiles.resolve_files(doc, file.parent, upload)
        except profiles.ProfileFileError as e:
            raise Usage(str(e)) from e
        meta = doc["metadata"]
        try:
            await kube.create(CLUSTER_PROFILE, doc)
        except AlreadyExists:
            have = await kube.get(CLUSTER_PROFILE, meta["name"], meta["namespace"])
            if profiles.same_profile(have, doc):
                out.print(f"clusterprofile.outpost.io/{meta['name']} unchanged", markup=False)
                return
            raise Failed(f"ClusterProfile {meta['name']} is published with other content; "
                         "a published profile never changes: push it under a new name and "
                         "version") from None
        out.print(f"clusterprofile.outpost.io/{meta['name']} created", markup=False)

    _run(ctx, work)


async def _workload_kubeconfig(kube: ApiKubeClient, name: str, ns: str) -> bytes:
    for secret in (kubeconfig_secret(name), f"{name}-kubeconfig"):
        try:
            data = (await kube.get(r.SECRET, secret, ns)).get("data") or {}
        except NotFound:
            continue
        if data.get("value"):
            try:
                return base64.b64decode(data["value"], validate=True)
            except ValueError:
                raise Failed(f"Secret {ns}/{secret} holds no readable kubeconfig") from None
    raise Failed(f"{name} has no kubeconfig Secret yet (its first control-plane node is not "
                 "up): nothing could be moved before then")


def main() -> None:
    app()
