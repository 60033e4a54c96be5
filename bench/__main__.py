"""`python -m bench [name...]`: run the benchmarks and print their figures."""

from __future__ import annotations

import argparse
import asyncio
import logging

from . import addons, agent, apiserver, fleet, gateway, publisher

BENCHES = {"apiserver": apiserver.main, "agent": agent.main, "gateway": gateway.main,
           "fleet": fleet.main, "addons": addons.main, "publisher": publisher.main}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run, of: {', '.join(BENCHES)} (default: all)")
    args = p.parse_args()
    # Figures only: the components' own warnings (a NATS server stopped on purpose) are noise.
    logging.basicConfig(level=logging.ERROR)
    unknown = set(args.names) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from "
                f"{', '.join(BENCHES)}")
    for name in args.names or list(BENCHES):
        print(f"== {name}")
        asyncio.run(BENCHES[name]())


if __name__ == "__main__":
    main()
