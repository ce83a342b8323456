"""AR-to-MDM adaptation (docs/design.md §13.4-13.6): shifted prediction (`diffusion.shift`) in the
model, the losses, the export and the samplers; attention annealing
(`diffusion.attention_anneal_steps`): the per-step mask against its formula, its limits (causal at
step 0 = the ARM, bidirectional at step N = the plain MDM), and config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_MODEL, run_cli, tiny_config, tiny_model

from megatron_mdm.config import ConfigError, load_config
from megatron_mdm.data.batches import build_micro_batch
from megatron_mdm.model.attention_masks import lookahead_mask
from megatron_mdm.model.vocab import VocabLayout

SEQ = 16  # TINY_MODEL's seq_length
VOCAB = 100


def _cfg(*overrides):
    base = ["diffusion.var_len_prob=0", "train.micro_batch_size=1", "train.global_batch_size=4"]
    return load_config(None, [*TINY_MODEL, *base, *overrides])


def _build(cfg, vocab):
    from megatron_mdm.model.builder import build_model

    return build_model(cfg, vocab, on_gpu=False).eval()


class Tokens:
    """seq_length + 1 random token ids per index (keyed by index)."""

    def sample(self, i: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(1000 + i)
        return torch.randint(0, VOCAB, (SEQ + 1,), generator=gen).numpy()


def _vocab():
    return VocabLayout.build(VOCAB, None, 64, 1)


# --------------------------------------------------------------------------- shift


@pytest.mark.parametrize("loss", ["smdm", "mdlm"])
def test_shifted_loss_equals_an_independent_computation(single_rank_world, loss):
    """Position i is scored with the unshifted model's output at i - 1 (position 0: at 0); the
    loss recomputed from those outputs one token at a time, in float64."""
    from megatron_mdm.training.objective import loss_for

    vocab = _vocab()
    plain_cfg = _cfg(f"diffusion.loss={loss}", "diffusion.eps=0.2")
    shift_cfg = _cfg(f"diffusion.loss={loss}", "diffusion.eps=0.2", "diffusion.shift=true")
    plain, shifted = _build(plain_cfg, vocab), _build(shift_cfg, vocab)
    mb = build_micro_batch(shift_cfg, Tokens(), vocab.mask_id, 3, 0, [0, 1, 2, 3])
    assert mb.masked.any() and not mb.masked.all() and mb.masked[:, 0].any()
    with torch.no_grad():
        raw = plain(mb.inputs)
        got = shifted(mb.inputs)
        value = loss_for(shift_cfg, "pretrain")(got.clone(), mb).item()
    assert torch.equal(got[:, 1:], raw[:, :-1]) and torch.equal(got[:, 0], raw[:, 0])
    total = 0.0
    for j in range(4):
        p = mb.p_mask[j].item()
        weight = 1.0 / (p / (1 - 0.2) if loss == "mdlm" else p)
        for i in range(SEQ):
            if mb.masked[j, i]:
                logp = torch.log_softmax(raw[j, max(i - 1, 0)].double(), -1)
                total += -logp[mb.targets[j, i]].item() * weight
    assert value == pytest.approx(total / (4 * SEQ), rel=1e-5)


def test_shifted_export_gives_the_same_logits_and_samples(single_rank_world):
    """The hf model of a shift=true run (config `shift`) reproduces the training model's logits,
    so a sampler run on either gives the same tokens; and it is the unshifted hf model's output
    moved right by one."""
    from megatron_mdm.convert import layouts
    from megatron_mdm.diffusion.sampling import llada_sample, mdlm_sample
    from megatron_mdm.inference.loading import torch_model_from_canonical

    vocab = _vocab()
    cfg = _cfg("diffusion.shift=true")
    model = _build(cfg, vocab)
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    canonical = layouts.canonicalize_names(model.state_dict())
    meta = layouts.config_meta(cfg, vocab)
    hf = torch_model_from_canonical(canonical, shape, meta)
    assert hf.config.shift is True
    unshifted = torch_model_from_canonical(canonical, shape, {**meta, "shift": False})
    x = torch.from_numpy(np.stack([Tokens().sample(i)[:SEQ] for i in range(2)]))
    x[:, 5:11] = vocab.mask_id
    with torch.no_grad():
        ours = model(x)[..., : hf.config.vocab_size]
        theirs = hf(input_ids=x).logits
        plain = unshifted(input_ids=x).logits
    finite = torch.isfinite(theirs)
    assert torch.equal(finite, torch.isfinite(ours))
    assert (ours - theirs)[finite].abs().max().item() < 1e-5
    assert torch.equal(theirs[:, 1:], plain[:, :-1]) and torch.equal(theirs[:, 0], plain[:, 0])

    prompt = x[:, :4]
    for sample in (
        lambda fn: llada_sample(fn, prompt, vocab.mask_id, 8, 8, 4),
        lambda fn: mdlm_sample(fn, prompt, vocab.mask_id, 8, 4, generator=torch.Generator()),
    ):
        with torch.no_grad():
            a = sample(lambda ids: model(ids)[..., : hf.config.vocab_size])
            b = sample(lambda ids: hf(input_ids=ids).logits)
        assert torch.equal(a, b)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_fast_sampler_reads_the_previous_position(cache):
    """With a shifted model the block's first logits come from the position before it: a cached
    call over unchanged tokens must give the full forward's (shifted) logits on the block."""
    from megatron_mdm.diffusion.fast_sampling import BlockLogits

    model = tiny_model(tiny_config(shift=True))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 36, (2, 20), generator=gen)
    x[:, 12:] = 36
    prompt_index = torch.zeros_like(x, dtype=torch.bool)
    prompt_index[:, :8] = True
    start, end = 12, 16
    with torch.no_grad():
        full = model(input_ids=x).logits
        block = BlockLogits(model, cache, prompt_index, 0.0, 36, start, end)
        select = torch.zeros_like(x, dtype=torch.bool)
        select[:, start:end] = True  # the block's rows only
        block(x, 0, select)
        lo, _, logits = block(x, 1, select)
    assert lo == start - 1
    got = logits.view(2, end - start, -1)[..., :36]  # [MASK] (36) is -inf in both
    assert (got - full[:, start:end, :36]).abs().max().item() < 1e-5


def test_shift_config_errors():
    for objective in ("arm", "block"):
        extra = ["diffusion.block_size=4"] if objective == "block" else []
        with pytest.raises(ConfigError, match="diffusion.shift"):
            _cfg(f"model.objective={objective}", "diffusion.shift=true", *extra)
    with pytest.raises(ValueError, match="shift"):
        tiny_config(objective="arm", shift=True)


def test_shifted_model_exports_only_as_hf():
    from megatron_mdm.convert import layouts

    cfg = _cfg("diffusion.shift=true")
    vocab = _vocab()
    shape = layouts.ModelShape.from_config(cfg.model, vocab)
    meta = layouts.config_meta(cfg, vocab)
    assert layouts.hf_config(shape, meta)["shift"] is True
    for fmt in ("llada", "smdm"):
        with pytest.raises(layouts.LayoutError, match="diffusion.shift"):
            layouts.LAYOUTS[fmt].config_json(shape, meta)


# --------------------------------------------------------------------------- annealing


def brute_force_lookahead(length: int, step: int, n: int) -> torch.Tensor:
    """True = attend, from the definition: key j visible to query i iff j - i <= d(step),
    d = floor((L - 1) * step / N) while step < N; everything from step N on."""
    allowed = torch.zeros(length, length, dtype=torch.bool)
    for i in range(length):
        for j in range(length):
            if step >= n:
                allowed[i, j] = True
            else:
                allowed[i, j] = j - i <= ((length - 1) * step) // n
    return allowed


@pytest.mark.parametrize("n", [1, 3, 7, 40])
def test_anneal_mask_at_every_step_equals_the_formula(n):
    cfg = _cfg(f"diffusion.attention_anneal_steps={n}")
    for step in range(n + 3):
        d = cfg.diffusion.lookahead_at(step, SEQ)
        want = brute_force_lookahead(SEQ, step, n)
        if d is None:
            assert step >= n and bool(want.all())
            continue
        assert torch.equal(~lookahead_mask(SEQ, d, "cpu")[0, 0], want), step
        mb = build_micro_batch(cfg, Tokens(), VOCAB, step, 0, [0])
        assert mb.model_kwargs() == {"lookahead": d}
    assert cfg.diffusion.lookahead_at(0, SEQ) == 0  # step 0: causal
    assert torch.equal(~lookahead_mask(SEQ, 0, "cpu")[0, 0], torch.ones(SEQ, SEQ).tril().bool())
    assert build_micro_batch(cfg, Tokens(), VOCAB, n, 0, [0]).model_kwargs() == {}
    assert build_micro_batch(cfg, Tokens(), VOCAB, ("valid", 0), 0, [0]).lookahead is None


def test_anneal_limits_are_the_arm_and_the_mdm(single_rank_world):
    """Same weights: look-ahead 0 is the causal ARM; no look-ahead (step >= N) is the plain MDM
    bit for bit; look-ahead L - 1 (full mask) the plain MDM up to rounding; and a token j moves
    exactly the outputs i >= j - 2d (two layers, each reaching d positions further)."""
    vocab = _vocab()
    anneal = _build(_cfg("diffusion.attention_anneal_steps=10"), vocab)
    mdm = _build(_cfg(), vocab)
    arm = _build(_cfg("model.objective=arm"), vocab)
    x = torch.from_numpy(np.stack([Tokens().sample(i)[:SEQ] for i in range(2)]))
    real = slice(0, VOCAB)
    with torch.no_grad():
        assert (anneal(x, lookahead=0) - arm(x))[..., real].abs().max().item() < 1e-6
        assert torch.equal(anneal(x), mdm(x))
        assert (anneal(x, lookahead=SEQ - 1) - mdm(x))[..., real].abs().max().item() < 1e-6
        d, j = 3, 10
        base = anneal(x, lookahead=d)[..., real]
        x2 = x.clone()
        x2[:, j] = (x2[:, j] + 1) % VOCAB
        moved = (anneal(x2, lookahead=d)[..., real] - base).abs().amax(-1)
    assert moved[:, : j - 2 * d].max().item() == 0
    assert moved[:, j - 2 * d :].min().item() > 1e-6


def test_anneal_config_errors():
    with pytest.raises(ConfigError, match="diffusion.attention_anneal_steps"):
        _cfg("diffusion.attention_anneal_steps=-1")
    with pytest.raises(ConfigError, match="diffusion.attention_anneal_steps"):
        _cfg("model.objective=arm", "diffusion.attention_anneal_steps=5")


# --------------------------------------------------------------------------- recipes

# The shapes `train.init_from` fills in from the base model's config.json (§13.1).
SHAPES = {
    "qwen2-0.5b-dream.yaml": [
        "model.num_layers=24",
        "model.hidden_size=896",
        "model.num_attention_heads=14",
        "model.num_query_groups=2",
        "model.ffn_hidden_size=4864",
        "model.vocab_size=151936",
        "model.rotary_base=1000000",
        "model.norm_epsilon=1e-6",
    ],
    "llama3-8b-diffullama.yaml": [
        "model.num_layers=32",
        "model.hidden_size=4096",
        "model.num_attention_heads=32",
        "model.num_query_groups=8",
        "model.ffn_hidden_size=14336",
        "model.vocab_size=128256",
        "model.rotary_base=500000",
        "model.norm_epsilon=1e-5",
    ],
}
ADAPT_DIR = ROOT / "configs" / "adapt"


def test_every_adaptation_template_has_a_shape_here():
    assert sorted(p.name for p in ADAPT_DIR.glob("*.yaml")) == sorted(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_adaptation_templates_load_with_the_base_model_shape(name):
    from megatron_mdm.config import check_world_size

    path = ADAPT_DIR / name
    text = path.read_text()
    for key in ("num_layers", "hidden_size", "vocab_size", "tokenizer"):
        assert f"{key}:" not in text  # left to train.init_from
    cfg = load_config(str(path), SHAPES[name])
    assert cfg.model.objective == "mdm" and cfg.diffusion.shift
    assert cfg.train.init_from and check_world_size(cfg, 8) >= 1
    if "diffullama" in name:
        assert cfg.diffusion.attention_anneal_steps > 0


def test_config_show_reads_an_adaptation_template():
    name = "llama3-8b-diffullama.yaml"
    proc = run_cli("config", "show", str(ADAPT_DIR / name), *SHAPES[name])
    assert proc.returncode == 0, proc.stderr
    assert "attention_anneal_steps: 1000" in proc.stdout and "shift: true" in proc.stdout
