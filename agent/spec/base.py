"""The base of every contract model: frozen, strict, camelCase on the wire."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel,
                              populate_by_name=True, str_strip_whitespace=False)


def dns_label(max_len: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) > max_len or not DNS_LABEL.match(value):
            raise ValueError(
                f"must be a DNS-1123 label of at most {max_len} characters: lower-case letters, "
                "digits and '-', starting and ending with a letter or digit"
            )
        return value

    return AfterValidator(check)


Namespace = Annotated[str, dns_label(63)]
