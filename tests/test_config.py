"""Config: YAML + dotted overrides, and a one-line error naming the culprit for each bad input."""

import pytest

from sft2grpo.config import ConfigError, list_presets, load_config, parse_override


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  steps: 7\n  lr: 3.0e-6\nobjective:\n  beta: 0.1\n")
    cfg = load_config(f, ["train.steps=9", "objective.kl_estimator=k1", "rollout.stop=[a, b]"])
    assert cfg.train.steps == 9  # the override wins over the file
    assert cfg.train.lr == 3e-6  # the file wins over the default
    assert cfg.objective.beta == 0.1
    assert cfg.objective.kl_estimator == "k1"
    assert cfg.rollout.stop == ["a", "b"]
    assert cfg.preset == "c"  # named after the file unless it says otherwise
    assert cfg.rollout.group_size == 8  # untouched default


@pytest.mark.parametrize(
    "text,keys,value",
    [
        ("train.lr=1e-5", ["train", "lr"], 1e-5),  # YAML 1.1 would read this as a string
        ("objective.dual_clip=null", ["objective", "dual_clip"], None),
        ("log.tensorboard=true", ["log", "tensorboard"], True),
        ("model.name=tiny", ["model", "name"], "tiny"),
        ("train.steps=3", ["train", "steps"], 3),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


def test_off_is_a_word_where_it_is_a_choice(tmp_path):
    # YAML 1.1 reads a bare `off` as false; train.autocast's choices are words, so it stays "off"
    assert load_config(None, ["train.autocast=off"]).train.autocast == "off"
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  autocast: off\n")
    assert load_config(f, []).train.autocast == "off"
    with pytest.raises(ConfigError, match="train.autocast: True is not one of off, bf16, auto"):
        load_config(None, ["train.autocast=yes"])  # no "on" among the choices: still an error


def test_int_field_accepts_whole_float_and_float_field_accepts_int():
    cfg = load_config(None, ["train.steps=4.0", "train.lr=1"])
    assert cfg.train.steps == 4 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.stpes=3", "unknown key 'train.stpes' (did you mean 'steps'?)"),
        ("nope.x=1", "unknown key 'nope'"),
        ("train.steps=abc", "train.steps: expected int, got 'abc'"),
        ("objective.ratio=tokens", "objective.ratio: 'tokens' is not one of none, token, sequence"),
        ("objective.beta=-0.1", "objective.beta=-0.1: must be >= 0"),
        ("objective.eps_low=1.0", "objective.eps_low=1.0: must be in [0, 1)"),
        ("rollout.group_size=1", "objective.advantage=group_norm needs groups of at least 2"),
        ("rollout.seed=-1", "rollout.seed=-1: must be >= 0"),
        ("train.seed=-2", "train.seed=-2: must be >= 0"),
        ("log.tensorboard=maybe", "log.tensorboard: expected bool, got 'maybe'"),
        ("train.steps", "expected key.sub=value"),
        ("train=3", "'train' must be a mapping"),
    ],
)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_yaml_file_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  steps: 3\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    # line 3 holds the unknown key
    assert f"{f}:3: unknown key 'train.lrr'" in str(e.value)
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(f)


def test_missing_config_file_and_unknown_preset():
    with pytest.raises(ConfigError, match="config file not found: nowhere.yaml"):
        load_config("nowhere.yaml")
    with pytest.raises(ConfigError, match="unknown preset 'grpoo'; available: .*grpo"):
        load_config("grpoo")


def test_every_preset_loads():
    from test_objective import EXPECTED_PRESETS  # the seed's rungs and variants, one list

    names = list_presets()
    assert EXPECTED_PRESETS <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.preset == name


def test_renamed_preset_and_keys_still_read_with_one_line_naming_the_new_one(tmp_path):
    """Rung 1's preset was `sft`, the pipeline's stage section `sft`, and three keys had other
    names: an old name still reads, as the new one, with a warning that names it."""
    import warnings

    import yaml

    with pytest.warns(UserWarning, match="preset 'sft' is now 'onpolicy_sft'"):
        cfg = load_config("sft")
    assert cfg.preset == "onpolicy_sft" and cfg.objective.advantage == "relu"
    old = tmp_path / "old.yaml"
    old.write_text(
        yaml.safe_dump({"sft": {"steps": 4}, "eval": {"sampled": 2}, "rollout": {"prepack": False}})
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(str(old), ["eval.samples=3", "eval.k=2"])
    said = sorted(str(w.message) for w in caught)
    assert said == [
        f"{old}: 'eval.sampled' is now 'eval.heldout_at_draws'; reading it as that",
        f"{old}: 'rollout.prepack' is now 'tuning.prepack'; reading it as that",
        f"{old}: 'sft' is now 'sft_stage'; reading it as that",
        "override 'eval.samples=3': 'eval.samples' is now 'eval.k_draws'; reading it as that",
    ]
    assert cfg.sft_stage.steps == 4 and cfg.eval.heldout_at_draws == 2
    assert cfg.tuning.prepack is False and cfg.eval.k_draws == 3
