"""IsoFLOP scaling-law experiments: plan a sweep (`sweep`), run it (`runner`, `slurm_array`),
gather final validation losses (`results`), fit minima and power laws (`fit`), draw them
(`plot`). `tools/scaling_law.py` is the command line over these modules."""

from megatron_mdm.scaling.errors import ScalingLawError

__all__ = ["ScalingLawError"]
