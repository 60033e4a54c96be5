"""The real agent as its own process for the benchmarks, and what /proc says about it."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from agent.spec import public_key_text
from testbed.site import CLUSTER, Site


def proc_stats(pid: int) -> tuple[float, float, float]:
    """(RSS now, peak RSS, both in MiB; CPU seconds) of a process, from /proc."""
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[key] = int(value.split()[0]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return mem["VmRSS"], mem["VmHWM"], (int(fields[11]) + int(fields[12])) / ticks


async def start_agent(site: Site, identity: str) -> asyncio.subprocess.Process:
    """`python -m agent.daemon` for the site's cluster, configured as its Deployment would be;
    its state under the site's root, by identity."""
    env = {**os.environ,
           "OUTPOST_AGENT_CLUSTER_NAME": CLUSTER,
           "OUTPOST_AGENT_NATS_SERVERS": site.nats.url,
           "OUTPOST_AGENT_PUBLIC_KEYS": public_key_text(site.key.public_key()),
           "OUTPOST_AGENT_STATE_DIR": str(site.root / f"{identity}-state"),
           "OUTPOST_AGENT_KUBECONFIG": str(site.kubeconfig),
           "OUTPOST_AGENT_IDENTITY": identity, "OUTPOST_AGENT_HTTP_HOST": "127.0.0.1",
           "OUTPOST_AGENT_HTTP_PORT": "0", "OUTPOST_AGENT_LOG_LEVEL": "WARNING"}
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "agent.daemon", env=env,
                                                stderr=asyncio.subprocess.DEVNULL)


async def stop_agent(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
    await proc.wait()
