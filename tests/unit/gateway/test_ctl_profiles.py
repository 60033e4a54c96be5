"""`outpostctl profile push`'s file handling, pure: local files become uploads, a chart
directory always packs to the same bytes, a re-push of the same profile is recognised though the
API server filled in defaults and dropped nulls."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from mgmt_gateway.ctl.profiles import (
    ProfileFileError,
    chart_archive,
    resolve_files,
    same_profile,
)

CHART = Path(__file__).resolve().parents[2] / "fixtures" / "addons" / "charts" / \
    "secrets-store-csi-driver"


def test_a_chart_directory_packs_to_the_same_bytes(tmp_path: Path) -> None:
    copy = tmp_path / "secrets-store-csi-driver"
    shutil.copytree(CHART, copy)
    assert chart_archive(CHART) == chart_archive(copy)  # mtimes and owners do not matter
    with pytest.raises(ProfileFileError, match=r"no Chart\.yaml"):
        chart_archive(tmp_path)


def test_local_files_become_digests(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    doc: dict[str, Any] = {"spec": {"addons": [
        {"name": "m", "version": "1", "manifestsFile": "m.yaml"},
        {"name": "c", "version": "1", "helm": {"chartPath": str(CHART), "values": {"a": 1}}}]}}
    sent: list[str] = []

    async def upload(data: bytes, what: str) -> str:
        sent.append(what)
        return f"sha256:{len(sent):064d}"

    assert asyncio.run(resolve_files(doc, tmp_path, upload)) == 2
    m, c = doc["spec"]["addons"]
    assert m == {"name": "m", "version": "1", "upload": f"sha256:{1:064d}"}
    assert c["helm"] == {"archive": f"sha256:{2:064d}", "values": {"a": 1}}
    assert sent == ["add-on m (m.yaml)", "add-on c (chart secrets-store-csi-driver)"]


def test_a_republished_profile_is_recognised_despite_server_defaults() -> None:
    pushed = {"spec": {"name": "edge", "version": "1", "addons": [
        {"name": "a", "version": "1", "manifests": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "s", "annotations": None}}]}]}}
    stored = {"spec": {"name": "edge", "version": "1", "addons": [
        {"name": "a", "version": "1", "order": 0, "timeoutSeconds": 600,
         "onFailure": "Rollback", "pruneVolumes": False, "manifests": [
             {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}]}]}}
    assert same_profile(stored, pushed)
    changed = {"spec": {**pushed["spec"], "addons": [{**pushed["spec"]["addons"][0],
                                                      "version": "2"}]}}
    assert not same_profile(stored, changed)
