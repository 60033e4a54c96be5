import pytest

from tests.fixtures.kube import api, backend, capi_api, kube, kubeconfig, parametrize_backends
from tests.fixtures.nats import nats_server
from tests.fixtures.site import site

__all__ = ["api", "backend", "capi_api", "kube", "kubeconfig", "nats_server", "site"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_backends(metafunc)
