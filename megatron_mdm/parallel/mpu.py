"""megatron-core's parallel state in the shape DeepSpeed's `mpu` argument expects.

DeepSpeed asks for "model parallel" (all of TP x PP: checkpoint file names, grad-norm reduction)
and "data parallel" groups by its own names; megatron-core names them differently.
"""

from __future__ import annotations

from megatron.core import parallel_state as ps


class MegatronMPU:
    """Passed to `deepspeed.initialize(mpu=...)`."""

    get_data_parallel_group = staticmethod(ps.get_data_parallel_group)
    get_data_parallel_rank = staticmethod(ps.get_data_parallel_rank)
    get_data_parallel_world_size = staticmethod(ps.get_data_parallel_world_size)
    get_tensor_model_parallel_group = staticmethod(ps.get_tensor_model_parallel_group)
    get_tensor_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
    get_tensor_model_parallel_world_size = staticmethod(ps.get_tensor_model_parallel_world_size)
    get_tensor_model_parallel_src_rank = staticmethod(ps.get_tensor_model_parallel_src_rank)
    get_pipeline_model_parallel_group = staticmethod(ps.get_pipeline_model_parallel_group)
    get_pipeline_model_parallel_rank = staticmethod(ps.get_pipeline_model_parallel_rank)
    get_pipeline_model_parallel_world_size = staticmethod(ps.get_pipeline_model_parallel_world_size)
    get_model_parallel_group = staticmethod(ps.get_model_parallel_group)

    @staticmethod
    def get_model_parallel_rank() -> int:
        return ps.get_pipeline_model_parallel_rank() * ps.get_tensor_model_parallel_world_size() + (
            ps.get_tensor_model_parallel_rank()
        )

    @staticmethod
    def get_model_parallel_world_size() -> int:
        return ps.get_tensor_model_parallel_world_size() * (
            ps.get_pipeline_model_parallel_world_size()
        )


class GradNormMPU(MegatronMPU):
    """View for DeepSpeed's `clip_grad_norm_`: de-duplicate replicated parameters by TP rank.

    DeepSpeed's engine-level clip counts a non-TP-sharded parameter only where the model-parallel
    rank is 0, which drops every later pipeline stage's norms; pipeline stages hold different
    parameters, so only tensor-parallel replicas are duplicates.
    """

    get_model_parallel_rank = staticmethod(ps.get_tensor_model_parallel_rank)
