import pytest

from app.config import AREAS
from trainer import config as C


def test_defaults_are_valid():
    for cls in AREAS.values():
        assert C.build(cls, env={}).problems() == []


def test_precedence_defaults_env_flags():
    env = {"LIVEDPO_BETA": "0.3", "LIVEDPO_EPOCHS": "5"}
    cfg = C.build(C.TrainConfig, env=env, overrides={"beta": 0.5, "epochs": None})
    assert cfg.beta == 0.5  # flag beats env
    assert cfg.epochs == 5  # env beats default (flag unset)
    assert cfg.lr == C.TrainConfig().lr  # default


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as e:
        C.build(C.TrainConfig, env={}, overrides={"beta": -1, "lr": 5, "loss": "nope"})
    msg = str(e.value)
    assert "beta=-1" in msg and "lr=5" in msg and "loss='nope'" in msg
    assert "sigmoid" in msg  # says what the valid values are


def test_bad_env_type_names_the_value():
    with pytest.raises(ValueError, match="lora_r='many'"):
        C.build(C.ModelConfig, env={"LIVEDPO_LORA_R": "many"})


def test_replace_validates():
    cfg = C.TrainConfig()
    assert C.replace(cfg, beta="0.25").beta == 0.25
    with pytest.raises(ValueError, match="epochs=0"):
        C.replace(cfg, epochs=0)


def test_every_field_has_help():
    import dataclasses

    for cls in AREAS.values():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
