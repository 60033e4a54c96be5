"""The gateway's HTTP API (aiohttp): `make_app(ApiDeps(...))`."""

from .app import ApiDeps, StatusSource, make_app
from .problems import PROBLEM_JSON, Problem

__all__ = ["PROBLEM_JSON", "ApiDeps", "Problem", "StatusSource", "make_app"]
