"""Charts at the gateway, with the real helm:

- rendered knowing what the profile's lower orders install: a chart that renders its custom
  resources only when their API exists (`.Capabilities.APIVersions.Has`, as most charts do for
  ServiceMonitors) renders them when a lower-order add-on brings the CRD, and not otherwise (the
  gateway never asks the cluster, so a site that is offline renders the same);
- pulled by an oci:// reference from a real OCI registry, the version pinned.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from agent.spec.addons import decode_bundle, digest_of
from mgmt_gateway.profiles import RenderContext, Sources, addons_of, profile_of
from mgmt_gateway.render.helm import Helm
from testbed.controlplane.helm import built_helm
from testbed.registry import OciRegistry

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: exporter\nversion: 0.1.0\n",
    "templates/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: exporter\n"
                         "data:\n  port: \"9100\"\n",
    "templates/monitor.yaml": (
        '{{- if .Capabilities.APIVersions.Has "example.com/v1/Monitor" }}\n'
        "apiVersion: example.com/v1\nkind: Monitor\nmetadata:\n  name: exporter\n"
        "spec:\n  port: 9100\n{{- end }}\n"),
}
CRD = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
       "metadata": {"name": "monitors.example.com"},
       "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "monitors", "kind": "Monitor"},
                "versions": [{"name": "v1", "served": True, "storage": True}]}}


async def helm(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(built_helm()), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def package(tmp: Path, version: str = "0.1.0", port: str = "9100") -> Path:
    src = tmp / f"exporter-{version}"
    for name, text in CHART.items():
        text = text.replace("0.1.0", version).replace("9100", port)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    await helm("package", str(src), "-d", str(tmp))
    return tmp / f"exporter-{version}.tgz"


def profile(archive: str, *, crd_order: int | None) -> dict[str, Any]:
    addons: list[dict[str, Any]] = [
        {"name": "exporter", "version": "0.1.0", "order": 1, "namespace": "monitoring",
         "helm": {"archive": archive}}]
    if crd_order is not None:
        addons.insert(0, {"name": "crds", "version": "1", "order": crd_order,
                          "manifests": [CRD]})
    return {"metadata": {"name": "p", "namespace": "fleet"},
            "spec": {"name": "p", "version": "1", "addons": addons}}


async def rendered_kinds(sources: Sources, obj: dict[str, Any]) -> list[str]:
    ctx = RenderContext("v1.35.2", {})
    await sources.prepare(addons_of(obj), ctx)
    p = profile_of(obj, ctx, lambda a, apis: sources.objects(a, ctx, apis))
    ref = next(a for a in p.spec.addons if a.name == "exporter").bundle
    return sorted(o["kind"] for o in decode_bundle(p.bundles[ref.digest], ref).objects)


async def test_a_chart_sees_the_apis_lower_orders_install(tmp_path: Path) -> None:
    tgz = (await package(tmp_path)).read_bytes()
    digest = digest_of(tgz)

    async def content(d: str) -> bytes | None:
        return tgz if d == digest else None

    sources = Sources(Helm(built_helm(), tmp_path / "cache"), content)
    try:
        # The CRD comes first (order 0): the chart renders its Monitor.
        assert await rendered_kinds(sources, profile(digest, crd_order=0)) == [
            "ConfigMap", "Monitor"]
        # Without it, or in the same order (installed together, not before): it does not.
        assert await rendered_kinds(sources, profile(digest, crd_order=None)) == ["ConfigMap"]
        assert await rendered_kinds(sources, profile(digest, crd_order=1)) == ["ConfigMap"]
    finally:
        await sources.close()


async def test_a_chart_pulled_from_an_oci_registry(tmp_path: Path) -> None:
    async with OciRegistry(tmp_path / "registry") as registry:
        # Two versions in the registry: the profile's pin decides which one renders.
        for version, port in (("0.1.0", "9100"), ("0.2.0", "9200")):
            await helm("push", str(await package(tmp_path, version, port)),
                       f"oci://{registry.host}/charts", "--plain-http")

        async def no_content(_: str) -> bytes | None:
            return None

        sources = Sources(Helm(built_helm(), tmp_path / "cache"), no_content)
        try:
            obj = {"metadata": {"name": "p", "namespace": "fleet"}, "spec": {
                "name": "p", "version": "1", "addons": [{
                    "name": "exporter", "version": "0.1.0", "namespace": "monitoring",
                    "helm": {"chart": f"oci://{registry.host}/charts/exporter",
                             "version": "0.1.0", "plainHttp": True}}]}}
            ctx = RenderContext("v1.35.2", {})
            await sources.prepare(addons_of(obj), ctx)
            p = profile_of(obj, ctx, lambda a, apis: sources.objects(a, ctx, apis))
            (addon,) = p.spec.addons
            (cm,) = decode_bundle(p.bundles[addon.bundle.digest], addon.bundle).objects
            assert cm["data"] == {"port": "9100"}
            assert cm["metadata"]["namespace"] == "monitoring"
        finally:
            await sources.close()
