"""`python -m mgmt_gateway.ctl`: the same as the `outpostctl` console script."""

from .main import main

main()
