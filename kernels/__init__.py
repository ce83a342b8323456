"""Custom kernels, each with a pure-torch reference that the tests use as the oracle.

Installed as `megatron_mdm.kernels` (setup.py maps this folder), importable as `kernels` from a
source checkout.
"""
