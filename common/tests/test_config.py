from dataclasses import dataclass, field
from typing import Literal

import pytest

from common.config import ConfigError, from_dict, merge, parse_config, to_dict


@dataclass
class Model:
    width: int = 32  # hidden width
    act: Literal["gelu", "relu"] = "gelu"  # activation


@dataclass
class Cfg:
    lr: float = 1e-3  # learning rate
    steps: int = 10  # optimizer steps
    name: str = "run"  # run name
    tasks: tuple[str, ...] = ("reach-v3",)  # tasks
    resume: str | None = None  # checkpoint to resume
    model: Model = field(default_factory=Model)


PRESETS = {"tiny": Cfg(), "paper": Cfg(lr=3e-4, steps=1000, model=Model(width=1024))}


def test_layers_override_in_order(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("steps: 50\nmodel:\n  act: relu\ntasks: [a, b]\n")
    cfg = parse_config(PRESETS, ["--preset", "paper", "--config", str(yaml_file), "--steps", "7", "--model.width", "8"])
    assert cfg == Cfg(lr=3e-4, steps=7, tasks=("a", "b"), model=Model(width=8, act="relu"))
    assert parse_config(PRESETS, []) == Cfg()
    assert PRESETS["paper"].steps == 1000  # presets are never mutated


def test_unknown_keys_and_wrong_types_name_the_field(tmp_path, capsys):
    with pytest.raises(ConfigError, match="'model.depth'"):
        merge(Cfg(), {"model": {"depth": 3}})
    with pytest.raises(ConfigError, match="'steps' expects int, got str"):
        merge(Cfg(), {"steps": "many"})
    with pytest.raises(ConfigError, match="'model.act' must be one of"):
        merge(Cfg(), {"model": {"act": "tanh"}})
    with pytest.raises(ConfigError, match="'lr' expects float, got bool"):
        merge(Cfg(), {"lr": True})
    assert merge(Cfg(), {"lr": 1, "resume": None}).lr == 1.0  # int -> float is lossless
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        parse_config(PRESETS, ["--preset", "huge"])
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("stpes: 3\n")
    with pytest.raises(ConfigError, match="'stpes'"):
        parse_config(PRESETS, ["--config", str(yaml_file)])
    with pytest.raises(SystemExit):
        parse_config(PRESETS, ["--stpes", "3"])
    assert "--stpes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_config(PRESETS, ["--steps", "abc"])
    assert "--steps" in capsys.readouterr().err


def test_dict_round_trip():
    cfg = Cfg(tasks=("a", "b"), model=Model(width=3))
    assert from_dict(Cfg, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="'widht'"):
        from_dict(Cfg, {"model": {"widht": 3}})
