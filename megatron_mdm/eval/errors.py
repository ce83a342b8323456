"""The one error type of the evaluations."""

from __future__ import annotations

from megatron_mdm.utils import MDMError


class EvalError(MDMError):
    """Bad input to an evaluation: one line naming the file, key or value at fault."""
