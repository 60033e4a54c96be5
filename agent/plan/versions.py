"""Kubernetes versions as read from a cluster, parsed the way Cluster API parses them.

The spec contract is strict (`v1.35.2`), but a KubeadmControlPlane or MachineDeployment may say
`v1.35.2+vmware.1` or `1.36.0-rc.1`: someone on site set it and CAPI accepted it (its webhooks use
blang/semver's ParseTolerant). Refusing to plan around such a cluster would leave it unmanaged, so
versions read from objects are parsed tolerantly and ordered by semver precedence: numbers first,
then pre-release (a release outranks its pre-releases), build metadata never.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IDENT = r"[0-9A-Za-z-]+"
_STRICT = re.compile(rf"^([0-9]+)\.([0-9]+)\.([0-9]+)(?:-({_IDENT}(?:\.{_IDENT})*))?"
                     rf"(?:\+({_IDENT}(?:\.{_IDENT})*))?$")


class VersionError(ValueError):
    """A version string even a tolerant parser cannot read."""


@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()
    build: tuple[str, ...] = ()

    @property
    def precedence(self) -> tuple[int, int, int, tuple[int, tuple[tuple[int, int, str], ...]]]:
        """A sort key with semver's precedence: build metadata plays no part, a release sorts
        after its pre-releases, numeric identifiers sort numerically and before alphanumeric."""
        if not self.pre:
            return self.major, self.minor, self.patch, (1, ())
        idents = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return self.major, self.minor, self.patch, (0, idents)

    @property
    def release(self) -> tuple[int, int, int]:
        return self.major, self.minor, self.patch


def parse_version(text: object) -> Version:
    """Parse like ParseTolerant: surrounding space and a leading `v` are dropped, leading zeros
    of the three numbers are dropped, `1.35` means `1.35.0`; pre-release and build metadata are
    accepted. Raises VersionError saying what is wrong."""
    if not isinstance(text, str):
        raise VersionError(f"not a version string: {text!r}")
    s = text.strip()
    if s[:1] in ("v", "V"):
        s = s[1:]
    parts = s.split(".", 2)
    if len(parts) < 3:
        if any(c in parts[-1] for c in "+-"):
            raise VersionError(f"{text!r}: a short version cannot carry a pre-release or build")
        parts += ["0"] * (3 - len(parts))
    parts = [_drop_leading_zeros(p) for p in parts]
    m = _STRICT.match(".".join(parts))
    if not m:
        raise VersionError(f"{text!r} is not a semantic version (major.minor.patch, optionally "
                           "-pre.release and +build.metadata)")
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    for ident in pre:
        if ident.isdigit() and len(ident) > 1 and ident[0] == "0":
            raise VersionError(f"{text!r}: numeric pre-release identifier {ident!r} has a "
                               "leading zero")
    build = tuple(m.group(5).split(".")) if m.group(5) else ()
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre, build)


def _drop_leading_zeros(part: str) -> str:
    if len(part) <= 1:
        return part
    part = part.lstrip("0")
    return part if part[:1] in "0123456789" and part else "0" + part


def try_parse(text: object) -> Version | None:
    try:
        return parse_version(text)
    except VersionError:
        return None


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older than, as new as, or newer than `b` (build metadata ignored).
    Raises VersionError for an unreadable version."""
    ka, kb = parse_version(a).precedence, parse_version(b).precedence
    return (ka > kb) - (ka < kb)
