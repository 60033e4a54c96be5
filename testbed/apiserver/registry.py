"""REST semantics of the API: what create, update, delete and their subresources mean.

This is the layer the real apiserver's registry strategies play: server-set metadata, the
spec/status split, generation, optimistic concurrency, finalizers, deletion propagation, schema
validation of custom resources and the life cycle of CustomResourceDefinitions.
"""

from __future__ import annotations

import copy
import re
import secrets
import string
import uuid
from datetime import UTC, datetime
from typing import Any

from . import errors, fieldmanager, schema
from .errors import ApiError
from .patch import BUILTIN_LISTS, ListSchema, schema_lists
from .resources import ResourceType, builtin_types, from_crd
from .store import Obj, Store

CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"
NS_KEY = "namespaces"

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp",
               "deletionGracePeriodSeconds", "selfLink")
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"
UPDATE_NEEDS_RESOURCE_VERSION = ("CustomResourceDefinition", "ValidatingWebhookConfiguration",
                                 "MutatingWebhookConfiguration")
KUBERNETES_SERVICE = {
    "metadata": {"name": "kubernetes",
                 "labels": {"component": "apiserver", "provider": "kubernetes"}},
    "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
             "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
             "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
             "internalTrafficPolicy": "Cluster"},
}
KUBERNETES_ENDPOINTS = {
    "metadata": {"name": "kubernetes",
                 "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
    "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                 "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}],
}
# (kind, path, Go struct field, Go element type) of the string maps built-in kinds decode.
STRING_MAPS = (
    ("*", ("metadata", "labels"), "ObjectMeta.metadata.labels", "string"),
    ("*", ("metadata", "annotations"), "ObjectMeta.metadata.annotations", "string"),
    ("ConfigMap", ("data",), "ConfigMap.data", "string"),
    ("ConfigMap", ("binaryData",), "ConfigMap.binaryData", "[]uint8"),
    ("Secret", ("data",), "Secret.data", "[]uint8"),
    ("Secret", ("stringData",), "Secret.stringData", "string"),
    ("Service", ("spec", "selector"), "ServiceSpec.spec.selector", "string"),
)
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cause(field: str, reason: str, message: str) -> dict[str, Any]:
    return {"reason": reason, "message": message, "field": field}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "array" if isinstance(value, list) else "object" if isinstance(value, dict) else (
        "string")


def _base64_error_at(text: str) -> int:
    """Where Go's base64 decoder reports a malformed input (first bad byte, or the padding)."""
    for i, ch in enumerate(text):
        if not (ch.isascii() and (ch.isalnum() or ch in "+/=")):
            return i
    return len(text) // 4 * 4


def set_condition(obj: Obj, ctype: str, status: str, reason: str, message: str) -> None:
    """Set one status condition, keeping its transition time when its status is unchanged."""
    conds = obj.setdefault("status", {}).setdefault("conditions", [])
    cur = next((c for c in conds if c.get("type") == ctype), None)
    if cur is None:
        cur = {"type": ctype}
        conds.append(cur)
    if cur.get("status") != status or "lastTransitionTime" not in cur:
        cur["lastTransitionTime"] = now_rfc3339()
    cur.update(status=status, reason=reason, message=message)


class Registry:
    """All resource types and objects of one emulated cluster."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store()
        self._types: dict[str, ResourceType] = {}
        self._by_gvr: dict[tuple[str, str, str], ResourceType] = {}
        self._kinds: dict[tuple[str, str], ResourceType] = {}
        self._kinds_version = -1
        self.types_version = 0  # bumped whenever the served types change (discovery caches)
        for rt in builtin_types():
            self._register(rt)
        for ns in INITIAL_NAMESPACES:
            self.create(self.type_for("", "v1", "namespaces"), None,
                        {"metadata": {"name": ns}}, manager="testbed")
        # What kube-apiserver's own bootstrap controller keeps in place: the `kubernetes` service.
        self.create(self.type_for("", "v1", "services"), "default", KUBERNETES_SERVICE,
                    manager="kube-apiserver")
        self.create(self.type_for("", "v1", "endpoints"), "default", KUBERNETES_ENDPOINTS,
                    manager="kube-apiserver")

    # -- types -----------------------------------------------------------------------------
    def _register(self, rt: ResourceType) -> None:
        self.types_version += 1
        old = self._types.get(rt.key)
        if old is not None:
            for v in old.versions:
                self._by_gvr.pop((old.group, v, old.plural), None)
        self._types[rt.key] = rt
        for v in rt.versions:
            self._by_gvr[(rt.group, v, rt.plural)] = rt

    def _unregister(self, rkey: str) -> None:
        rt = self._types.pop(rkey, None)
        self.types_version += 1
        if rt is not None:
            for v in rt.versions:
                self._by_gvr.pop((rt.group, v, rt.plural), None)
            self.store.drop_type(rkey)
            self.store.close_watches(rkey)  # its storage is gone: so are the watches on it

    def types(self) -> list[ResourceType]:
        return list(self._types.values())

    def type_for(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self._by_gvr.get((group, version, plural))
        if rt is None:
            raise errors.ApiError(404, "NotFound", "the server could not find the requested "
                                  "resource")
        return rt

    def find_type(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_gvr.get((group, version, plural))

    def type_by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        if self._kinds_version != self.types_version:  # the garbage collector asks a lot
            self._kinds = {(rt.api_version(v), rt.kind): rt
                           for rt in self._types.values() for v in rt.versions}
            self._kinds_version = self.types_version
        return self._kinds.get((api_version, kind))

    def lists_for(self, rt: ResourceType, version: str | None) -> ListSchema:
        if rt.custom:
            sch = rt.schemas.get(version or rt.preferred_version)
            return schema_lists(sch or {})
        return BUILTIN_LISTS

    # -- helpers ---------------------------------------------------------------------------
    def _served(self, rt: ResourceType, obj: Obj, version: str | None) -> Obj:
        obj["apiVersion"] = rt.api_version(version)
        obj["kind"] = rt.kind
        return obj

    def get(self, rt: ResourceType, ns: str | None, name: str, version: str | None = None) -> Obj:
        obj = self.store.get(rt.key, (ns or "", name))
        if obj is None:
            raise errors.not_found(rt.group, rt.plural, name)
        return self._served(rt, obj, version)

    def _check_namespace(self, rt: ResourceType, ns: str | None, creating: bool) -> None:
        if not rt.namespaced:
            return
        if not ns:
            raise errors.bad_request("the server could not find the requested resource")
        nsobj = self.store.peek(NS_KEY, ("", ns))
        if nsobj is None:
            raise errors.not_found("", "namespaces", ns)
        if creating and nsobj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden",
                           f'{rt.plural} "{{name}}" is forbidden: unable to create new content in '
                           f"namespace {ns} because it is being terminated")

    def _validate_meta(self, rt: ResourceType, obj: Obj) -> list[dict[str, Any]]:
        meta = obj["metadata"]
        causes = []
        name = meta.get("name", "")
        pattern, msg = (_LABEL, _LABEL_MSG) if rt.kind == "Namespace" else (_SUBDOMAIN,
                                                                             _SUBDOMAIN_MSG)
        limit = 63 if rt.kind == "Namespace" else 253
        if not name:
            causes.append(_cause("metadata.name", "FieldValueRequired",
                                 "Required value: name or generateName is required"))
        elif not pattern.match(name) or len(name) > limit:
            causes.append(_cause("metadata.name", "FieldValueInvalid",
                                 f'Invalid value: "{name}": {msg}'))
        for k, v in (meta.get("labels") or {}).items():
            if not isinstance(k, str) or not _LABEL_KEY.match(k) or len(k.split("/")[-1]) > 63:
                causes.append(_cause("metadata.labels", "FieldValueInvalid",
                                     f'Invalid value: "{k}": name part must consist of '
                                     "alphanumeric characters, '-', '_' or '.', and must start "
                                     "and end with an alphanumeric character"))
            if not isinstance(v, str) or not _LABEL_VALUE.match(v) or len(v) > 63:
                causes.append(_cause(f"metadata.labels[{k}]", "FieldValueInvalid",
                                     f'Invalid value: "{v}": a valid label must be an empty '
                                     "string or consist of alphanumeric characters, '-', '_' "
                                     "or '.', and must start and end with an alphanumeric "
                                     "character"))
        for k, v in (meta.get("annotations") or {}).items():
            if not isinstance(v, str):
                causes.append(_cause(f"metadata.annotations[{k}]", "FieldValueTypeInvalid",
                                     "Invalid value: annotation values must be strings"))
        for i, ref in enumerate(meta.get("ownerReferences") or []):
            for f in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(f):
                    causes.append(_cause(f"metadata.ownerReferences[{i}].{f}",
                                         "FieldValueRequired", "Required value"))
        return causes

    def _validate_schema(self, rt: ResourceType, obj: Obj, version: str | None) -> None:
        """Prune, default and validate a custom resource, as the CRD handler does on every write."""
        sch = rt.schemas.get(version or rt.preferred_version)
        causes = self._validate_meta(rt, obj)
        if sch is not None:
            schema.prune(obj, sch)
            schema.apply_defaults(obj, sch)
            for fe in schema.validate(obj, sch):
                causes.append(_cause(fe.path, fe.type, fe.detail))
        if rt.scale:
            for fe in schema.scale_errors(obj, rt.scale):
                causes.append(_cause(fe.path, fe.type, fe.detail))
        if sch is not None and schema.has_validation_rules(sch):
            skipped = schema.cel_skipped([c["reason"] for c in causes])
            if skipped is not None:
                causes.append(_cause(skipped.path, skipped.type, skipped.detail))
        if rt.kind == "CustomResourceDefinition":
            causes.extend(self._validate_crd(obj))
        if causes:
            raise errors.invalid(rt.qualified_kind, rt.group, rt.kind,
                                 obj["metadata"].get("name", ""), causes)

    def _validate_crd(self, obj: Obj) -> list[dict[str, Any]]:
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        causes = []
        for f in ("group", "names", "scope", "versions"):
            if not spec.get(f):
                causes.append(_cause(f"spec.{f}", "FieldValueRequired", "Required value"))
        if causes:
            return causes
        for f in ("plural", "kind"):
            if not names.get(f):
                causes.append(_cause(f"spec.names.{f}", "FieldValueRequired", "Required value"))
        expected = f"{names.get('plural')}.{spec.get('group')}"
        if obj["metadata"].get("name") != expected:
            causes.append(_cause("metadata.name", "FieldValueInvalid",
                                 f'Invalid value: "{obj["metadata"].get("name")}": must be '
                                 "spec.names.plural+\".\"+spec.group"))
        storage = [v for v in spec.get("versions") or [] if v.get("storage")]
        if len(storage) != 1:
            causes.append(_cause("spec.versions", "FieldValueInvalid",
                                 "Invalid value: must have exactly one version marked as "
                                 "storage version"))
        return causes

    def _admit_builtin(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        """The defaulting a real server's built-in strategies apply, where clients can see it."""
        if rt.kind == "Namespace":
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("metadata", {}).setdefault("labels", {})[
                "kubernetes.io/metadata.name"] = obj["metadata"]["name"]
            if old is None:
                obj["status"] = {"phase": "Active"}
        elif rt.kind == "Secret":
            obj.setdefault("type", "Opaque")
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                import base64

                data = obj.setdefault("data", {})
                for k, v in string_data.items():
                    data[k] = base64.b64encode(str(v).encode()).decode()
        elif rt.kind == "Service":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            if old is not None and "clusterIP" in (old.get("spec") or {}):
                spec.setdefault("clusterIP", old["spec"]["clusterIP"])
            elif spec.get("type") != "ExternalName":
                n = self.store.rv % 65000
                spec.setdefault("clusterIP", f"10.96.{n // 250}.{n % 250 + 2}")
            spec.setdefault("sessionAffinity", "None")
            if spec.get("type") != "ExternalName":
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
                spec.setdefault("ipFamilies", ["IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
                spec.setdefault("internalTrafficPolicy", "Cluster")
            node_ports = spec.get("type") in ("NodePort", "LoadBalancer")
            if node_ports:
                spec.setdefault("externalTrafficPolicy", "Cluster")
            if spec.get("type") == "LoadBalancer":
                spec.setdefault("allocateLoadBalancerNodePorts", True)
            old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                         for p in ((old or {}).get("spec") or {}).get("ports") or []}
            for p in spec.get("ports") or []:
                p.setdefault("protocol", "TCP")
                p.setdefault("targetPort", p.get("port"))
                if node_ports and not p.get("nodePort"):
                    kept = old_ports.get((p.get("port"), p["protocol"]))
                    p["nodePort"] = kept or self._free_node_port(spec["ports"])
        elif rt.kind in ("Deployment", "StatefulSet", "ReplicaSet"):
            obj.setdefault("spec", {}).setdefault("replicas", 1)

    def _free_node_port(self, taking: list[Obj]) -> int:
        used = {p.get("nodePort") for svc in self.store.items("services")
                for p in (svc.get("spec") or {}).get("ports") or []}
        used |= {p.get("nodePort") for p in taking}
        return next(n for n in range(30000, 32768) if n not in used)

    def _prepare(self, rt: ResourceType, obj: Obj, old: Obj | None, version: str | None) -> None:
        if rt.custom or rt.kind == "CustomResourceDefinition":
            self._validate_schema(rt, obj, version)
        else:
            self._admit_builtin(rt, obj, old)
            causes = self._validate_meta(rt, obj)
            if causes:
                raise errors.invalid(rt.qualified_kind, rt.group, rt.kind,
                                     obj["metadata"].get("name", ""), causes)

    @staticmethod
    def _content(obj: Obj) -> dict[str, Any]:
        return {k: v for k, v in obj.items()
                if k not in ("metadata", "status", "apiVersion", "kind")}

    def _check_body(self, rt: ResourceType, obj: Any, version: str | None) -> Obj:
        if not isinstance(obj, dict):
            raise errors.bad_request("the body of the request was in an unknown format")
        want = rt.api_version(version)
        api_version = obj.get("apiVersion")
        if api_version and api_version != want and not (
            rt.custom and api_version.rpartition("/")[0] == rt.group
        ):
            raise errors.bad_request(f"the API version in the data ({api_version}) does not "
                                     f"match the expected API version ({want})")
        kind = obj.get("kind")
        if kind and kind != rt.kind:
            raise errors.bad_request(f"the kind in the data ({kind}) does not match the "
                                     f"expected kind ({rt.kind})")
        obj["apiVersion"], obj["kind"] = want, rt.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if not rt.custom:
            self._decode_string_maps(rt, obj, version)
        return obj

    @staticmethod
    def _decode_string_maps(rt: ResourceType, obj: Obj, version: str | None) -> None:
        """The typed decoding of a built-in kind, for its string maps: a number or a bool where
        Go has a string fails to decode (400), as `data: {port: 8080}` does on a real server."""
        for kind, path, field, go_type in STRING_MAPS:
            if kind not in ("*", rt.kind):
                continue
            parent: Any = obj
            for part in path[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(parent, dict) or parent.get(path[-1]) is None:
                continue
            value = parent[path[-1]]
            bad = None
            if not isinstance(value, dict):
                bad, go_type = _json_type(value), f"map[string]{go_type}"
            else:
                for k, v in value.items():
                    if v is None:
                        value[k] = ""  # null decodes to the zero value
                    elif not isinstance(v, str):
                        bad = _json_type(v)
                    elif go_type == "[]uint8" and not _BASE64.fullmatch(v):
                        raise errors.bad_request(
                            f'{rt.kind} in version "{version or rt.preferred_version}" '
                            f"cannot be handled as a {rt.kind}: illegal base64 data at input "
                            f"byte {_base64_error_at(v)}")
                    if bad:
                        break
            if bad:
                raise errors.bad_request(
                    f'{rt.kind} in version "{version or rt.preferred_version}" cannot be handled '
                    f"as a {rt.kind}: json: cannot unmarshal {bad} into Go struct field "
                    f"{field} of type {go_type}")

    def _record(self, rt: ResourceType, old: Obj | None, new: Obj, manager: str,
                subresource: str | None, version: str | None,
                start: list[Any] | None = None) -> None:
        managed = list((old or {}).get("metadata", {}).get("managedFields") or []) \
            if start is None else list(start)
        new["metadata"]["managedFields"] = fieldmanager.record_update(
            old, new, managed, manager=manager, api_version=rt.api_version(version),
            subresource=subresource, lists=self.lists_for(rt, version), now=now_rfc3339(),
            status_subresource=rt.status,
        ) if manager else managed
        if not new["metadata"]["managedFields"]:
            new["metadata"].pop("managedFields")

    # -- create ----------------------------------------------------------------------------
    def create(self, rt: ResourceType, ns: str | None, body: Any, *, manager: str = "",
               version: str | None = None, dry_run: bool = False,
               keep_status: bool = False, managed_fields: list[Any] | None = None) -> Obj:
        obj = self._check_body(rt, copy.deepcopy(body), version)
        meta = obj["metadata"]
        if rt.namespaced:
            if meta.get("namespace") and ns and meta["namespace"] != ns:
                raise errors.bad_request("the namespace of the provided object does not match "
                                         "the namespace sent on the request")
            ns = ns or meta.get("namespace")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(secrets.choice(string.ascii_lowercase + "bcdfghjklmnpqrstvwxz2456789")
                             for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        rv_set = str(meta.get("resourceVersion") or "")
        for f in SERVER_META:
            meta.pop(f, None)
        if rt.status and not keep_status:
            obj.pop("status", None)
        try:
            self._check_namespace(rt, ns, creating=True)
        except ApiError as e:
            e.message = e.message.replace("{name}", meta.get("name", ""))
            raise
        self._prepare(rt, obj, None, version)
        if rv_set.isdigit() and int(rv_set) > 0 and not dry_run:
            # etcd refuses it before it looks for the key; a real server answers with a bare 500.
            raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
        if self.store.peek(rt.key, (ns or "", meta["name"])) is not None:
            raise errors.already_exists(rt.group, rt.plural, meta["name"])
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rt.generation:
            meta["generation"] = 1
        if managed_fields is not None:
            meta["managedFields"] = managed_fields
        elif not dry_run:
            self._record(rt, None, obj, manager, None, version)
        if dry_run:
            meta["resourceVersion"] = str(self.store.rv)
            return self._served(rt, obj, version)
        meta["resourceVersion"] = str(self.store.next_rv())
        stored = self.store.put(rt.key, obj, "ADDED", None)
        if rt.kind == "CustomResourceDefinition":
            stored = self._establish(stored)
        return self._served(rt, copy.deepcopy(stored), version)

    # -- update ----------------------------------------------------------------------------
    def update(self, rt: ResourceType, ns: str | None, name: str, body: Any, *,
               subresource: str | None = None, manager: str = "",
               version: str | None = None, dry_run: bool = False,
               precondition_rv: str | None = None, managed_fields: list[Any] | None = None,
               uid_precondition: bool = True) -> Obj:
        """Replace an object (PUT); patches pass `uid_precondition=False`, as a patched uid is
        an invalid change, not a precondition."""
        new = self._check_body(rt, copy.deepcopy(body), version)
        meta = new["metadata"]
        proposed = {"metadata": {"managedFields": meta["managedFields"]}} \
            if "managedFields" in meta else {}
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match "
                                     f"the name on the URL ({name})")
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise errors.bad_request("the namespace of the provided object does not match the "
                                     "namespace sent on the request")
        old = self.store.peek(rt.key, (ns or "", name))
        if old is None:
            raise errors.not_found(rt.group, rt.plural, name)
        old_meta = old["metadata"]
        if uid_precondition and meta.get("uid") and meta["uid"] != old_meta["uid"]:
            # A PUT's uid is a storage precondition, checked before anything else.
            raise errors.conflict(rt.group, rt.plural, name, (
                "StorageError: invalid object, Code: 4, Key: "
                f"{rt.etcd_key(ns, name)}, ResourceVersion: 0, AdditionalErrorMsg: "
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: "
                f"{old_meta['uid']}"))
        want_rv = meta.get("resourceVersion") or precondition_rv
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, name, errors.STALE)
        if not want_rv and not self.allows_unconditional_update(rt):
            raise errors.invalid(rt.qualified_resource, rt.group, rt.plural, name, [_cause(
                "metadata.resourceVersion", "FieldValueInvalid",
                "Invalid value: 0: must be specified for an update")])
        if subresource is None and meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise errors.invalid(rt.qualified_kind, rt.group, rt.kind, name, [_cause(
                "metadata.uid", "FieldValueInvalid",
                f'Invalid value: "{meta["uid"]}": field is immutable')])
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
            self._served(rt, new, version)
            meta = new["metadata"]
        else:
            if rt.status:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            meta["name"] = name
            if rt.namespaced:
                meta["namespace"] = ns
            for f in SERVER_META:
                if f in old_meta:
                    meta[f] = old_meta[f]
                else:
                    meta.pop(f, None)
            # Finalizers may only be removed from an object being deleted, never re-added.
            if old_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                if added:
                    found = ", ".join(f'"{f}"' for f in sorted(added))
                    raise errors.invalid(rt.qualified_kind, rt.group, rt.kind, name, [_cause(
                        "metadata.finalizers", "FieldValueForbidden",
                        "Forbidden: no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers []string{{{found}}}")])
        self._prepare(rt, new, old, version)
        if rt.generation and self._content(new) != self._content(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        if managed_fields is not None:
            meta["managedFields"] = managed_fields
        else:
            # As the real server does: managedFields rewritten by the client are the starting
            # point (how a controller takes over fields from an old manager), else the live ones.
            start = fieldmanager.managed_fields_for_update(old, proposed, subresource=subresource)
            meta["managedFields"] = start
            if not meta["managedFields"]:
                meta.pop("managedFields")
            self._record(rt, old, new, manager, subresource, version, start=start)
        if self._same(old, new):
            # A no-op write changes nothing, not even the resourceVersion: no event is sent.
            return self._served(rt, copy.deepcopy(old), version)
        if dry_run:
            return self._served(rt, new, version)
        # A namespace also waits for its spec.finalizers (the namespace controller's) to clear.
        if old_meta.get("deletionTimestamp") and not meta.get("finalizers") and not (
                rt.kind == "Namespace" and (new.get("spec") or {}).get("finalizers")):
            final = self.store.remove(rt.key, self._served(rt, new, None))
            if rt.kind == "CustomResourceDefinition":
                self._unregister(self.crd_rkey(final))
            return self._served(rt, final, version)
        meta["resourceVersion"] = str(self.store.next_rv())
        stored = self.store.put(rt.key, new, "MODIFIED", old)
        if rt.kind == "CustomResourceDefinition" and subresource is None:
            stored = self._establish(stored)
        return self._served(rt, copy.deepcopy(stored), version)

    @staticmethod
    def _same(old: Obj, new: Obj) -> bool:
        def strip(o: Obj) -> Obj:
            o = dict(o)
            m = dict(o.get("metadata") or {})
            mf = [dict(e, time=None) for e in m.pop("managedFields", None) or []]
            m["managedFields"] = mf
            o["metadata"] = m
            o.pop("apiVersion", None)
            return o

        return strip(old) == strip(new)

    # -- delete ----------------------------------------------------------------------------
    def delete(self, rt: ResourceType, ns: str | None, name: str, *,
               propagation: str | None = None, preconditions: dict[str, Any] | None = None,
               dry_run: bool = False, version: str | None = None) -> tuple[Obj, bool]:
        """Delete or start deleting; returns (object, gone-now)."""
        obj = self.store.peek(rt.key, (ns or "", name))
        if obj is None:
            raise errors.not_found(rt.group, rt.plural, name)
        meta = obj["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise errors.conflict(rt.group, rt.plural, name,
                                  f"Precondition failed: UID in precondition: {pre['uid']}, UID "
                                  f"in object meta: {meta['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise errors.conflict(rt.group, rt.plural, name,
                                  "Precondition failed: ResourceVersion in precondition: "
                                  f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                  f"{meta['resourceVersion']}")
        if propagation not in (None, "Orphan", "Background", "Foreground"):
            raise errors.invalid("DeleteOptions", "", "DeleteOptions", "", [_cause(
                "propagationPolicy", "FieldValueNotSupported",
                f'Unsupported value: "{propagation}": supported values: "Foreground", '
                '"Background", "Orphan"')])
        if dry_run:
            return self._served(rt, copy.deepcopy(obj), version), False
        new = copy.deepcopy(obj)
        nmeta = new["metadata"]
        finalizers = list(nmeta.get("finalizers") or [])
        if propagation == "Orphan":
            self.orphan_dependents(meta["uid"])
        if propagation == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if rt.kind == "CustomResourceDefinition" and not nmeta.get("deletionTimestamp"):
            # The CRD's own delete: mark it, let the finalizer controller remove the instances.
            if CRD_CLEANUP not in finalizers:
                finalizers.append(CRD_CLEANUP)
            nmeta["deletionTimestamp"] = now_rfc3339()
            nmeta["finalizers"] = finalizers
            set_condition(new, "Terminating", "True", "InstanceDeletionPending",
                           "CustomResourceDefinition marked for deletion; CustomResource "
                           "deletion will begin soon")
            nmeta["resourceVersion"] = str(self.store.next_rv())
            stored = self.store.put(rt.key, new, "MODIFIED", obj)
            return self._served(rt, copy.deepcopy(stored), version), False
        if rt.kind == "Namespace" and not nmeta.get("deletionTimestamp"):
            new.setdefault("status", {})["phase"] = "Terminating"
            finalizers = finalizers or []
            pending = bool((new.get("spec") or {}).get("finalizers"))
        else:
            pending = False
        if finalizers or pending:
            if nmeta.get("deletionTimestamp") and nmeta.get("finalizers") == finalizers:
                return self._served(rt, copy.deepcopy(obj), version), False
            nmeta["finalizers"] = finalizers
            if not finalizers:
                nmeta.pop("finalizers")
            if not nmeta.get("deletionTimestamp"):
                nmeta["deletionTimestamp"] = now_rfc3339()
                nmeta["deletionGracePeriodSeconds"] = 0
                if rt.generation:
                    nmeta["generation"] = int(nmeta.get("generation", 1)) + 1
            nmeta["resourceVersion"] = str(self.store.next_rv())
            stored = self.store.put(rt.key, new, "MODIFIED", obj)
            return self._served(rt, copy.deepcopy(stored), version), False
        final = self.store.remove(rt.key, new)
        if rt.kind == "CustomResourceDefinition":
            self._unregister(self.crd_rkey(final))
        return self._served(rt, final, version), True

    def orphan_dependents(self, uid: str) -> None:
        for rkey, obj in list(self.store.all_items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r.get("uid") == uid for r in refs):
                rt = self._types[rkey]
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                if not new["metadata"]["ownerReferences"]:
                    new["metadata"].pop("ownerReferences")
                self.update(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], new,
                            manager="garbage-collector")

    # -- CRDs ------------------------------------------------------------------------------
    def crd_terminating(self, rt: ResourceType) -> bool:
        crd = self.store.peek(CRD_KEY, ("", rt.crd_name)) if rt.crd_name else None
        return bool(crd and crd["metadata"].get("deletionTimestamp"))

    @staticmethod
    def allows_unconditional_update(rt: ResourceType) -> bool:
        """Whether a PUT may omit metadata.resourceVersion (the strategy's
        AllowUnconditionalUpdate): not for custom resources, CRDs or webhook configurations."""
        return not (rt.custom or rt.kind in UPDATE_NEEDS_RESOURCE_VERSION)

    @staticmethod
    def crd_rkey(crd: Obj) -> str:
        spec = crd.get("spec") or {}
        return f"{(spec.get('names') or {}).get('plural')}.{spec.get('group')}"

    def _establish(self, crd: Obj) -> Obj:
        """Serve the CRD's kind at once and report it Established, as the CRD controllers do."""
        rt = from_crd(crd)
        existing = self._types.get(rt.key)
        if existing is not None and not existing.custom:
            return crd
        self._register(rt)
        now = now_rfc3339()
        names = crd["spec"]["names"]
        stored_versions = sorted(set((crd.get("status") or {}).get("storedVersions") or [])
                                 | {rt.storage_version})
        status: dict[str, Any] = {
            "acceptedNames": {k: names[k] for k in ("plural", "singular", "kind", "listKind",
                                                    "shortNames", "categories") if k in names},
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "storedVersions": stored_versions,
        }
        status["acceptedNames"].setdefault("singular", rt.singular)
        status["acceptedNames"].setdefault("listKind", rt.kind + "List")
        old_status = crd.get("status") or {}
        if old_status.get("acceptedNames") == status["acceptedNames"] and old_status.get(
                "storedVersions") == stored_versions:
            return crd
        crt = self._types[CRD_KEY]
        new = copy.deepcopy(crd)
        new["status"] = status
        return self.update(crt, None, crd["metadata"]["name"], new, subresource="status",
                           manager="kube-apiserver")

    # -- listeners -------------------------------------------------------------------------
    def type_of(self, rkey: str) -> ResourceType | None:
        return self._types.get(rkey)
