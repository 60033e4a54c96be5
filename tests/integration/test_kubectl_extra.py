"""Real kubectl against the emulated API: what a platform engineer sees on a real cluster."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.kube import eventually
from tests.integration.test_kubectl import Kubectl, kubectl

__all__ = ["kubectl"]  # the fixture, shared with test_kubectl

pytestmark = [pytest.mark.kubectl, pytest.mark.both_backends]

# A typical application bundle, CRD and one of its objects included, in one file.
BUNDLE = """
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: shop-api
  namespace: shop
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: shop-reader
rules:
- apiGroups: [""]
  resources: ["configmaps", "pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: shop-reader
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: shop-reader}
subjects:
- {kind: ServiceAccount, name: shop-api, namespace: shop}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: shop-config
  namespace: shop
data:
  settings.yaml: |
    level: info
---
apiVersion: v1
kind: Secret
metadata:
  name: shop-db
  namespace: shop
type: Opaque
stringData:
  password: s3cret
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop-api
  namespace: shop
  labels: {app: shop-api}
spec:
  replicas: 2
  selector:
    matchLabels: {app: shop-api}
  template:
    metadata:
      labels: {app: shop-api}
    spec:
      serviceAccountName: shop-api
      tolerations:
      - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}
      containers:
      - name: api
        image: registry.example.com/shop/api:1.4.2
        ports: [{name: http, containerPort: 8080}]
        volumeMounts: [{name: config, mountPath: /etc/shop}]
      volumes:
      - name: config
        configMap: {name: shop-config}
---
apiVersion: v1
kind: Service
metadata:
  name: shop-api
  namespace: shop
spec:
  selector: {app: shop-api}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: carts.shop.example.com
spec:
  group: shop.example.com
  scope: Namespaced
  names: {kind: Cart, plural: carts, singular: cart}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              items: {type: integer}
---
apiVersion: shop.example.com/v1
kind: Cart
metadata:
  name: cart-1
  namespace: shop
spec:
  items: 3
"""


async def test_bundle_with_crd_applies_as_on_a_real_cluster(kubectl: Kubectl) -> None:
    # The CR's kind is unknown until its CRD exists: kubectl reports it, applies the rest.
    rc, out, err = await kubectl.run("apply", "-f", "-", stdin=BUNDLE, check=False)
    assert rc != 0
    assert 'no matches for kind "Cart" in version "shop.example.com/v1"' in err
    assert "ensure CRDs are installed first" in err
    assert "deployment.apps/shop-api created" in out
    assert "customresourcedefinition.apiextensions.k8s.io/carts.shop.example.com created" in out
    await kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                      "crd/carts.shop.example.com")
    _, out, _ = await kubectl.run("apply", "-f", "-", stdin=BUNDLE)
    assert "cart.shop.example.com/cart-1 created" in out
    _, out, _ = await kubectl.run("apply", "-f", "-", stdin=BUNDLE)
    lines = out.strip().splitlines()
    # A Secret written with stringData is always "configured" by client-side apply (the live
    # object never holds stringData); everything else is unchanged.
    assert [ln for ln in lines if not ln.endswith(" unchanged")] == [
        "secret/shop-db configured"]
    assert len(lines) == 10

    _, out, _ = await kubectl.run("get", "all", "-A")
    assert "service/kubernetes" in out and "service/shop-api" in out
    svc = next(ln.split() for ln in out.splitlines() if "service/shop-api" in ln)
    assert svc[2] == "ClusterIP" and svc[5] == "80/TCP"
    assert "deployment.apps/shop-api   0/2" in out

    # kubectl replace fills in the live resourceVersion, which a custom resource requires.
    cart = BUNDLE.split("---")[-1].replace("items: 3", "items: 4")
    _, out, _ = await kubectl.run("replace", "-f", "-", stdin=cart)
    assert "cart.shop.example.com/cart-1 replaced" in out

    # Deleting the bundle deletes the CRD before its object. The CRD's finalizer deletes its
    # instances concurrently, so kubectl finds the object either still there (deleted) or
    # already gone (NotFound, exit 1): a real server allows both, and either way it goes.
    rc, out, err = await kubectl.run("delete", "-f", "-", stdin=BUNDLE, check=False)
    if 'cart.shop.example.com "cart-1" deleted' in out:
        assert rc == 0, err
    else:
        assert rc == 1
        assert err.strip().splitlines() == [
            'Error from server (NotFound): error when deleting "STDIN": '
            'carts.shop.example.com "cart-1" not found']
    assert 'customresourcedefinition.apiextensions.k8s.io "carts.shop.example.com" deleted' \
        in out
    for args in (("ns", "shop"), ("crd", "carts.shop.example.com"),
                 ("clusterrole", "shop-reader")):
        rc, _, err = await kubectl.run("get", *args, check=False)
        assert rc != 0 and "NotFound" in err


async def test_printed_columns_match_the_real_printers(kubectl: Kubectl) -> None:
    await kubectl.run("apply", "-f", "-", stdin=BUNDLE.split("---\napiVersion: apiext")[0])

    # The columns print the deployment's status, which a real deployment controller fills in
    # (updatedReplicas) as it creates the replica set: compare with the status as it is while
    # the table is printed. No pod is ever ready: there is no node to run it.
    async def printed_as_its_status() -> None:
        before = (await kubectl.json("get", "deploy", "shop-api", "-n",
                                     "shop")).get("status", {})
        _, out, _ = await kubectl.run("get", "deploy", "-n", "shop", "-o", "wide")
        after = (await kubectl.json("get", "deploy", "shop-api", "-n",
                                    "shop")).get("status", {})
        assert before == after, "the status changed while the table was printed"
        header, row = out.splitlines()[:2]
        assert header.split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE",
                                  "CONTAINERS", "IMAGES", "SELECTOR"]
        assert row.split()[1:4] == [f"{after.get('readyReplicas', 0)}/2",
                                    str(after.get("updatedReplicas", 0)),
                                    str(after.get("availableReplicas", 0))]
        assert row.split()[1] == "0/2" and row.split()[3] == "0"
        assert row.split()[5:] == ["api", "registry.example.com/shop/api:1.4.2",
                                   "app=shop-api"]

    await eventually(printed_as_its_status, interval=0.2)
    _, out, _ = await kubectl.run("get", "svc", "-A", "-o", "wide")
    assert out.splitlines()[0].split() == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP",
                                           "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    kube_svc = next(ln.split() for ln in out.splitlines() if " kubernetes " in ln)
    assert kube_svc[2:6] == ["ClusterIP", "10.96.0.1", "<none>", "443/TCP"]
    _, out, _ = await kubectl.run("get", "sa", "-A")
    assert {tuple(ln.split()[:2]) for ln in out.splitlines()[1:]} >= {
        ("default", "default"), ("kube-system", "default"), ("shop", "shop-api")}
    _, out, _ = await kubectl.run("get", "clusterrolebinding", "shop-reader", "-o", "wide")
    assert out.splitlines()[1].split()[1] == "ClusterRole/shop-reader"
    assert out.splitlines()[1].split()[-1] == "shop/shop-api"
    event = ("apiVersion: v1\nkind: Event\nmetadata: {name: shop-api.1, namespace: shop}\n"
             "involvedObject: {kind: Deployment, name: shop-api, namespace: shop}\n"
             "reason: ScalingReplicaSet\nmessage: Scaled up replica set shop-api-5d9 to 2\n"
             "type: Normal\nsource: {component: deployment-controller}\n")
    await kubectl.run("create", "-f", "-", stdin=event)
    _, out, _ = await kubectl.run("get", "events", "-A")
    header, *rows = out.splitlines()
    assert header.split() == ["NAMESPACE", "LAST", "SEEN", "TYPE", "REASON", "OBJECT",
                              "MESSAGE"]
    # A real cluster's controllers record events of their own: find the one created here.
    row = next(r for r in rows if r.endswith("Scaled up replica set shop-api-5d9 to 2"))
    assert row.split()[:5] == ["shop", "<unknown>", "Normal", "ScalingReplicaSet",
                               "deployment/shop-api"]
    # A number where a ConfigMap holds strings is refused, as Go's decoder refuses it.
    bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad, namespace: shop}\n" \
          "data: {port: 8080}\n"
    rc, _, err = await kubectl.run("apply", "-f", "-", stdin=bad, check=False)
    assert rc != 0 and "BadRequest" in err
    assert "cannot unmarshal number into Go struct field ConfigMap.data of type string" in err


async def test_namespace_termination_waits_for_finalizers(kubectl: Kubectl) -> None:
    await kubectl.run("create", "namespace", "held")
    await kubectl.run("apply", "-f", "-", stdin=(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pinned\n  namespace: held\n"
        "  finalizers: [example.com/pin]\n"))
    rc, _, err = await kubectl.run("delete", "ns", "held", "--timeout=1s", check=False)
    assert rc != 0 and "timed out" in err
    # Labelling a terminating namespace does not end it early.
    await kubectl.run("label", "ns", "held", "stuck=yes")

    # The namespace controller reports what holds the namespace (a real one asynchronously).
    async def reported() -> None:
        ns = await kubectl.json("get", "ns", "held")
        assert ns["status"]["phase"] == "Terminating"
        conds = {c["type"]: c for c in ns["status"].get("conditions") or []}
        assert "NamespaceFinalizersRemaining" in conds, conds
        assert conds["NamespaceContentRemaining"]["status"] == "True"
        assert conds["NamespaceFinalizersRemaining"]["message"] == (
            "Some content in the namespace has finalizers remaining: example.com/pin in 1 "
            "resource instances")

    await eventually(reported, interval=0.2)
    rc, _, err = await kubectl.run("create", "configmap", "late", "-n", "held", check=False)
    assert rc != 0 and "being terminated" in err
    await kubectl.run("patch", "configmap", "pinned", "-n", "held", "--type=json",
                      "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    await kubectl.run("wait", "--for=delete", "ns/held", "--timeout=60s")


async def test_crd_deletion_waits_for_its_objects(kubectl: Kubectl) -> None:
    crd, cart = BUNDLE.split("---")[-2:]
    await kubectl.run("create", "namespace", "shop")
    await kubectl.run("apply", "-f", "-", stdin=crd)
    await kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                      "crd/carts.shop.example.com")
    pinned = cart.replace("  namespace: shop\n",
                          "  namespace: shop\n  finalizers: [shop.example.com/checkout]\n")
    await kubectl.run("apply", "-f", "-", stdin=pinned)
    await kubectl.run("delete", "crd", "carts.shop.example.com", "--wait=false")
    got = await kubectl.json("get", "crd", "carts.shop.example.com")
    conds = {c["type"]: c["status"] for c in got["status"]["conditions"]}
    assert conds["Terminating"] == "True"
    assert got["metadata"]["finalizers"] == ["customresourcecleanup.apiextensions.k8s.io"]
    # Its objects are still served, being deleted; new ones are refused.
    cart_obj = await kubectl.json("get", "carts", "cart-1", "-n", "shop")
    assert cart_obj["metadata"]["deletionTimestamp"]
    rc, _, err = await kubectl.run("create", "-f", "-", check=False,
                                   stdin=cart.replace("cart-1", "cart-2"))
    assert rc != 0 and "create not allowed while custom resource definition is " \
                       "terminating" in err
    await kubectl.run("patch", "cart", "cart-1", "-n", "shop", "--type=merge",
                      "-p", '{"metadata":{"finalizers":null}}')
    await kubectl.run("wait", "--for=delete", "crd/carts.shop.example.com", "--timeout=60s")
    rc, _, err = await kubectl.run("get", "carts", "-A", check=False)
    assert rc != 0  # NotFound, or unknown to discovery once kubectl's cache is refreshed


async def test_auth_reviews_answer_for_the_cluster_admin(kubectl: Kubectl) -> None:
    _, out, _ = await kubectl.run("auth", "can-i", "create", "deployments", "-n", "default")
    assert out.strip() == "yes"
    # Both backends know the testbed's administrator by one name (the real one from its
    # client certificate's CN, in group system:masters).
    _, out, _ = await kubectl.run("auth", "whoami", "-o", "json")
    user = json.loads(out)["status"]["userInfo"]
    assert user["username"] == "outpost-admin"
    assert set(user["groups"]) == {"system:masters", "system:authenticated"}
    rc, _, err = await kubectl.run("get", "selfsubjectaccessreviews", check=False)
    assert rc != 0 and "MethodNotAllowed" in err
