"""Controllers every real cluster runs beside the apiserver: garbage collector and namespaces.

They run asynchronously after writes, as kube-controller-manager's do, so clients see the same
eventual (not instant) cascading deletion a real cluster gives them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

from ..controlplane.pki import make_ca, pem
from .errors import ApiError
from .registry import CRD_CLEANUP, CRD_KEY, NS_KEY, Registry, set_condition
from .resources import ResourceType
from .store import Event, Obj
from .sweeper import Sweeper

log = logging.getLogger(__name__)

ROOT_CA = "kube-root-ca.crt"
ROOT_CA_DOC = ("Contains a CA bundle that can be used to verify the kube-apiserver when using "
               "internal endpoints such as the internal service IP or kubernetes.default.svc. "
               "No other usage is guaranteed across distributions of Kubernetes clusters.")


class ClusterControllers(Sweeper):
    name = "garbage-collector"

    def __init__(self, registry: Registry, delay: float = 0.02) -> None:
        super().__init__(registry, delay)
        now = datetime.now(UTC)
        _, ca = make_ca("outpost-testbed-ca", now - timedelta(minutes=5),
                        now + timedelta(days=3650))
        self._root_ca = {"ca.crt": pem(ca).decode()}
        registry.store.subscribe(self._on_event)
        for ns in list(registry.store.items(NS_KEY)):  # the namespaces the cluster started with
            self._fill_namespace(ns["metadata"]["name"])

    def _on_event(self, ev: Event) -> None:
        self.wake()
        if ev.type == "ADDED" and ev.rkey == NS_KEY:
            self._fill_namespace(ev.obj["metadata"]["name"])

    def _fill_namespace(self, ns: str) -> None:
        """What kube-controller-manager puts in every namespace: the `default` ServiceAccount
        and the cluster's CA bundle in the `kube-root-ca.crt` ConfigMap (the emulator serves
        plain HTTP, so its CA signs nothing; clients only see that it is there)."""
        sa = self.registry.type_for("", "v1", "serviceaccounts")
        with contextlib.suppress(ApiError):
            self.registry.create(sa, ns, {"metadata": {"name": "default"}},
                                 manager="kube-controller-manager")
        self._publish_root_ca(ns)

    def _publish_root_ca(self, ns: str) -> None:
        cm = self.registry.type_for("", "v1", "configmaps")
        current = self.registry.store.peek(cm.key, (ns, ROOT_CA))
        if current is not None and current.get("data") == self._root_ca:
            return
        with contextlib.suppress(ApiError):
            if current is None:
                self.registry.create(cm, ns, {"metadata": {
                    "name": ROOT_CA, "annotations": {"kubernetes.io/description": ROOT_CA_DOC}},
                    "data": self._root_ca}, manager="kube-controller-manager")
            else:
                self.registry.update(cm, ns, ROOT_CA, {**current, "data": self._root_ca},
                                     manager="kube-controller-manager")

    def sweep(self) -> None:
        """One pass: collect orphans, finish foreground deletions, empty terminating namespaces."""
        reg = self.registry
        store = reg.store
        dependents: dict[str, list[tuple[str, Obj]]] = {}
        for rkey, obj in list(store.all_items()):
            for ref in obj["metadata"].get("ownerReferences") or []:
                dependents.setdefault(ref.get("uid", ""), []).append((rkey, obj))
        for rkey, obj in list(store.all_items()):
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and not meta.get("deletionTimestamp"):
                alive = [r for r in refs if self._owner_alive(r, meta.get("namespace", ""))]
                if not alive:
                    self._delete(rkey, obj, "Background")
                elif len(alive) != len(refs):
                    self._set_owner_refs(rkey, obj, alive)
            if meta.get("deletionTimestamp") and "foregroundDeletion" in (
                    meta.get("finalizers") or []):
                self._foreground(rkey, obj, dependents.get(meta["uid"], []))
        for ns in list(store.items(NS_KEY)):
            if ns["metadata"].get("deletionTimestamp"):
                self._terminate_namespace(ns)
            else:  # the root CA publisher puts back a bundle deleted or edited by hand
                self._publish_root_ca(ns["metadata"]["name"])
        for crd in list(store.items(CRD_KEY)):
            if crd["metadata"].get("deletionTimestamp") and CRD_CLEANUP in (
                    crd["metadata"].get("finalizers") or []):
                self._finalize_crd(crd)

    def _owner_alive(self, ref: dict[str, object], ns: str) -> bool:
        """Whether an ownerReference resolves, judged as the real collector judges it: the owner
        is looked up by kind and name (in the dependent's namespace when the owner's kind is
        namespaced) and must carry the referenced uid. A deleted-and-recreated owner with the
        same name, or a namespaced owner in another namespace, is absent."""
        reg = self.registry
        rt = reg.type_by_kind(str(ref.get("apiVersion", "")), str(ref.get("kind", "")))
        if rt is None:
            return True  # an owner kind that cannot be resolved is retried, never collected
        if rt.namespaced and not ns:
            return True  # a cluster-scoped dependent of a namespaced owner is left alone
        owner = reg.store.peek(rt.key, (ns if rt.namespaced else "", str(ref.get("name", ""))))
        return owner is not None and owner["metadata"]["uid"] == ref.get("uid")

    def _delete(self, rkey: str, obj: Obj, policy: str) -> None:
        rt = self.registry.type_of(rkey)
        if rt is None:
            return
        with contextlib.suppress(ApiError):
            self.registry.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                 propagation=policy)

    def _set_owner_refs(self, rkey: str, obj: Obj, refs: list[dict[str, object]]) -> None:
        rt = self.registry.type_of(rkey)
        if rt is None:
            return
        new = copy.deepcopy(obj)
        new["metadata"]["ownerReferences"] = refs
        with contextlib.suppress(ApiError):
            self.registry.update(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                 new, manager="garbage-collector")

    def _remove_finalizer(self, rkey: str, obj: Obj, finalizer: str) -> None:
        rt = self.registry.type_of(rkey)
        if rt is None:
            return
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [
            f for f in new["metadata"].get("finalizers") or [] if f != finalizer]
        with contextlib.suppress(ApiError):
            self.registry.update(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                 new, manager="garbage-collector")

    def _foreground(self, rkey: str, obj: Obj, deps: list[tuple[str, Obj]]) -> None:
        blocking = False
        for drkey, dep in deps:
            current = self.registry.store.peek(
                drkey, (dep["metadata"].get("namespace", ""), dep["metadata"]["name"]))
            if current is None:
                continue
            ref = next((r for r in current["metadata"].get("ownerReferences") or []
                        if r.get("uid") == obj["metadata"]["uid"]), None)
            if ref is None:
                continue
            if ref.get("blockOwnerDeletion"):
                blocking = True
            if not current["metadata"].get("deletionTimestamp"):
                self._delete(drkey, current, "Foreground")
        if not blocking:
            self._remove_finalizer(rkey, obj, "foregroundDeletion")

    def _finalize_crd(self, crd: Obj) -> None:
        """The CRD finalizer: delete every instance, wait for them to go (their own finalizers
        may hold them), then release the CRD, which stops serving the kind."""
        reg = self.registry
        rt = reg.type_of(reg.crd_rkey(crd))
        remaining: list[Obj] = []
        if rt is not None and rt.custom:
            for obj in list(reg.store.items(rt.key)):
                if not obj["metadata"].get("deletionTimestamp"):
                    self._delete(rt.key, obj, "Background")
            remaining = list(reg.store.items(rt.key))
        name = crd["metadata"]["name"]
        crt = reg.type_for("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        new = copy.deepcopy(crd)
        if remaining:
            set_condition(new, "Terminating", "True", "InstanceDeletionInProgress",
                           "CustomResource deletion is in progress")
        else:
            set_condition(new, "Terminating", "False", "InstanceDeletionCompleted",
                           "removed all instances")
        with contextlib.suppress(ApiError):
            if new.get("status") != crd.get("status"):
                reg.update(crt, None, name, new, subresource="status",
                           manager="apiextensions-apiserver")
            if remaining:
                return
            current = reg.store.peek(CRD_KEY, ("", name))
            if current is None:
                return
            new = copy.deepcopy(current)
            new["metadata"]["finalizers"] = [
                f for f in new["metadata"].get("finalizers") or [] if f != CRD_CLEANUP]
            reg.update(crt, None, name, new, manager="apiextensions-apiserver")

    def _terminate_namespace(self, ns: Obj) -> None:
        name = ns["metadata"]["name"]
        store = self.registry.store
        namespaced = [rt for rt in self.registry.types() if rt.namespaced]
        issued = 0
        for rt in namespaced:
            for obj in list(store.items(rt.key, name)):
                if not obj["metadata"].get("deletionTimestamp"):
                    self._delete(rt.key, obj, "Background")
                    issued += 1
        left: Counter[str] = Counter()
        held: Counter[str] = Counter()
        for rt in namespaced:
            for obj in store.items(rt.key, name):
                left[rt.qualified_resource] += 1
                held.update(obj["metadata"].get("finalizers") or [])
        ns_rt = self.registry.type_for("", "v1", "namespaces")
        with contextlib.suppress(ApiError):
            self._namespace_conditions(ns_rt, name, left, held)
        if left or issued:  # the namespace is finalized on a later pass, once seen empty
            return
        current = store.peek(NS_KEY, ("", name))
        if current is None:
            return
        with contextlib.suppress(ApiError):
            if (current.get("spec") or {}).get("finalizers"):
                new = copy.deepcopy(current)
                new["spec"]["finalizers"] = []
                self.registry.update(ns_rt, None, name, new, manager="namespace-controller")
            current = store.peek(NS_KEY, ("", name))
            if current is not None and not current["metadata"].get("finalizers"):
                store.remove(NS_KEY, copy.deepcopy(current))

    def _namespace_conditions(self, ns_rt: ResourceType, name: str, left: Counter[str],
                              held: Counter[str]) -> None:
        """The conditions the namespace controller reports while it empties a namespace."""
        current = self.registry.store.peek(NS_KEY, ("", name))
        if current is None:
            return
        new = copy.deepcopy(current)
        for ctype, reason, message in (
            ("NamespaceDeletionDiscoveryFailure", "ResourcesDiscovered",
             "All resources successfully discovered"),
            ("NamespaceDeletionGroupVersionParsingFailure", "ParsedGroupVersions",
             "All legacy kube types successfully parsed"),
            ("NamespaceDeletionContentFailure", "ContentDeleted",
             "All content successfully deleted, may be waiting on finalization"),
        ):
            set_condition(new, ctype, "False", reason, message)
        if left:
            set_condition(new, "NamespaceContentRemaining", "True", "SomeResourcesRemain",
                          "Some resources are remaining: " + ", ".join(
                              f"{r} has {n} resource instances" for r, n in sorted(left.items())))
        else:
            set_condition(new, "NamespaceContentRemaining", "False", "ContentRemoved",
                          "All content successfully removed")
        if held:
            set_condition(new, "NamespaceFinalizersRemaining", "True", "SomeFinalizersRemain",
                          "Some content in the namespace has finalizers remaining: " + ", ".join(
                              f"{f} in {n} resource instances" for f, n in sorted(held.items())))
        else:
            set_condition(new, "NamespaceFinalizersRemaining", "False", "ContentHasNoFinalizers",
                          "All content-preserving finalizers finished")
        if new.get("status") != current.get("status"):
            self.registry.update(ns_rt, None, name, new, subresource="status",
                                 manager="namespace-controller")
