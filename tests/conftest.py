from tests.fixtures.kube import api, capi_api, kube, kubeconfig
from tests.fixtures.nats import nats_server
from tests.fixtures.site import site

__all__ = ["api", "capi_api", "kube", "kubeconfig", "nats_server", "site"]
