"""GPU-only checks: NCCL, our FP8 kernels on CUDA, the Transformer Engine spec and its FP8.

Each test is marked `gpu` and skipped, with the reason, where CUDA (or Transformer Engine, or
FP8 tensor cores, or a second GPU) is missing: on the CPU CI all of them skip. Run them on a GPU
machine with `pytest -m gpu tests/test_gpu.py`.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from helpers import QUICKSTART, SCRATCH_RUN, TINY_MODEL, read_metrics, run_mdm

from megatron_mdm.config import load_config

HAS_CUDA = torch.cuda.is_available()
HAS_TE = importlib.util.find_spec("transformer_engine") is not None
FP8_CAPABLE = HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (NCCL, FP8 GEMMs, TE); none here"),
]
# Conditions beyond "no CUDA" (which skips the whole module), so that each skip names its reason.
needs_te = pytest.mark.skipif(HAS_CUDA and not HAS_TE, reason="transformer_engine is not installed")
needs_fp8 = pytest.mark.skipif(
    HAS_CUDA and not FP8_CAPABLE,
    reason="FP8 GEMMs need a GPU of compute capability >= 8.9 (Ada, Hopper)",
)
needs_two_gpus = pytest.mark.skipif(
    HAS_CUDA and torch.cuda.device_count() < 2, reason="tensor parallelism needs two GPUs"
)

STEPS = 2
RUN = [
    *TINY_MODEL,
    "train.micro_batch_size=8",
    "train.global_batch_size=8",
    f"train.max_steps={STEPS}",
    "train.warmup_steps=0",
    *SCRATCH_RUN,
]


def train(tmp_path, overrides, nproc=1):
    proc = run_mdm(["train", QUICKSTART, *RUN, *overrides, f"train.output_dir={tmp_path}"], nproc)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    return proc, records


@pytest.mark.parametrize("grad_format", ["e5m2", "e4m3"])
@needs_fp8
def test_fp8_kernels_on_cuda_match_reference(grad_format):
    from megatron_mdm.kernels.fp8_linear import FP8_DTYPES, fp8_linear, quantize
    from megatron_mdm.kernels.fp8_reference import fp8_linear_reference

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 37, 64, generator=g).bfloat16()  # 111 token rows: padded to 112
    w = (0.05 * torch.randn(96, 64, generator=g)).bfloat16()
    dy = torch.randn(3, 37, 96, generator=g).bfloat16()
    # The same FP8 codes and scale on both devices.
    q_cpu, inv_cpu = quantize(x, FP8_DTYPES["e4m3"])
    q_gpu, inv_gpu = quantize(x.cuda(), FP8_DTYPES["e4m3"])
    assert torch.equal(q_gpu.cpu().view(torch.uint8), q_cpu.view(torch.uint8))
    assert inv_gpu.item() == pytest.approx(inv_cpu.item(), rel=1e-6)

    def run(fn):
        xc = x.cuda().requires_grad_()
        wc = w.cuda().requires_grad_()
        y = fn(xc, wc, grad_format)
        y.backward(dy.cuda())
        return y.detach(), xc.grad, wc.grad

    for name, a, b in zip(("y", "dx", "dw"), run(fp8_linear), run(fp8_linear_reference)):
        assert a.is_cuda and a.dtype == torch.bfloat16, name
        # bf16 outputs; forward uses fast accumulation (cuBLASLt), hence a few bf16 ulps.
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=name)


def test_one_process_nccl_training(tmp_path):
    """One process on a GPU: DeepSpeed's NCCL init, megatron parallel state, bf16 steps."""
    proc, _ = train(tmp_path, ["train.precision=bf16"])
    assert "device=cuda" in proc.stdout + proc.stderr


@needs_fp8
def test_local_fp8_training_on_gpu(tmp_path):
    train(tmp_path, ["train.precision=fp8", "model.transformer_impl=local"])


@needs_te
def test_te_spec_builds_and_matches_local_forward(single_rank_world):
    from megatron.core.extensions.transformer_engine import TELayerNormColumnParallelLinear

    from megatron_mdm.model.builder import build_model
    from megatron_mdm.model.vocab import VocabLayout

    vocab = VocabLayout.build(100, None, 64, 1)
    logits = {}
    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1)).cuda()
    for impl in ("local", "transformer_engine"):
        cfg = load_config(
            None, [*TINY_MODEL, "train.precision=bf16", f"model.transformer_impl={impl}"]
        )
        model = build_model(cfg, vocab, on_gpu=True).cuda().eval()
        if impl == "transformer_engine":
            qkv = model.decoder.layers[0].self_attention.linear_qkv
            assert isinstance(qkv, TELayerNormColumnParallelLinear)
        with torch.no_grad():
            logits[impl] = model(tokens)[..., :100].float()
    # Same weights (init by global parameter name; TE's fused norm weights are ones like the
    # local norms), different kernels in bf16: close, not equal.
    err = (logits["transformer_engine"] - logits["local"]).norm() / logits["local"].norm()
    assert err.item() < 3e-2


@needs_te
@needs_fp8
@pytest.mark.parametrize("grad_format", ["e5m2", "e4m3"])
def test_te_fp8_training_steps(tmp_path, grad_format):
    train(
        tmp_path,
        [
            "train.precision=fp8",
            "model.transformer_impl=transformer_engine",
            f"train.fp8_grad_format={grad_format}",
        ],
    )


@needs_te
@needs_two_gpus
def test_te_sequence_parallel_matches_tp1(tmp_path):
    te = ["model.transformer_impl=transformer_engine", "train.precision=bf16"]
    # Sequence parallelism splits the sequence over TP ranks: no cropping to odd lengths.
    fixed = ["diffusion.var_len_prob=0"]
    _, want = train(tmp_path / "tp1", [*te, *fixed])
    _, got = train(
        tmp_path / "tp2_sp",
        [*te, *fixed, "parallel.tensor=2", "model.sequence_parallel=true"],
        nproc=2,
    )
    for a, b in zip(want, got):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-2), a["step"]


def test_block_mask_flex_attention_matches_sdpa():
    """Block diffusion on GPU: compiled flex_attention with a BlockMask (the local spec's path)
    against SDPA with the dense boolean mask (the reference), docs/design.md §11."""
    from megatron_mdm.model.attention_masks import block_diffusion_mask
    from megatron_mdm.model.sdpa_attention import masked_attention

    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, 256, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (
        torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
        for _ in range(2)
    )
    mask = block_diffusion_mask(128, 16, q.device)
    dense = masked_attention(q, k, v, mask, 0.125, backend="sdpa").float()
    flex = masked_attention(q, k, v, mask, 0.125, backend="flex").float()
    assert ((flex - dense).norm() / dense.norm()).item() < 1e-2


@needs_te
def test_te_block_diffusion_matches_local_forward(single_rank_world):
    """Transformer Engine's arbitrary-mask path on the [x_t; x_0] training layout and on the
    block-causal inference copy, against the local spec (bf16: close, not equal)."""
    from megatron_mdm.model.builder import build_model
    from megatron_mdm.model.vocab import VocabLayout

    vocab = VocabLayout.build(100, None, 64, 1)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, 100, (2, 16), generator=gen).cuda()
    xt = x0.masked_fill(torch.rand(2, 16, generator=gen).cuda() < 0.5, vocab.mask_id)
    out = {}
    for impl in ("local", "transformer_engine"):
        cfg = load_config(
            None,
            [
                *TINY_MODEL,
                "train.precision=bf16",
                f"model.transformer_impl={impl}",
                "model.objective=block",
                "diffusion.block_size=4",
            ],
        )
        model = build_model(cfg, vocab, on_gpu=True).cuda().eval()
        with torch.no_grad():
            out[impl] = (
                model(xt, clean_input_ids=x0)[..., :100].float(),
                model(x0)[..., :100].float(),
            )
    for te, local in zip(out["transformer_engine"], out["local"]):
        assert ((te - local).norm() / local.norm()).item() < 3e-2
