"""Configuration: defaults, presets, precedence, aliases, and errors that name the key."""


import pytest

from nanollm.config import DEFAULTS, PRESETS, describe_keys, resolve


def test_defaults_resolve_to_a_plain_dict_with_every_key():
    cfg = resolve()
    assert cfg == DEFAULTS and cfg is not DEFAULTS


def test_every_default_key_has_a_comment():
    """Each key's comment: in config.py, or for the model keys ModelConfig's field in model_config.py."""
    comments = describe_keys()
    for key in DEFAULTS:
        assert comments[key].strip(), f"DEFAULTS[{key!r}] has no comment"
    assert comments["num_kv_heads"].startswith("key/value heads") and comments["seed"].startswith("seeds batches")


def test_precedence_defaults_preset_then_overrides_in_order():
    cfg = resolve({"learning_rate": 3e-4, "batch_size": 4}, {"batch_size": 8}, preset="shakespeare-cpu")
    assert cfg["embedding_dim"] == 128 and cfg["lr_schedule"] == "cosine"  # from the preset
    assert cfg["learning_rate"] == 3e-4 and cfg["batch_size"] == 8  # later wins
    assert cfg["optimizer"] == "adamw"  # from DEFAULTS


def test_max_steps_is_an_alias_of_num_steps_and_ints_become_floats():
    cfg = resolve({"max_steps": 50, "learning_rate": 1, "betas": [0.8, 0.9]})
    assert cfg["num_steps"] == 50 and "max_steps" not in cfg
    assert cfg["learning_rate"] == 1.0 and isinstance(cfg["learning_rate"], float)
    assert cfg["betas"] == (0.8, 0.9)


def test_presets_follow_the_scaling_guide_and_nanogpt():
    assert [(PRESETS[p]["embedding_dim"], PRESETS[p]["num_layers"], PRESETS[p]["ffn_hidden_dim"])
            for p in ("nano", "small", "medium")] == [(32, 2, 64), (64, 4, 128), (128, 6, 256)]
    cpu = resolve(preset="shakespeare-cpu")
    assert (cpu["num_layers"], cpu["num_heads"], cpu["embedding_dim"], cpu["max_seq_len"], cpu["batch_size"],
            cpu["num_steps"], cpu["warmup_steps"], cpu["betas"]) == (4, 4, 128, 64, 12, 2000, 100, (0.9, 0.99))
    for name in PRESETS:
        resolve(preset=name)  # every preset is itself valid


@pytest.mark.parametrize("layer, message", [
    ({"learnig_rate": 1e-3}, "config: unknown config key 'learnig_rate'; did you mean 'learning_rate'?"),
    ({"max_step": 10}, "unknown config key 'max_step'; did you mean"),
    ({"batch_size": "12"}, "config: batch_size must be an integer, got '12'"),
    ({"batch_size": 12.0}, "batch_size must be an integer, got 12.0"),
    ({"nesterov": 1}, "nesterov must be true or false, got 1"),
    ({"learning_rate": "fast"}, "learning_rate must be a number, got 'fast'"),
    ({"betas": [0.9]}, "betas must be a pair of numbers, got [0.9]"),
    ({"betas": [0.9, 1.0]}, "betas must both be in [0, 1)"),
    ({"optimizer": "adamm"}, "optimizer='adamm' is not one of sgd, adam, adamw, lion, muon, sophia; did you mean 'adam'?"),
    ({"lr_schedule": "cosin"}, "did you mean 'cosine'?"),
    ({"learning_rate": 0}, "learning_rate must be > 0, got 0"),
    ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
    ({"learning_rate": float("nan")}, "learning_rate must be > 0, got nan"),
    ({"dropout": 1.0}, "dropout must be a number in [0, 1), got 1.0"),
    ({"embedding_dim": 30, "num_heads": 4}, "embedding_dim=30 is not divisible by num_heads=4"),
    ({"num_heads": 4, "num_kv_heads": 3}, "num_heads=4 is not divisible by num_kv_heads=3"),
    ({"nesterov": True}, "nesterov=True needs momentum > 0"),
    ({"backend": "tpu"}, "backend='tpu' is not one of numpy"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(layer, message):
    with pytest.raises(ValueError) as info:
        resolve(layer)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_errors_name_their_source_and_unknown_presets_suggest():
    with pytest.raises(ValueError, match=r"^run.json: unknown config key 'epoch'; did you mean 'epochs'\?"):
        resolve({"epoch": 2}, sources=["run.json"])
    with pytest.raises(ValueError, match="unknown preset 'smal'.*did you mean 'small'"):
        resolve(preset="smal")
    with pytest.raises(ValueError, match="a configuration must be a dict"):
        resolve([("learning_rate", 1)])


@pytest.mark.parametrize("layer, message", [
    ({"muon_learning_rate": 0}, "config: muon_learning_rate must be > 0, got 0"),
    ({"muon_learning_rate": "0.02"}, "muon_learning_rate must be a number, got '0.02'"),
    ({"muon_momentum": 1.0}, "muon_momentum must be in [0, 1), got 1.0"),
    ({"muon_momentum": -0.5}, "muon_momentum must be in [0, 1), got -0.5"),
    ({"muon_nesterov": "yes"}, "muon_nesterov must be true or false, got 'yes'"),
    ({"muon_ns_steps": 0}, "muon_ns_steps must be > 0, got 0"),
    ({"muon_ns_steps": 5.0}, "muon_ns_steps must be an integer, got 5.0"),
    ({"muon_adjust_lr": "match_rms"},
     "muon_adjust_lr='match_rms' is not one of original, match_rms_adamw; did you mean 'match_rms_adamw'?"),
    ({"muon_lr": 0.02}, "unknown config key 'muon_lr'; did you mean"),
])
def test_bad_muon_settings_are_one_line_errors_naming_the_key(layer, message):
    with pytest.raises(ValueError) as info:
        resolve({"optimizer": "muon", **layer})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_muon_keys_default_to_torch_and_keller_jordans_settings():
    cfg = resolve({"optimizer": "muon", "muon_learning_rate": 1, "muon_momentum": 0})
    assert cfg["muon_learning_rate"] == 1.0 and isinstance(cfg["muon_learning_rate"], float)
    assert cfg["muon_momentum"] == 0.0 and isinstance(cfg["muon_momentum"], float)
    assert (DEFAULTS["muon_learning_rate"], DEFAULTS["muon_momentum"], DEFAULTS["muon_nesterov"],
            DEFAULTS["muon_ns_steps"], DEFAULTS["muon_adjust_lr"]) == (0.02, 0.95, True, 5, "original")


def test_a_toml_file_says_none_as_a_string(tmp_path):
    from nanollm.config import load_config_file

    path = tmp_path / "c.toml"
    path.write_text('eval_steps = "none"\nlogit_softcap = "None"\n', encoding="utf-8")
    cfg = resolve(load_config_file(path))
    assert cfg["eval_steps"] is None and cfg["logit_softcap"] is None
    with pytest.raises(ValueError, match="eval_steps must be an integer, got 'all'"):
        resolve({"eval_steps": "all"})
