#!/usr/bin/env python3
"""Build the real control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler)
and helm from pinned Go modules, into a cache outside the repository.

The pins are the three wrapper modules next to this file: `go/etcd` requires
go.etcd.io/etcd/server/v3 as a tool, `go/kubernetes` requires k8s.io/kubernetes and replaces every
staging module it names (k8s.io/api, k8s.io/apiserver, ...) with the published release of the
same minor, `go/helm` requires helm.sh/helm/v4's cmd/helm as a tool. Neither etcd nor kubernetes
builds with `go install ...@version` because each has `replace` directives; a wrapper module that
requires it does. Helm has none (`pin helm` refuses a release that gains some); its wrapper keeps
every k8s.io module at the version helm itself requires, independently of go/kubernetes.

    python3 testbed/controlplane/build.py            # build what is missing, verify everything
    python3 testbed/controlplane/build.py paths      # print where each binary is (no build)
    python3 testbed/controlplane/build.py pin kubernetes v1.37.2   # rewrite go/kubernetes
    python3 testbed/controlplane/build.py pin etcd v3.6.17         # rewrite go/etcd
    python3 testbed/controlplane/build.py pin helm v4.3.2          # rewrite go/helm
    python3 testbed/controlplane/build.py pin registry v0.22.1     # rewrite go/registry

`go/registry` builds go-containerregistry's in-memory OCI registry (tests pull charts from it by
oci://); it prints no version, so its `go version -m` build info is checked instead.

Binaries land in ~/.cache/outpost/bin/<component>-<version>/<component> (OUTPOST_CACHE moves
~/.cache/outpost). A binary is reused when it exists, its `--version` (helm: `version --template
{{.Version}}`) names the pinned version and it was built from the same go.mod/go.sum and flags;
otherwise it is rebuilt. Only the Python standard library is used; Go >= 1.26 is the one
prerequisite.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GO_DIR = HERE / "go"
MIN_GO = (1, 26)
STAMP = ".built-from"


@dataclass(frozen=True)
class Wrapper:
    """One wrapper module and the upstream module whose commands it builds."""

    name: str
    module: str  # the upstream module that is pinned in the wrapper's go.mod
    commands: dict[str, str]  # component name -> Go package of its main
    version_args: tuple[str, ...] = ("--version",)  # what makes a command print its version;
    # () for a command that has no such flag: its Go build info says which version it is

    @property
    def dir(self) -> Path:
        return GO_DIR / self.name


ETCD = Wrapper("etcd", "go.etcd.io/etcd/server/v3", {"etcd": "go.etcd.io/etcd/server/v3"})
KUBERNETES = Wrapper("kubernetes", "k8s.io/kubernetes", {
    name: f"k8s.io/kubernetes/cmd/{name}"
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
})
HELM = Wrapper("helm", "helm.sh/helm/v4", {"helm": "helm.sh/helm/v4/cmd/helm"},
               version_args=("version", "--template", "{{.Version}}"))
# An OCI registry (go-containerregistry's, in memory) for tests that pull charts by oci://.
REGISTRY = Wrapper("registry", "github.com/google/go-containerregistry",
                   {"registry": "github.com/google/go-containerregistry/cmd/registry"},
                   version_args=())
WRAPPERS = (ETCD, KUBERNETES, HELM, REGISTRY)
TOOLS = (HELM, REGISTRY)  # built here, not part of a control plane


def pinned(wrapper: Wrapper) -> str:
    """The upstream version the wrapper's go.mod requires (read from the file: no Go needed)."""
    gomod = (wrapper.dir / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(wrapper.module)}\s+(v\S+)", gomod,
                      re.MULTILINE)
    if match is None:
        raise BuildError(f"{wrapper.dir / 'go.mod'} does not require {wrapper.module}")
    return match[1]
WRAPPER_MODULE = "outpost.local/testbed/controlplane/{name}"


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(f"controlplane: {msg}", flush=True)


def cache_root() -> Path:
    return Path(os.environ.get("OUTPOST_CACHE") or Path.home() / ".cache" / "outpost")


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    return env


def go(*args: str, cwd: Path, capture: bool = True) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, env=go_env(), text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout or "").strip()  # -json reports errors on stdout
        raise BuildError(f"`go {' '.join(args)}` failed in {cwd.name}:\n{detail}")
    return proc.stdout or ""


def check_go() -> str:
    if shutil.which("go") is None:
        raise BuildError("`go` is not on PATH: install Go >= 1.26 (https://go.dev/dl/) and retry")
    version = subprocess.run(["go", "env", "GOVERSION"], text=True, capture_output=True,
                             check=False).stdout.strip()
    match = re.match(r"go(\d+)\.(\d+)", version)
    if not match or (int(match[1]), int(match[2])) < MIN_GO:
        raise BuildError(f"found Go {version or 'of unknown version'}: install Go >= 1.26")
    return version


# --- pinning --------------------------------------------------------------------------------

def upstream_mod(module: str, version: str) -> tuple[Path, dict[str, str]]:
    """Download module@version's go.mod; return its path and the module's download record."""
    with tempfile.TemporaryDirectory() as scratch:
        info = json.loads(go("mod", "download", "-json", f"{module}@{version}", cwd=Path(scratch)))
    if info.get("Error"):
        raise BuildError(f"{module}@{version}: {info['Error']}")
    return Path(info["GoMod"]), info


def staging_modules(gomod: Path) -> list[str]:
    """The modules upstream replaces with a directory of its own tree (`=> ./staging/...`)."""
    text = gomod.read_text()
    found = re.findall(r"^\s*(?:replace\s+)?(\S+)(?:\s+v\S+)?\s+=>\s+\.\.?/\S+\s*$", text, re.M)
    if not found:
        raise BuildError(f"no local replace directives found in {gomod}")
    return sorted(set(found))


def directives(gomod: Path, keyword: str) -> list[str]:
    return re.findall(rf"^{keyword} .*$", gomod.read_text(), re.M)


def staging_version(k8s_version: str) -> str:
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", k8s_version)
    if not match:
        raise BuildError(f"expected a Kubernetes release like v1.37.2, got {k8s_version}")
    return f"v0.{match[1]}.{match[2]}"


def kubernetes_gomod(version: str) -> str:
    """The wrapper's go.mod before `go mod tidy`: upstream's go/godebug lines, the commands as
    tools, and every staging module replaced with its published release."""
    gomod, _ = upstream_mod(KUBERNETES.module, version)
    staged = staging_version(version)
    lines = [
        "// Generated by testbed/controlplane/build.py (`pin kubernetes`): do not edit by hand.",
        f"// The replace list is read from {KUBERNETES.module}@{version}'s own go.mod, which",
        "// replaces these modules with ./staging; here each is its published release.",
        f"module {WRAPPER_MODULE.format(name=KUBERNETES.name)}",
        "",
        *directives(gomod, "go"),
        *directives(gomod, "godebug"),
        "",
        "tool (",
        *(f"\t{pkg}" for pkg in KUBERNETES.commands.values()),
        ")",
        "",
        f"require {KUBERNETES.module} {version}",
        "",
        "replace (",
        *(f"\t{mod} => {mod} {staged}" for mod in staging_modules(gomod)),
        ")",
    ]
    return "\n".join(lines) + "\n"


def pin(target: str, version: str) -> None:
    check_go()
    if target == "kubernetes":
        wrapper = KUBERNETES
        wrapper.dir.mkdir(parents=True, exist_ok=True)
        (wrapper.dir / "go.mod").write_text(kubernetes_gomod(version))
        (wrapper.dir / "go.sum").unlink(missing_ok=True)
    else:
        wrapper = next(w for w in WRAPPERS if w.name == target)
        if wrapper is HELM:
            check_no_replaces(version)
        wrapper.dir.mkdir(parents=True, exist_ok=True)
        (wrapper.dir / "go.mod").write_text(
            f"module {WRAPPER_MODULE.format(name=wrapper.name)}\n\ngo 1.26\n")
        (wrapper.dir / "go.sum").unlink(missing_ok=True)
        for package in wrapper.commands.values():
            log(f"go get -tool {package}@{version}")
            go("get", "-tool", f"{package}@{version}", cwd=wrapper.dir)
    log(f"go mod tidy in go/{wrapper.name}")
    go("mod", "tidy", cwd=wrapper.dir)
    log(f"pinned {wrapper.module} {version} in go/{wrapper.name}/go.mod")


def check_replaces(version: str) -> None:
    """Refuse to build a kubernetes wrapper whose replace list is not upstream's."""
    gomod, _ = upstream_mod(KUBERNETES.module, version)
    want = {mod: staging_version(version) for mod in staging_modules(gomod)}
    text = (KUBERNETES.dir / "go.mod").read_text()
    have = dict(re.findall(r"^\s*(\S+) => \1 (v\S+)\s*$", text, re.M))
    if have != want:
        raise BuildError(
            f"go/kubernetes/go.mod's replace list is not {KUBERNETES.module}@{version}'s: "
            f"run `python3 testbed/controlplane/build.py pin kubernetes {version}`")


def check_no_replaces(version: str) -> None:
    """Refuse to pin a helm release whose go.mod replaces modules: a wrapper that requires it
    would silently build other versions of them (mirror them as go/kubernetes does, then)."""
    gomod, _ = upstream_mod(HELM.module, version)
    if found := directives(gomod, "replace"):
        raise BuildError(f"{HELM.module}@{version}'s go.mod has replace directives "
                         f"({found[0]} ...): go/helm would have to mirror them")


def requires(gomod_text: str) -> dict[str, str]:
    """Every `module version` requirement of a go.mod, in a require block or on its own line."""
    return dict(re.findall(r"^(?:require\s+|\t)([^\s(/][^\s]*)\s+(v\S+)", gomod_text, re.M))


def check_helm_requires(version: str) -> None:
    """Refuse to build a helm wrapper whose Kubernetes modules (k8s.io/..., sigs.k8s.io/...)
    are not at the versions helm itself requires: MVS in the wrapper must not have moved them."""
    gomod, _ = upstream_mod(HELM.module, version)
    theirs = requires(gomod.read_text())
    ours = requires((HELM.dir / "go.mod").read_text())
    kube = re.compile(r"(sigs\.)?k8s\.io/")
    differ = sorted(f"{mod} {ours[mod]} (helm requires {want})" for mod, want in theirs.items()
                    if kube.match(mod) and mod in ours and ours[mod] != want)
    if differ:
        raise BuildError(f"go/helm/go.mod moves modules helm {version} pins: {'; '.join(differ)}; "
                         f"run `python3 testbed/controlplane/build.py pin helm {version}`")


# --- building -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Component:
    name: str
    package: str
    wrapper: Wrapper
    version: str  # of the upstream module, e.g. v1.37.2 or v3.6.17
    ldflags: str
    stamp: str

    @property
    def path(self) -> Path:
        return cache_root() / "bin" / f"{self.name}-{self.version}" / self.name

    def expected(self) -> str:
        if self.wrapper is ETCD:
            return f"etcd Version: {self.version.removeprefix('v')}"
        if self.wrapper is HELM:
            return self.version
        if not self.wrapper.version_args:  # a line of `go version -m`
            return f"mod {self.wrapper.module} {self.version}"
        return f"Kubernetes {self.version}"

    def verify(self) -> str | None:
        """None when the binary is there, says its version and was built from these pins."""
        if not self.path.is_file():
            return "not built"
        stamp = self.path.parent / STAMP
        if not stamp.is_file() or stamp.read_text() != self.stamp:
            return "built from other pins or flags"
        cmd = ([str(self.path), *self.wrapper.version_args] if self.wrapper.version_args
               else ["go", "version", "-m", str(self.path)])
        args = " ".join(self.wrapper.version_args or cmd[:3])
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{args}` failed: {exc}"
        first = (out.stdout + out.stderr).strip()
        want = self.expected()
        if not any(line == want or " ".join(line.split()[:3]) == want
                   for line in (out.stdout + out.stderr).splitlines()):
            return f"`{args}` said {first.splitlines()[:1]}, expected {self.expected()!r}"
        return None


def module_info(wrapper: Wrapper) -> dict[str, str]:
    info: dict[str, str] = json.loads(go("list", "-m", "-json", wrapper.module, cwd=wrapper.dir))
    return info


def components(go_version: str) -> list[Component]:
    found = []
    for wrapper in WRAPPERS:
        info = module_info(wrapper)
        version = info["Version"]
        if wrapper is KUBERNETES:
            match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", version)
            if not match:
                raise BuildError(f"unexpected {wrapper.module} version {version}")
            pkg = "k8s.io/component-base/version"
            stamps = {"gitVersion": version, "gitMajor": match[1], "gitMinor": match[2],
                      "gitTreeState": "clean",
                      # the release's own time, so the same pins give the same binary
                      "buildDate": info.get("Time", "1970-01-01T00:00:00Z")}
            ldflags = " ".join(["-s", "-w", *(f"-X {pkg}.{k}={v}" for k, v in stamps.items())])
        elif wrapper is HELM:
            # as helm's Makefile stamps a tagged release (empty metadata: no "+unreleased");
            # gitCommit stays unset: the module proxy does not say which commit the tag is
            pkg = "helm.sh/helm/v4/internal/version"
            stamps = {"version": version, "metadata": "", "gitTreeState": "clean"}
            ldflags = " ".join(["-s", "-w", *(f"-X {pkg}.{k}={v}" for k, v in stamps.items())])
        else:
            ldflags = "-s -w"
        digest = hashlib.sha256()
        for part in ("go.mod", "go.sum"):
            digest.update((wrapper.dir / part).read_bytes())
        digest.update(f"{go_version} CGO_ENABLED=0 -trimpath {ldflags}".encode())
        for name, package in wrapper.commands.items():
            found.append(Component(name, package, wrapper, version, ldflags,
                                   digest.hexdigest() + "\n"))
    return found


def binary_name(package: str) -> str:
    """What `go build -o DIR/` calls a main package's binary: its last path element, or the one
    before a major-version suffix (go.etcd.io/etcd/server/v3 gives `server`)."""
    parts = package.split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) and len(parts) > 1 else parts[-1]


def compiled(lines: list[str]) -> int:
    return sum(1 for line in lines if not line.startswith("go: "))


def build(wrapper: Wrapper, todo: list[Component]) -> None:
    """One `go build` for all of a wrapper's missing commands, so they share the compile."""
    out = cache_root() / "bin" / ".build"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        cmd = ["go", "build", "-v", "-trimpath", "-ldflags", todo[0].ldflags,
               "-o", scratch + os.sep, *(c.package for c in todo)]
        log(f"[{wrapper.name}] building {', '.join(c.name for c in todo)} "
            f"(CGO_ENABLED=0 go build -trimpath -ldflags '{todo[0].ldflags}')")
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=wrapper.dir, env=go_env(), text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        lines: list[str] = []  # `-v` prints each package as it is compiled
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(30):
                log(f"[{wrapper.name}] {time.monotonic() - start:.0f}s, "
                    f"{compiled(lines)} packages compiled so far")

        ticker = threading.Thread(target=heartbeat, daemon=True)
        ticker.start()
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
        rc = proc.wait()
        done.set()
        if rc != 0:
            tail = "\n".join(lines[-40:])
            raise BuildError(f"[{wrapper.name}] go build failed (exit {rc}):\n{tail}")
        log(f"[{wrapper.name}] built in {time.monotonic() - start:.0f}s "
            f"({compiled(lines)} packages compiled)")
        for comp in todo:
            comp.path.parent.mkdir(parents=True, exist_ok=True)
            (Path(scratch) / binary_name(comp.package)).replace(comp.path)
            (comp.path.parent / STAMP).write_text(comp.stamp)
    with contextlib.suppress(OSError):
        out.rmdir()  # only when no other build is using it


def build_all() -> int:
    go_version = check_go()
    log(f"{go_version}; binaries under {cache_root() / 'bin'}")
    comps = components(go_version)
    check_replaces(next(c.version for c in comps if c.wrapper is KUBERNETES))
    check_helm_requires(next(c.version for c in comps if c.wrapper is HELM))
    todo: dict[str, list[Component]] = {}
    for comp in comps:
        why = comp.verify()
        if why is None:
            log(f"{comp.name} {comp.version}: cached, verified")
        else:
            log(f"{comp.name} {comp.version}: {why}; will build")
            todo.setdefault(comp.wrapper.name, []).append(comp)
    for wrapper in WRAPPERS:
        if wrapper.name in todo:
            build(wrapper, todo[wrapper.name])
    bad = [(c, why) for c in comps if (why := c.verify()) is not None]
    for comp, why in bad:
        log(f"{comp.name} {comp.version}: FAILED verification: {why}")
    if bad:
        return 1
    for comp in comps:
        size = comp.path.stat().st_size / 2**20
        log(f"ok {comp.expected()!r:32} {size:6.1f} MiB  {comp.path}")
    if todo:
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**10
        log(f"peak RSS of the largest build process: {peak:.0f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("build", help="build what is missing and verify all (the default)")
    sub.add_parser("paths", help="print component=path for the pinned versions, without building")
    pin_cmd = sub.add_parser("pin", help="rewrite a wrapper module for another release")
    pin_cmd.add_argument("target", choices=[w.name for w in WRAPPERS])
    pin_cmd.add_argument("version")
    args = parser.parse_args(argv)
    try:
        if args.command == "pin":
            pin(args.target, args.version)
            return 0
        if args.command == "paths":
            for comp in components(check_go()):
                print(f"{comp.name}={comp.path}")
            return 0
        return build_all()
    except BuildError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
