"""The control plane's PKI works for mutual TLS with the clients we use: kubernetes_asyncio and
the real kubectl, through the kubeconfig it writes, against a server holding its serving cert."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID
from kubernetes_asyncio import client, config

from testbed.controlplane.pki import ADMIN_GROUP, Pki, make_pki, write_kubeconfig
from tests.fixtures.tools import kubectl_binary

VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.2", "gitCommit": "0" * 40,
           "gitTreeState": "clean", "buildDate": "2026-11-01T00:00:00Z", "goVersion": "go1.26",
           "compiler": "gc", "platform": "linux/amd64"}


@pytest_asyncio.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Pki, str, list[str]]]:
    """An HTTPS server with the serving certificate that requires a client certificate signed
    by the CA, and records the client's subject."""
    pki = make_pki(tmp_path / "pki")
    seen: list[str] = []

    async def version(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        org = [v for rdn in (peer or {}).get("subject", ()) for k, v in rdn
               if k == "organizationName"]
        seen.extend(org)
        return web.json_response(VERSION)

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/version/", version)  # how kubernetes_asyncio asks
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield pki, f"https://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def test_certificates_are_what_kube_apiserver_expects(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    serving = x509.load_pem_x509_certificate(pki.serving_cert.read_bytes())
    admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())
    for leaf in (serving, admin):
        leaf.verify_directly_issued_by(ca)
    ips = {str(a) for a in serving.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress)}
    assert {"127.0.0.1", "::1"} <= ips
    orgs = [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == [ADMIN_GROUP]
    assert b"BEGIN PUBLIC KEY" in pki.sa_pub.read_bytes()
    assert oct(pki.admin_key.stat().st_mode & 0o777) == "0o600"


async def test_kubernetes_asyncio_uses_the_kubeconfig_unchanged(
        served: tuple[Pki, str, list[str]], tmp_path: Path) -> None:
    pki, url, seen = served
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url, pki)
    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    async with client.ApiClient(cfg) as api:
        info = await client.VersionApi(api).get_code()
    assert info.git_version == "v1.37.2"
    assert seen == [ADMIN_GROUP]


async def test_kubectl_uses_the_kubeconfig_unchanged(
        served: tuple[Pki, str, list[str]], tmp_path: Path) -> None:
    pki, url, seen = served
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url, pki)
    out = await asyncio.to_thread(
        subprocess.run, [kubectl_binary(), "--kubeconfig", str(kubeconfig), "get", "--raw",
                         "/version"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["gitVersion"] == "v1.37.2"
    assert seen == [ADMIN_GROUP]
