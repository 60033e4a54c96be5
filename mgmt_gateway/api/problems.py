"""Errors as RFC 9457 problem details (`application/problem+json`) that say what to fix.

Handlers raise `Problem`; a middleware turns it (and aiohttp's own HTTP errors) into the JSON
body. Validation errors carry an `errors` list of `{field, message}` with camelCase field paths
as the client wrote them (`workers[0].machine.provider`), not pydantic's internal locations.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, Literal, Union, get_args, get_origin

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from agent.spec.base import Model

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://outpost.io/problems/"


class FieldError(Model):
    field: str = Field(description="camelCase path in the request body, e.g. workers[0].name; "
                                   "(root) for the body as a whole")
    message: str


class ProblemDetails(Model):
    """RFC 9457 problem details."""

    type: str = Field(description="URI naming the kind of problem")
    title: str
    status: int
    detail: str = Field(description="what went wrong in this request, and how to fix it")
    instance: str = Field(description="the request path")
    errors: list[FieldError] | None = Field(default=None,
                                            description="one entry per invalid field")


class Problem(Exception):
    """An error answer; `kind` becomes the last segment of the problem type URI."""

    def __init__(self, status: int, kind: str, detail: str, *, title: str | None = None,
                 errors: Sequence[FieldError] = (),
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = list(errors)
        self.headers = dict(headers or {})

    def response(self, instance: str) -> web.Response:
        body = ProblemDetails(type=TYPE_BASE + self.kind, title=self.title, status=self.status,
                              detail=self.detail, instance=instance,
                              errors=self.errors or None)
        return web.Response(status=self.status, headers=self.headers,
                            body=body.model_dump_json(by_alias=True, exclude_none=True),
                            content_type=PROBLEM_JSON)


def invalid(model: type[BaseModel], err: ValidationError, *, what: str) -> Problem:
    """A 422 listing every invalid field of a `model` body."""
    errors = field_errors(model, err)
    listing = "; ".join(f"{e.field}: {e.message}" for e in errors)
    count = f"{len(errors)} problem{'s' if len(errors) != 1 else ''}"
    return Problem(422, "invalid-request", f"{what} has {count}: {listing}",
                   title="The request body is not valid", errors=errors)


def field_errors(model: type[BaseModel], err: ValidationError) -> list[FieldError]:
    out: list[FieldError] = []
    for e in err.errors(include_url=False):
        path, union = _path(model, tuple(e["loc"]))
        out.append(FieldError(field=path, message=_message(e, path, union)))
    return out


# -- locations -------------------------------------------------------------------------------
def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional: they add no step to an error location."""
    while True:
        if get_origin(tp) is typing.Annotated:
            tp = get_args(tp)[0]
            continue
        if _is_union(tp):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _tags(tp: Any) -> dict[str, type[BaseModel]]:
    """For a union of models told apart by a Literal field: tag value -> member."""
    if not _is_union(tp):
        return {}
    out: dict[str, type[BaseModel]] = {}
    for member in get_args(tp):
        member = _unwrap(member)
        if not (isinstance(member, type) and issubclass(member, BaseModel)):
            continue
        for f in member.model_fields.values():
            lit = _unwrap(f.annotation)
            if get_origin(lit) is Literal and len(get_args(lit)) == 1:
                out[str(get_args(lit)[0])] = member
    return out


def _path(model: type[BaseModel], loc: tuple[int | str, ...]) -> tuple[str, dict[str, Any]]:
    """pydantic's location as the client's field path; also the tags of a union found there."""
    text = ""
    cur: Any = model
    for item in loc:
        cur = _unwrap(cur)
        tags = _tags(cur)
        if isinstance(item, str) and item in tags:
            cur = tags[item]  # pydantic's step into the chosen member: not a field
            continue
        if isinstance(item, int):
            text += f"[{item}]"
            args = get_args(cur)
            cur = args[0] if args else Any
            continue
        text += f".{item}" if text else item
        cur = _field_type(cur, item)
    return text or "(root)", _tags(_unwrap(cur))


def _field_type(tp: Any, name: str) -> Any:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for fname, f in tp.model_fields.items():
            if name in (fname, f.alias):
                return f.annotation
    return Any


def _message(e: Any, path: str, union: dict[str, Any]) -> str:
    kind = e["type"]
    ctx = e.get("ctx") or {}
    tag = str(ctx.get("discriminator", "tag")).strip("'")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field (field names are camelCase; see /openapi.json)"
    if kind == "union_tag_invalid":
        return f"unknown {tag} {ctx.get('tag')!r}: use one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        choices = ", ".join(repr(t) for t in union) or "a known value"
        return f"needs {tag}: one of {choices}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a JSON object" + (" (the whole body)" if path == "(root)" else "")
    return str(e["msg"]).removeprefix("Value error, ")
