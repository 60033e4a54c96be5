"""Multi-document YAML as Kubernetes tools read it. PURE.

PyYAML follows YAML 1.1, where a bare `=` is the "value" tag, which its safe loader refuses; Go's
YAML (kubectl, Helm) reads it as the string "=" — and real CRDs carry it (the AlertmanagerConfig
CRD's matchType enum). One loader for every manifest the gateway reads.
"""

from __future__ import annotations

from typing import Any

import yaml

Obj = dict[str, Any]

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class KubeLoader(_Base):  # type: ignore[misc]
    """The fastest safe loader available, reading `=` as a string."""


KubeLoader.add_constructor("tag:yaml.org,2002:value",
                           lambda loader, node: loader.construct_scalar(node))


def parse_documents(text: str, source: str) -> list[Obj]:
    """The objects of a multi-document YAML text; `List` kinds are flattened, empty documents
    dropped; raises ValueError naming `source` and the document at fault."""
    try:
        docs = list(yaml.load_all(text, Loader=KubeLoader))
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: not valid YAML: {e}") from e
    out: list[Obj] = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ValueError(f"{source}: document {i + 1} is not a mapping")
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            out.extend(d for d in doc["items"] if d)
        else:
            out.append(doc)
    return out
