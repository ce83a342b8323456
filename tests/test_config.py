"""Config schema, YAML + override loading and validation. Fast, no torch (one test checks the
consumers of the choice tuples, which are torch modules, when torch is there)."""

import ast
import dataclasses
import inspect
import subprocess
import sys
import typing

import pytest

import megatron_mdm.config as config
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
    assert "unknown" in error(write(tmp_path, "trian: {}\n", "b.yaml"))  # codespell:ignore
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
    assert message.startswith(f"<defaults> (override {override}): {key}: must be one of")


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
        (["train.lr_decay_fraction=1.5"], "train.lr_decay_fraction"),
        (["train.max_nonfinite_steps=0"], "train.max_nonfinite_steps"),
        (["train.sample_interval=-1"], "train.sample_interval"),
        (["train.sample_length=0"], "train.sample_length"),
        (["train.sample_interval=5", "train.sample_length=128"], "train.sample_length"),
        (["logging.wandb=true", "logging.wandb_project=''"], "logging.wandb_project"),
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


# -- Literal choices ---------------------------------------------------------------------------


def _sections(cls=config.ExperimentConfig, prefix=""):
    """(dotted key, field, annotation) of every config key, nested sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _sections(hints[f.name], key)
        else:
            yield key, f, hints[f.name]


def _literal_fields():
    """{dotted key: choices} of every Literal field (optional ones included)."""
    found = {}
    for key, _, tp in _sections():
        for t in (tp, *typing.get_args(tp)):
            if typing.get_origin(t) is typing.Literal:
                found[key] = typing.get_args(t)
    return found


def test_literal_fields():
    assert _literal_fields() == {
        "model.objective": ("mdm", "arm", "block"),
        "model.transformer_impl": ("local", "transformer_engine"),
        "model.attention_backend": ("sdpa", "unfused"),
        "model.recompute": ("none", "full", "selective"),
        "model.logits": ("all", "masked"),
        "diffusion.t_sampling": ("uniform", "stratified"),
        "diffusion.loss": ("smdm", "mdlm"),
        "diffusion.block_t_sampling": ("sequence", "block"),
        "parallel.zero_stage": (0, 1, 2, 3),
        "train.precision": ("fp32", "bf16", "fp8"),
        "train.fp8_recipe": ("delayed", "current"),
        "train.fp8_grad_format": ("e5m2", "e4m3"),
        "data.validate": ("sample", "full"),
        "data.synthetic": ("standard", "small"),
        "train.lr_schedule": ("cosine", "wsd", "constant"),
        "train.nonfinite": ("skip", "stop"),
        "logging.wandb_mode": ("online", "offline"),
        "data.tokenizer.type": ("byte", "sentencepiece", "hf"),
        "sft.format": ("auto", "prompt_response", "chat", "gsm8k", "gsm8k_icot"),
        "sft.normalize": ("sequence", "token"),
        "sft.truncation": ("response", "prompt_left", "drop"),
        "sft.pad_to": ("max", "longest"),
    }
    # checkpoint.resume also takes a path, so it stays a plain str.
    assert typing.get_type_hints(config.CheckpointConfig)["resume"] is str


def test_every_literal_field_exports_its_choices():
    exported = {
        name: getattr(config, name)
        for name in config.__all__
        if name.isupper() and isinstance(getattr(config, name), tuple)
    }
    for key, choices in _literal_fields().items():
        assert choices in exported.values(), f"{key}: no exported tuple of {choices}"
    assert config.OBJECTIVES == ("mdm", "arm", "block")
    assert config.COMPARED_OBJECTIVES == ("mdm", "arm")
    assert config.ZERO_STAGES == (0, 1, 2, 3)


def test_choice_tuples_are_the_consumers_tuples():
    """The modules that consume a setting use the config's tuple, not a copy of it."""
    from megatron_mdm.model import families
    from megatron_mdm.scaling import results, sweep

    compared = config.COMPARED_OBJECTIVES
    assert results.OBJECTIVES is compared
    assert sweep.OBJECTIVES is compared and families.OBJECTIVES is compared
    pytest.importorskip("torch")
    from megatron_mdm.data import indexed_check, sft, tokenizers
    from megatron_mdm.diffusion import sft_loss

    assert indexed_check.DATA_VALIDATIONS is config.DATA_VALIDATIONS

    assert sft.SFT_FORMATS is config.SFT_FORMATS
    assert sft.TRUNCATION_POLICIES is config.TRUNCATION_POLICIES
    assert sft.PAD_TO is config.PAD_TO
    assert sft_loss.SFT_NORMALIZE is config.SFT_NORMALIZE
    assert tokenizers.TOKENIZER_TYPES is config.TOKENIZER_TYPES


def test_unknown_choice_from_yaml_is_one_line(tmp_path):
    path = write(tmp_path, "model:\n  objective: foo\n")
    assert error(path) == f"{path}: model.objective: must be one of mdm, arm, block, got 'foo'"
    path = write(tmp_path, "sft:\n  chat_template: {}\n  pad_to: shortest\n", "sft.yaml")
    assert error(path) == f"{path}: sft.pad_to: must be one of max, longest, got 'shortest'"


def test_unknown_choice_from_override_is_one_line(tmp_path):
    path = write(tmp_path, "model:\n  objective: arm\n")
    assert error(path, ["model.objective=foo"]) == (
        f"{path} (override model.objective=foo): model.objective: must be one of mdm, arm, block, "
        "got 'foo'"
    )
    assert error(path, ["train.fp8_recipe=lazy"]).endswith(
        "train.fp8_recipe: must be one of delayed, current, got 'lazy'"
    )
    assert load_config(path, ["train.fp8_recipe=null"]).train.fp8_recipe is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.objective=3", "model.objective: expected str, got 3"),
        ("train.fp8_recipe=[a]", "train.fp8_recipe: expected str or null, got ['a']"),
        ("parallel.zero_stage=true", "parallel.zero_stage: expected int, got True"),
        ("parallel.zero_stage='2'", "parallel.zero_stage: expected int, got '2'"),
        ("parallel.zero_stage=2.0", "parallel.zero_stage: expected int, got 2.0"),
        ("parallel.zero_stage=-1", "parallel.zero_stage: must be one of 0, 1, 2, 3, got -1"),
    ],
)
def test_choice_of_the_wrong_type(override, expected):
    assert error(None, [override]).endswith(expected)


def test_choice_checked_in_a_config_built_in_code():
    cfg = dataclasses.replace(ExperimentConfig(), source="code")
    cfg.model.objective = "gpt"
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value) == "code: model.objective: must be one of mdm, arm, block, got 'gpt'"
    assert info.value.key == "model.objective" and info.value.source == "code"


# -- each section validates itself --------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "key", "words"),
    [
        ("model:\n  init_std: .inf\n", "model.init_std", "must be finite"),
        ("diffusion:\n  eps: -0.1\n", "diffusion.eps", "must be in [0, 1)"),
        ("parallel:\n  tensor: 0\n", "parallel.tensor", "must be > 0"),
        ("train:\n  adam_beta2: 1.0\n", "train.adam_beta2", "must be in [0, 1)"),
        ("checkpoint:\n  resume: ''\n", "checkpoint.resume", "auto, none or a checkpoint"),
        ("logging:\n  peak_tflops: -1\n", "logging.peak_tflops", "must be > 0"),
        ("data:\n  num_workers: -2\n", "data.num_workers", "must be >= 0"),
        ("data:\n  tokenizer:\n    type: hf\n", "data.tokenizer.model", "required"),
        ("sft:\n  valid_fraction: 0.5\n  valid_data: v.jsonl\n", "sft.valid_fraction", "mutually"),
        ("sft:\n  chat_template:\n    message_format: x\n", "sft.chat_template.message_format",
         "{role}"),
    ],
)  # fmt: skip
def test_each_section_validates_its_fields(tmp_path, yaml_text, key, words):
    path = write(tmp_path, yaml_text)
    message = error(path)
    assert message.startswith(f"{path}: {key}: ") and words in message, message


def test_sections_check_themselves_and_the_experiment_checks_across():
    def fail(key, message):
        raise ConfigError(message, key=key)

    for section in (config.ModelConfig(), config.TrainConfig(), config.SFTConfig()):
        section.validate(fail)  # defaults pass
    with pytest.raises(ConfigError, match="model.num_layers"):
        config.ModelConfig(num_layers=0).validate(fail)
    # model.sequence_parallel needs parallel.tensor > 1: a rule across sections, not the model's.
    config.ModelConfig(sequence_parallel=True, transformer_impl="transformer_engine").validate(fail)
    cfg = ExperimentConfig()
    cfg.model.sequence_parallel, cfg.model.transformer_impl = True, "transformer_engine"
    with pytest.raises(ConfigError, match=r"^<defaults>: model.sequence_parallel: needs parallel"):
        cfg.validate()


def test_every_field_has_a_docstring():
    """The string literal under each field (the attribute-docstring convention)."""
    for cls in {type(f.default_factory()) for f in dataclasses.fields(ExperimentConfig)
                if f.metadata.get("key", True)} | {ExperimentConfig, config.TokenizerConfig,
                                          config.ChatTemplateConfig}:  # fmt: skip
        body = ast.parse(inspect.getsource(cls)).body[0].body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                after = body[i + 1] if i + 1 < len(body) else None
                documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                assert documented, f"{cls.__name__}.{node.target.id} has no docstring"


# -- the error, the file, the package ------------------------------------------------------------


def test_config_error_is_an_mdm_error():
    from megatron_mdm.utils import MDMError

    e = ConfigError("bad\n  value", source="x.yaml", key="model.objective")
    assert isinstance(e, MDMError) and isinstance(e, ValueError)
    assert str(e) == "x.yaml: model.objective: bad value"
    assert (e.source, e.key, e.message) == ("x.yaml", "model.objective", "bad\n  value")
    assert str(ConfigError("file not found", source="y.yaml")) == "y.yaml: file not found"


def test_dump_yaml_leaves_only_the_file(tmp_path):
    dump_yaml(ExperimentConfig(), str(tmp_path / "config.yaml"))
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_config_package_loads_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; import megatron_mdm.config as c; "
        "c.load_config(None); print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
