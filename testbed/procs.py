"""Child processes that never outlive the testbed."""

from __future__ import annotations

import shutil


def tied_to_parent(argv: list[str]) -> list[str]:
    """`argv` run so that the kernel kills it when the process that started it dies, even by
    SIGKILL (Linux's parent-death signal, set by util-linux's `setpriv`, which then execs the
    command under the same pid): a killed test run leaves no etcd or kube-apiserver behind.
    Where `setpriv` is missing, `argv` unchanged."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv
