"""The typed config: every shipped config validates; typos and contradictions are named errors."""

import re
from pathlib import Path

import pytest

from phinetune.config import load_config
from phinetune.errors import ConfigError
from phinetune.models.specs import get_spec

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + [ROOT / "src/phinetune/assets/default.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    spec = get_spec(cfg.model.name, cfg.model.spec)
    assert spec.key != "generic", f"{path.name} names a model phinetune has no spec for"
    if isinstance(cfg.adapter.targets, str):
        assert cfg.adapter.targets in spec.lora_presets


def test_shipped_configs_cover_every_model_and_method():
    pairs = {(load_config(p).model.name, load_config(p).model.quant) for p in SHIPPED}
    for hub_id in [
        "microsoft/phi-2",
        "microsoft/Phi-3-mini-4k-instruct",
        "microsoft/Phi-3.5-mini-instruct",
        "microsoft/Phi-3.5-MoE-instruct",
        "microsoft/Phi-4-mini-instruct",
        "microsoft/phi-4",
        "microsoft/Phi-4-reasoning",
        "microsoft/Phi-4-reasoning-plus",
        "microsoft/Phi-4-mini-reasoning",
        "microsoft/Phi-3-medium-4k-instruct",
        "microsoft/Phi-3-medium-128k-instruct",
    ]:
        assert (hub_id, "none") in pairs and (hub_id, "nf4") in pairs, hub_id


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'train.learnig_rate'; did you mean 'train.learning_rate'"):
        load_config(None, ["train.learnig_rate=2e-5"])


def test_unknown_section_suggests_section():
    with pytest.raises(ConfigError, match=r"'modle'; did you mean 'model'"):
        load_config(None, ["modle.name=x"])


def test_unknown_key_in_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("adapter:\n  rank: 8\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: unknown key 'adapter.rank'; did you mean 'adapter.r'"):
        load_config(bad)


def test_wrong_type_names_field_and_value():
    with pytest.raises(ConfigError, match=r"'train.batch_size'.*'many'"):
        load_config(None, ["train.batch_size=many"])


def test_contradiction_full_finetune_of_4bit_weights():
    with pytest.raises(ConfigError, match="cannot train 4-bit weights"):
        load_config(None, ["model.quant=nf4", "adapter.method=full"])


def test_overrides_are_typed():
    cfg = load_config(
        None, ["train.learning_rate=2e-5", "data.packing=false", "adapter.modules_to_save=[embed_tokens, lm_head]"]
    )
    assert cfg.train.learning_rate == 2e-5 and cfg.data.packing is False
    assert cfg.adapter.modules_to_save == ["embed_tokens", "lm_head"]


def test_override_without_equals_is_explained():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.learning_rate"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_invalid_yaml_names_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("train:\n  learning_rate: [1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        load_config(bad)


def test_defaults_follow_the_seeds():
    cfg = load_config(None)
    assert (cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.dropout) == (16, 16, 0.05)
    assert cfg.train.learning_rate == 1e-4 and cfg.train.warmup_ratio == 0.1 and cfg.train.scheduler == "linear"
    assert cfg.data.max_length == 512 and cfg.model.trust_remote_code is False


@pytest.mark.parametrize(
    "theirs,ours",
    [
        ("train.lr", "train.learning_rate"),
        ("adapter.lora_r", "adapter.r"),
        ("adapter.target_modules", "adapter.targets"),
        ("train.gradient_accumulation_steps", "train.grad_accum"),
    ],
)
def test_names_from_other_toolkits_point_to_ours(theirs, ours):
    with pytest.raises(ConfigError, match=f"did you mean '{ours}'"):
        load_config(None, [f"{theirs}=1"])


# The tiny model of the same architecture as each spec (same module and parameter names).
TINY_FOR_SPEC = {
    "phi2": "tiny-phi2",
    "phi3-mini-4k": "tiny-phi3",
    "phi3-mini-128k": "tiny-phi3",
    "phi3.5-mini": "tiny-phi3",
    "phi3.5-moe": "tiny-phimoe",
    "phi4-mini": "tiny-phi4",
    "phi4": "tiny-phi4-14b",
    "phi4-reasoning": "tiny-phi4-reasoning",
    "phi4-reasoning-plus": "tiny-phi4-reasoning",
    "phi4-mini-reasoning": "tiny-phi4-mini-reasoning",
    "phi3-medium-4k": "tiny-phi3-medium",
    "phi3-medium-128k": "tiny-phi3-medium",
}


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    from phinetune.models.loading import materialize_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {name: materialize_tiny(name, folder=root) for name in set(TINY_FOR_SPEC.values())}


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.parent.name == "configs"], ids=lambda p: p.name)
def test_every_shipped_adapter_config_applies_to_its_architecture(path, tiny_folders):
    """The shipped targets, dropout and token settings work on a model with the real module names."""
    from phinetune.models.loading import choose_dtype, load_model, load_tokenizer
    from phinetune.train.adapter import apply_adapter, trainable_counts

    cfg = load_config(path)
    spec = get_spec(cfg.model.name, cfg.model.spec)
    folder = str(tiny_folders[TINY_FOR_SPEC[spec.key]])
    model_cfg = cfg.model.model_copy(update={"name": folder, "quant": "none", "gradient_checkpointing": False})
    tokenizer = load_tokenizer(folder, model_cfg, spec)
    model = load_model(folder, model_cfg, spec, tokenizer, choose_dtype("fp32", spec))
    peft_model = apply_adapter(model, spec, cfg.adapter, model_cfg, tokenizer, cfg.preflight)
    trainable, total = trainable_counts(peft_model)
    assert 0 < trainable < total


@pytest.mark.parametrize(
    "item,hint",
    [
        ("lr=1e-3", "train.learning_rate"),
        ("lora_r=8", "adapter.r"),
        ("target_modules=[qkv_proj]", "adapter.targets"),
        ("load_in_4bit=true", "model.quant=nf4"),
        ("adapter.quant=nf4", "model.quant"),
        ("epochs=3", "train.epochs"),
        ("train.max_length=128", "data.max_length"),
        ("learnig_rate=1", "train.learning_rate"),
        # a value given as a key, and dotted keys without their section or with '_'
        ("bf16=true", "model.dtype=bf16"),
        ("train.bf16=true", "model.dtype=bf16"),
        ("qlora=true", "model.quant=nf4"),
        ("cosine=true", "train.scheduler=cosine"),
        ("max_lenght=64", "data.max_length"),
        ("data_max_length=64", "data.max_length"),
        ("model_name=x", "model.name"),
    ],
)
def test_foreign_and_misplaced_names_point_to_ours_without_a_section(item, hint):
    with pytest.raises(ConfigError, match=re.escape(f"did you mean '{hint}'")):
        load_config(None, [item])


def test_error_names_where_the_value_came_from(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  name: tiny-phi3\ntrain:\n  batch_size: 4\n  learnig_rate: 1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{cfg}:5: unknown key 'train.learnig_rate'")):
        load_config(cfg)
    with pytest.raises(ConfigError, match=re.escape("command line (train.batch_size=many): 'train.batch_size'")) as err:
        load_config(cfg, ["train.batch_size=many"])
    blamed = [line for line in str(err.value).splitlines() if "train.batch_size" in line]
    assert blamed and not any(f"{cfg}:" in line for line in blamed)  # the file is not blamed for a command-line value
    with pytest.raises(ConfigError, match=re.escape("command line (modle.name=x): unknown key 'modle'")):
        load_config(cfg, ["modle.name=x"])


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """PyYAML keeps the later of two equal keys silently; the loader names both lines instead."""
    from conftest import cli_here

    cfg = tmp_path / "dup.yaml"
    cfg.write_text("train:\n  learning_rate: 1e-3\n  max_steps: 2\ntrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=re.escape(f"{cfg}:4: key 'train' is given twice (first at {cfg}:1)")):
        load_config(cfg)
    nested = tmp_path / "nested.yaml"
    nested.write_text(
        "model:\n  name: tiny-phi3\ntrain:\n  learning_rate: 1e-3\n  batch_size: 2\n  learning_rate: 2e-4\n"
    )
    with pytest.raises(
        ConfigError, match=re.escape(f"{nested}:6: key 'train.learning_rate' is given twice (first at {nested}:4)")
    ):
        load_config(nested)
    proc = cli_here("check", str(cfg), check=False)
    assert proc.returncode == 2 and "given twice" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_a_byte_order_mark_is_accepted_and_other_encodings_are_one_sentence(tmp_path):
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufefftrain:\n  learning_rate: 3e-4\n  learnig_rate: 1\n".encode("utf-8"))
    with pytest.raises(ConfigError, match=re.escape(f"{bom}:3: unknown key 'train.learnig_rate'")):  # lines still right
        load_config(bom)
    bom.write_bytes("\ufefftrain:\n  learning_rate: 3e-4\n".encode("utf-8"))
    assert load_config(bom).train.learning_rate == 3e-4
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("output:\n  dir: runs/caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(f"{latin}: not valid UTF-8 (byte 0xe9")):
        load_config(latin)
