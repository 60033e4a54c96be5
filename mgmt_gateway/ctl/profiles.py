"""`outpostctl profile push`: publish a ClusterProfile whose add-ons may point at local files.

An add-on may say `manifestsFile: monitoring.yaml` (multi-document YAML) or
`helm: {chartPath: ./charts/csi}` (a chart directory or .tgz), paths relative to the profile's
file. Each is uploaded to the gateway (`PUT /v1/content`), which keeps it by sha256; the add-on
then names the digest (`upload`, `helm.archive`) and the ClusterProfile is created. A published
version never changes: pushing the same content again is a no-op, different content under the
same name and version is refused.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..profiles import addons_of

Obj = dict[str, Any]
Upload = Callable[[bytes, str], Awaitable[str]]  # (content, what) -> digest


class ProfileFileError(ValueError):
    """The profile file is wrong; the message says where."""


def load_profile(path: Path, namespace: str) -> Obj:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ProfileFileError(f"cannot read {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != "ClusterProfile":
        raise ProfileFileError(f"{path} must hold one ClusterProfile")
    meta = doc.setdefault("metadata", {})
    if not meta.get("name"):
        raise ProfileFileError(f"{path}: metadata.name is missing")
    meta.setdefault("namespace", namespace)
    return doc


def chart_archive(path: Path) -> bytes:
    """A chart directory as a .tgz with fixed timestamps and owners (the same directory always
    gives the same digest); a .tgz is taken as it is."""
    if path.is_file():
        return path.read_bytes()
    if not (path / "Chart.yaml").is_file():
        raise ProfileFileError(f"{path} is neither a chart directory (no Chart.yaml) nor a "
                               ".tgz")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(f"{path.name}/{f.relative_to(path).as_posix()}")
            data = f.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


async def resolve_files(doc: Obj, base: Path, upload: Upload) -> int:
    """Upload what the add-ons name by local path and put the digests in their place; returns
    how many files were uploaded."""
    count = 0
    for addon in (doc.get("spec") or {}).get("addons") or ():
        name = addon.get("name", "?")
        if "manifestsFile" in addon:
            f = base / str(addon.pop("manifestsFile"))
            try:
                data = f.read_bytes()
            except OSError as e:
                raise ProfileFileError(f"add-on {name}: cannot read {f}: {e}") from e
            addon["upload"] = await upload(data, f"add-on {name} ({f.name})")
            count += 1
        helm = addon.get("helm")
        if isinstance(helm, dict) and "chartPath" in helm:
            f = base / str(helm.pop("chartPath"))
            helm["archive"] = await upload(chart_archive(f), f"add-on {name} (chart {f.name})")
            count += 1
    return count


def same_profile(live: Obj, doc: Obj) -> bool:
    """Whether `doc` is what `live` already publishes, as the gateway reads both (the API
    server fills in defaults and drops null fields, so the raw objects differ)."""
    a, b = _without_nulls(live), _without_nulls(doc)
    sa, sb = a.get("spec") or {}, b.get("spec") or {}
    if (sa.get("name"), str(sa.get("version"))) != (sb.get("name"), str(sb.get("version"))):
        return False
    try:
        return addons_of(a) == addons_of(b)
    except ValidationError:
        return False


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value
