"""Custom kernels, each with a pure-torch reference that the tests use as the oracle.

Imported as `megatron_mdm.kernels` only: setup.py maps this folder there (`package_dir`), and
`tools/_checkout.py` registers it under that name when a tool runs from an uninstalled checkout.
Why the folder is top-level: kernels/README.md.
"""
