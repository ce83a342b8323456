"""Config schema, YAML + override loading and validation. Fast, no torch."""

import dataclasses

import pytest

from megatron_mdm.config import (
    ConfigError,
    ExperimentConfig,
    check_world_size,
    dump_yaml,
    from_dict,
    load_config,
    to_dict,
    validate,
)


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults():
    cfg = load_config(None)
    assert cfg == ExperimentConfig()
    assert cfg.source == "<defaults>"
    assert cfg.model.kv_groups == cfg.model.num_attention_heads
    assert cfg.model.ffn_size == 4 * cfg.model.hidden_size
    assert cfg.train.decay_steps == cfg.train.max_steps
    assert cfg.data.tokenizer.type == "byte"
    assert cfg.gradient_accumulation_steps(1) == 1


def test_yaml_and_overrides(tmp_path):
    path = write(
        tmp_path,
        """
model:
  num_layers: 8
  num_query_groups: 2
train:
  lr: 1e-3
  min_lr: 0
  micro_batch_size: 2
  global_batch_size: 16
data:
  tokenizer:
    type: sentencepiece
    model: tok.model
""",
    )
    cfg = load_config(
        path,
        [
            "train.min_lr=1e-4",
            "data.tokenizer.type=hf",
            "logging.tensorboard=false",
            "data.blend=[0.3, a, 0.7, b]",
            "model.vocab_size=null",
            "logging.peak_tflops=989",
        ],
    )
    assert cfg.source == path
    assert cfg.model.num_layers == 8
    assert cfg.model.kv_groups == 2
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.min_lr == 1e-4 and isinstance(cfg.train.min_lr, float)
    assert cfg.data.tokenizer.type == "hf"
    assert cfg.data.tokenizer.model == "tok.model"
    assert cfg.logging.tensorboard is False
    assert cfg.data.blend == [0.3, "a", 0.7, "b"]
    assert cfg.logging.peak_tflops == 989.0
    assert cfg.gradient_accumulation_steps(2) == 4


def test_float_from_string(tmp_path):
    # YAML 1.1 writers quote or mis-type exponent floats; float fields still take them.
    path = write(tmp_path, "train:\n  lr: '1e-4'\n  min_lr: '1.0e-5'\n")
    cfg = load_config(path, ["diffusion.eps=1e-4"])
    assert cfg.train.lr == 1e-4 and cfg.train.min_lr == 1e-5
    assert cfg.diffusion.eps == 1e-4


def test_empty_file_and_empty_section(tmp_path):
    assert load_config(write(tmp_path, "")) == ExperimentConfig()
    assert load_config(write(tmp_path, "model:\n", "b.yaml")) == ExperimentConfig()


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 1\n")
    message = error(path)
    assert path in message and "train.lrr" in message and "override" not in message
    assert "unknown" in error(write(tmp_path, "trian: {}\n", "b.yaml"))
    message = error(write(tmp_path, "data:\n  tokenizer:\n    typo: hf\n", "c.yaml"))
    assert "data.tokenizer.typo" in message


def test_unknown_key_in_override(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-3\n")
    message = error(path, ["train.lrr=1"])
    assert message.startswith(f"{path} (override train.lrr=1):")
    assert "unknown key train.lrr" in message
    assert "unknown key nosuch" in error(path, ["nosuch.x=1"])
    assert "model.num_layers.x" in error(path, ["model.num_layers.x=1"])
    assert "source" in error(path, ["source=x"])


def test_bad_override_syntax():
    assert "section.key=value" in error(None, ["train.lr"])
    assert "section.key=value" in error(None, ["=3"])
    assert "is a section" in error(None, ["data.tokenizer=hf"])


def test_file_errors(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    assert missing in error(missing)
    bad = write(tmp_path, "model: [1,\n", "bad.yaml")
    assert bad in error(bad) and "YAML" in error(bad)
    top = write(tmp_path, "- 1\n- 2\n", "top.yaml")
    assert "mapping" in error(top)
    assert "mapping" in error(write(tmp_path, "model: 3\n", "sec.yaml"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.num_layers=abc", "model.num_layers: expected int, got 'abc'"),
        ("model.num_layers=2.5", "model.num_layers: expected int, got 2.5"),
        ("model.num_layers=true", "model.num_layers: expected int, got True"),
        ("train.lr=fast", "train.lr: expected float, got 'fast'"),
        ("logging.progress=1", "logging.progress: expected bool, got 1"),
        ("model.vocab_size=x", "model.vocab_size: expected int or null, got 'x'"),
        ("data.split=[1, 2]", "data.split: expected str, got [1, 2]"),
        ("data.blend=a", "data.blend: expected list or null, got 'a'"),
    ],
)
def test_wrong_type(override, expected):
    assert expected in error(None, [override])


def test_wrong_type_in_file(tmp_path):
    path = write(tmp_path, "model:\n  num_layers: abc\n")
    assert error(path) == f"{path}: model.num_layers: expected int, got 'abc'"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.objective=ar", "model.objective"),
        ("model.transformer_impl=te", "model.transformer_impl"),
        ("diffusion.t_sampling=sobol", "diffusion.t_sampling"),
        ("diffusion.loss=l2", "diffusion.loss"),
        ("train.precision=fp16", "train.precision"),
        ("data.tokenizer.type=bpe", "data.tokenizer.type"),
        ("parallel.zero_stage=4", "parallel.zero_stage"),
    ],
)
def test_bad_choice(override, key):
    message = error(None, [override])
    assert message.startswith(f"<defaults>: {key}: must be one of")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.num_layers=0"], "model.num_layers"),
        (["model.hidden_size=250"], "model.hidden_size"),
        (["model.num_query_groups=3"], "model.num_query_groups"),
        (["diffusion.eps=1"], "diffusion.eps"),
        (["diffusion.var_len_prob=1.5"], "diffusion.var_len_prob"),
        (["parallel.pipeline=3"], "parallel.pipeline"),
        (["parallel.offload_optimizer=true"], "parallel.offload_optimizer"),
        (["train.global_batch_size=12"], "train.global_batch_size"),
        (["train.min_lr=1e-3"], "train.min_lr"),
        (["train.warmup_steps=101"], "train.warmup_steps"),
        (["train.lr_decay_steps=10", "train.warmup_steps=20"], "train.warmup_steps"),
        (["train.eval_interval=10"], "train.eval_iters"),
        (["checkpoint.keep_last=0"], "checkpoint.keep_last"),
        (["logging.interval=0"], "logging.interval"),
        (["data.split=1,2"], "data.split"),
        (["data.split=0,0,0"], "data.split"),
        (["data.blend=[1, a, 2]"], "data.blend"),
        (["data.blend=[a, 1]"], "data.blend"),
        (["data.blend=[1, a]", "data.text_file=x.txt"], "data.blend"),
        (["data.tokenizer.type=sentencepiece"], "data.tokenizer.model"),
    ],
)
def test_invalid_values(overrides, key):
    assert error(None, overrides).startswith(f"<defaults>: {key}:")


def test_tensor_must_divide_heads():
    message = error(
        None, ["model.num_attention_heads=6", "model.hidden_size=384", "parallel.tensor=4"]
    )
    assert "parallel.tensor" in message and "4" in message and "6" in message
    message = error(
        None, ["model.num_attention_heads=8", "model.num_query_groups=2", "parallel.tensor=4"]
    )
    assert "parallel.tensor" in message and "2" in message
    cfg = load_config(None, ["model.num_attention_heads=8", "parallel.tensor=4"])
    assert cfg.parallel.tensor == 4


def test_zero3_with_pipeline():
    message = error(None, ["parallel.zero_stage=3", "parallel.pipeline=2"])
    assert "ZeRO-2/3 cannot be combined with pipeline parallelism" in message
    assert "parallel.zero_stage" in message
    assert (
        load_config(None, ["parallel.zero_stage=1", "parallel.pipeline=2"]).parallel.pipeline == 2
    )
    assert load_config(None, ["parallel.zero_stage=3"]).parallel.zero_stage == 3


def test_fp8_with_either_transformer_impl():
    # local: kernels/ FP8 layers (their rejections: tests/test_fp8_kernels.py); TE: its fp8.
    assert load_config(None, ["train.precision=fp8"]).train.precision == "fp8"
    cfg = load_config(None, ["train.precision=fp8", "model.transformer_impl=transformer_engine"])
    assert cfg.train.precision == "fp8"


def test_round_trip(tmp_path):
    cfg = load_config(
        None,
        [
            "model.num_layers=6",
            "model.num_query_groups=2",
            "train.lr=3e-4",
            "train.lr_decay_steps=80",
            "data.blend=[1, a, 2.5, b]",
            "data.tokenizer.type=hf",
            "data.tokenizer.model=gpt2",
            "logging.peak_tflops=989.5",
            "checkpoint.resume=none",
        ],
    )
    path = str(tmp_path / "out" / "config.yaml")
    dump_yaml(cfg, path)
    assert not (tmp_path / "out" / "config.yaml.tmp").exists()
    again = load_config(path)
    assert again == cfg and again.source == path
    d = to_dict(cfg)
    assert "source" not in d and d["data"]["tokenizer"]["model"] == "gpt2"
    assert from_dict(d) == cfg
    assert from_dict(d, source="ckpt").source == "ckpt"


def test_from_dict_checks():
    with pytest.raises(ConfigError, match=r"^<dict>: unknown key model.layers"):
        from_dict({"model": {"layers": 2}})
    with pytest.raises(ConfigError, match=r"^<dict>: model.num_layers: expected int"):
        from_dict({"model": {"num_layers": "2"}})


def test_validate_config_built_in_code():
    cfg = ExperimentConfig()
    cfg.train.lr = "1e-4"
    with pytest.raises(ConfigError, match="train.lr: expected float"):
        validate(cfg)
    cfg = dataclasses.replace(ExperimentConfig(), source="code")
    cfg.model.num_layers = 3
    cfg.parallel.pipeline = 2
    with pytest.raises(ConfigError, match=r"^code: parallel.pipeline:"):
        validate(cfg)


def test_check_world_size():
    cfg = load_config(
        None,
        [
            "model.num_attention_heads=8",
            "parallel.tensor=2",
            "parallel.pipeline=2",
            "train.micro_batch_size=2",
            "train.global_batch_size=16",
        ],
    )
    assert check_world_size(cfg, 4) == 1
    assert check_world_size(cfg, 16) == 4
    assert cfg.gradient_accumulation_steps(4) == 2

    with pytest.raises(ConfigError) as info:
        check_world_size(cfg, 6)
    message = str(info.value)
    assert "parallel.tensor" in message and "parallel.pipeline" in message and "6" in message

    with pytest.raises(ConfigError) as info:
        check_world_size(cfg, 12)  # dp = 3: 16 % (2 * 3) != 0
    message = str(info.value)
    assert "train.global_batch_size" in message and "\n" not in message
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        cfg.gradient_accumulation_steps(3)
