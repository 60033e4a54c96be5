"""The import rules of the design, enforced: pure layers stay pure, one seam to Kubernetes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO_LIBS = {"asyncio", "aiohttp", "nats", "kubernetes_asyncio"}


def imports_of(package: str) -> list[tuple[Path, str]]:
    """(file, imported top-level-qualified module) for every import under `package`."""
    out = []
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out += [(path, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against the file's package
                    rel = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                    base = ".".join(rel)
                    mod = f"{base}.{node.module}" if node.module else base
                else:
                    mod = node.module or ""
                out.append((path, mod))
    return out


def top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("package", ["agent.spec", "agent.plan"])
def test_pure_layers_do_no_io(package: str) -> None:
    bad = [(p.name, m) for p, m in imports_of(package) if top(m) in IO_LIBS]
    assert bad == [], f"{package} must stay pure (no asyncio/aiohttp/nats/kubernetes_asyncio)"


def test_only_agent_kube_imports_kubernetes_asyncio() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for pkg in ("agent", "mgmt_gateway")
        for p, m in imports_of(pkg)
        if top(m) == "kubernetes_asyncio" and "agent/kube" not in p.as_posix()
    ]
    assert offenders == []


def test_gateway_uses_only_the_agent_contract_seam_and_runtime() -> None:
    bad = [
        (str(p.relative_to(ROOT)), m)
        for p, m in imports_of("mgmt_gateway")
        if top(m) == "agent" and not m.startswith(("agent.spec", "agent.kube", "agent.runtime"))
        and m != "agent"
    ]
    assert bad == []


@pytest.mark.parametrize("package", ["agent", "mgmt_gateway"])
def test_product_never_imports_the_testbed(package: str) -> None:
    assert [m for _, m in imports_of(package) if top(m) == "testbed"] == []


def test_the_checker_sees_imports() -> None:
    """Guard against a vacuous pass: the scanner must find the testbed's own imports."""
    mods = {m for _, m in imports_of("testbed")}
    assert "aiohttp" in mods and "testbed.apiserver.store" in mods
