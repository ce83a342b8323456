"""pytest fixtures; importable helpers live in helpers.py."""

from __future__ import annotations

import pytest
from helpers import free_port


@pytest.fixture(scope="session")
def single_rank_world():
    """torch.distributed (gloo, world 1) + megatron-core parallel state TP=PP=1, in-process."""
    import torch.distributed as dist

    from megatron_mdm.parallel.distributed import prepare_accelerator

    prepare_accelerator()
    from megatron.core import parallel_state as ps

    from megatron_mdm.parallel.cpu_compat import seed_model_parallel_rng

    if not dist.is_initialized():
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
        )
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(1, 1)
    seed_model_parallel_rng(1234)
    yield
