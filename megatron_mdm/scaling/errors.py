"""The one exception the scaling-law tools raise for bad input."""

from __future__ import annotations

from megatron_mdm.utils import MDMError


class ScalingLawError(MDMError):
    """A bad manifest, results file or fit input, reported by the command line as one line
    (``scaling_law.py fit: error: ...``, exit 2) instead of a traceback."""
