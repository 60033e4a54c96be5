"""Versions read from clusters are parsed as CAPI does; the spec contract stays strict."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from agent.plan.versions import VersionError, compare, parse_version
from agent.spec import ClusterSpec


@pytest.mark.parametrize(("text", "release", "pre", "build"), [
    ("v1.35.2", (1, 35, 2), (), ()),
    ("v1.35.2+vmware.1", (1, 35, 2), (), ("vmware", "1")),
    ("1.36.0-rc.1", (1, 36, 0), ("rc", "1"), ()),
    (" v1.35 ", (1, 35, 0), (), ()),                   # padded, as ParseTolerant does
    ("v01.035.02", (1, 35, 2), (), ()),                # leading zeros dropped
    ("v1.36.0-alpha.0+abc-1.x", (1, 36, 0), ("alpha", "0"), ("abc-1", "x")),
])
def test_tolerant_parse(text: str, release: tuple[int, int, int], pre: tuple[str, ...],
                        build: tuple[str, ...]) -> None:
    v = parse_version(text)
    assert (v.release, v.pre, v.build) == (release, pre, build)


@pytest.mark.parametrize("text", ["", "latest", "v1.35-rc.1", "v1.35.2-", "v1.35.2+",
                                  "v1.35.2-rc.01", "v1.35.x", "v1.35.2.4", "v\u0661.35.2",
                                  None, 135])
def test_unreadable(text: object) -> None:
    with pytest.raises(VersionError):
        parse_version(text)


@pytest.mark.parametrize(("a", "b", "order"), [
    ("v1.35.2+vmware.1", "v1.35.2", 0),       # build metadata never orders
    ("v1.36.0-rc.1", "v1.36.0", -1),          # a release outranks its pre-releases
    ("v1.36.0-rc.2", "v1.36.0-rc.10", -1),    # numeric identifiers numerically
    ("v1.36.0-rc.1", "v1.36.0-beta.2", 1),    # alphanumeric ones lexically
    ("v1.36.0-1", "v1.36.0-alpha", -1),       # numeric before alphanumeric
    ("v1.36.0-rc", "v1.36.0-rc.1", -1),       # fewer identifiers first
    ("v1.35.10", "v1.35.9", 1),
])
def test_precedence(a: str, b: str, order: int) -> None:
    assert compare(a, b) == order
    assert compare(b, a) == -order


@pytest.mark.parametrize(("version", "why"), [
    ("1.35.2", "leading 'v' is missing"),
    ("v1.35", "three numbers"),
    ("v1.35.2+vmware.1", "build metadata '+vmware.1' is not allowed"),
    ("v1.36.0-rc.1", "pre-release '-rc.1' is not allowed"),
    ("v1.035.2", "leading zeros"),
])
def test_the_spec_contract_stays_strict_and_says_why(version: str, why: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(why)):
        ClusterSpec.model_validate({
            "clusterName": "edge", "revision": 1, "kubernetesVersion": version,
            "infrastructure": {"provider": "dev"},
            "controlPlane": {"replicas": 1, "machine": {"provider": "dev"}}})
