from tests.fixtures.kube import api, capi_api, kube, kubeconfig
from tests.fixtures.nats import nats_server

__all__ = ["api", "capi_api", "kube", "kubeconfig", "nats_server"]
