"""A real Kubernetes control plane for the testbed: binaries built from pinned Go modules,
their PKI and their launcher."""
