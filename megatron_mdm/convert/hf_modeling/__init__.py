"""The Hugging Face modeling code shipped inside exported checkpoints.

`configuration_mdm.py` and `modeling_mdm.py` are standalone (torch + transformers only): the
exporter copies `MODELING_FILES` verbatim next to `config.json` so that
`AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)` works without megatron-mdm.
megatron-mdm's own loaders (`inference.loading`) never run those copies: they use these installed
modules with the folder's config.json and safetensors.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELING_FILES = [HERE / "configuration_mdm.py", HERE / "modeling_mdm.py"]
