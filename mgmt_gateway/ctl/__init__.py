"""`outpostctl`: the command line of the management plane, over the OutpostCluster resources.

It talks to the management cluster's API server with the user's kubeconfig, as clusterctl
does, never to the gateway: what it writes is the resource's spec (the same a `kubectl apply`
or a GitOps tool writes), and what it shows is the status the gateway reports.
"""
