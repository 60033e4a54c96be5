"""Helm charts rendered with the real helm (v4), never installed: the agent applies the result.

`helm template` with the cluster's Kubernetes version, the API versions the profile's CRDs add,
CRDs included and tests left out. Each chart is pulled once (repository URL, OCI reference, or
an uploaded archive) into a cache keyed by what names it, and rendered twice: a chart whose
output differs between two renders of the same inputs (random passwords, timestamps) would be
re-applied forever, so it is refused with the objects that differ. Charts that call `lookup`
are refused too: at the gateway it returns nothing, so the output would not be what the chart
means on the cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .addons import RenderError, nondeterministic
from .yamldocs import Obj, parse_documents

log = logging.getLogger(__name__)

_LOOKUP = re.compile(r"\blookup\s+\"")


class Helm:
    """The helm binary and a chart cache directory."""

    def __init__(self, binary: str | Path, cache_dir: Path, *, timeout: float = 120.0) -> None:
        self.binary = str(binary)
        self.cache_dir = Path(cache_dir)
        self.timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}

    async def _run(self, *args: str, cwd: Path | None = None) -> str:
        env = {"HELM_CACHE_HOME": str(self.cache_dir / "home" / "cache"),
               "HELM_CONFIG_HOME": str(self.cache_dir / "home" / "config"),
               "HELM_DATA_HOME": str(self.cache_dir / "home" / "data"),
               "PATH": "/usr/bin:/bin"}
        try:
            proc = await asyncio.create_subprocess_exec(
                self.binary, *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as e:
            raise RenderError(f"cannot run helm ({self.binary}): {e}; install helm v4 or set "
                              "OUTPOST_GATEWAY_HELM") from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RenderError(f"helm {args[0]} did not finish within {self.timeout:g}s"
                              ) from None
        if proc.returncode != 0:
            text = err.decode(errors="replace").strip() or out.decode(errors="replace")
            raise RenderError(f"helm {args[0]} failed: {text[-2000:]}")
        return out.decode()

    async def pull(self, *, repo: str | None, chart: str, version: str | None,
                   archive: bytes | None = None, plain_http: bool = False) -> Path:
        """The chart's directory in the cache, pulled on first use."""
        what = json.dumps([repo, chart, version, hashlib.sha256(archive).hexdigest()
                           if archive is not None else None])  # the same bytes either way
        key = hashlib.sha256(what.encode()).hexdigest()[:24]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            target = self.cache_dir / "charts" / key
            if target.is_dir():
                return _chart_dir(target)
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
                work = Path(tmp)
                if archive is not None:
                    (work / "chart.tgz").write_bytes(archive)
                else:
                    args = ["pull", chart, "--untar", "--untardir", str(work / "out")]
                    if repo:
                        args += ["--repo", repo]
                    if version:
                        args += ["--version", version]
                    if plain_http:
                        args.append("--plain-http")
                    await self._run(*args)
                if archive is not None:
                    _untar(work / "chart.tgz", work / "out")
                target.parent.mkdir(parents=True, exist_ok=True)
                (work / "out").rename(target)
            log.info("pulled chart %s %s%s", chart, version or "", f" from {repo}" if repo
                     else "")
            return _chart_dir(target)

    async def template(self, chart_dir: Path, *, release: str, namespace: str,
                       kube_version: str, api_versions: Sequence[str],
                       values: dict[str, Any]) -> list[Obj]:
        """The chart's objects (hooks included, with their annotations), rendered twice and
        refused if the two differ."""
        _refuse_lookup(chart_dir)
        with tempfile.TemporaryDirectory() as tmp:
            values_file = Path(tmp) / "values.yaml"
            values_file.write_text(yaml.safe_dump(values))
            args = ["template", release, str(chart_dir), "--namespace", namespace,
                    "--kube-version", kube_version, "--include-crds", "--skip-tests",
                    "--values", str(values_file)]
            for api in sorted(set(api_versions)):
                args += ["--api-versions", api]
            first = await self._run(*args)
            second = await self._run(*args)
        objs = parse_documents(first, f"chart {chart_dir.name}")
        if first != second:
            differ = nondeterministic(objs, parse_documents(second, chart_dir.name))
            raise RenderError(
                f"chart {chart_dir.name} renders differently each time ({', '.join(differ)}"
                "): it generates values (random passwords, certificates, timestamps). Set "
                "them in the values, or the agent would re-apply it on every render")
        return objs


def _refuse_lookup(chart_dir: Path) -> None:
    for path in sorted(chart_dir.rglob("templates/**/*")):
        if path.is_file() and _LOOKUP.search(path.read_text(errors="replace")):
            rel = path.relative_to(chart_dir)
            raise RenderError(f"chart {chart_dir.name}: {rel} calls `lookup`, which reads the "
                              "live cluster; rendered at the gateway it finds nothing. Use a "
                              "chart version without it, or pass the value explicitly")


def _chart_dir(target: Path) -> Path:
    """The single chart directory an untarred pull holds."""
    found = [p for p in target.iterdir() if (p / "Chart.yaml").is_file()]
    if len(found) != 1:
        raise RenderError(f"{target.name}: expected one chart (a Chart.yaml), found "
                          f"{len(found)}")
    return found[0]


def _untar(archive: Path, out: Path) -> None:
    out.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(out, filter="data")
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(out, ignore_errors=True)
        raise RenderError(f"the chart archive cannot be read: {e}") from e
