"""An embodiment's modality spec, in Isaac-GR00T's format: the `meta/modality.json` of a GR00T-flavoured LeRobot
dataset (Isaac-GR00T `getting_started/LeRobot_compatible_data_schema.md`, `gr00t/data/schema.py`):

    {"state":  {"<field>": {"start": i, "end": j}, ...},            # slices of observation.state, in this order
     "action": {"<field>": {"start": i, "end": j}, ...},            # slices of action
     "video":  {"<name>": {"original_key": "observation.images.<camera>"}, ...},
     "annotation": {"human.task_description": {}, ...}}

The robot's state is the concatenation of its state fields, each the slice [start, end) of the array `original_key`
(default `observation.state`); its action likewise (default `action`); its cameras are the video entries, read
from their `original_key`. GR00T fine-tunes a new embodiment from such a spec: `python train.py --dataset DIR` reads
DIR/meta/modality.json when there is one, or `--embodiment FILE` names it.

Where we differ from the release: the optional entries that drive its transforms (`rotation_type`, `absolute`,
`dtype`, `range`) are kept in the spec but not applied (every field is min-max normalised as in the release's
default); annotations other than the episode's task are not read; and a camera keeps the name of its original key
(`observation.images.<camera>`) in the model, so that a Meta-World evaluation renders it; the spec's own name for it
is kept as a label.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from common.data import EpisodeDataset
from common.envs.metaworld import IMAGE_KEY

MODALITY_PATH = "meta/modality.json"
DEFAULT_KEYS = {"state": "observation.state", "action": "action"}  # the release's defaults for `original_key`


@dataclass(frozen=True)
class Field:
    name: str  # the spec's name of the field ("left_arm", "gripper", ...)
    start: int  # first index in the original array
    end: int  # one past the last
    original_key: str  # the dataset feature it is sliced from


@dataclass(frozen=True)
class ModalitySpec:
    state: tuple[Field, ...]
    action: tuple[Field, ...]
    video: tuple[tuple[str, str], ...]  # (the spec's camera name, its original key), in the spec's order
    raw: Mapping[str, Any]  # the file as read (kept in checkpoints)

    @classmethod
    def read(cls, path: str | Path) -> "ModalitySpec":
        """A modality.json, or a dataset directory that holds meta/modality.json."""
        path = Path(path)
        file = path / MODALITY_PATH if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"no modality spec at {file}")
        return cls.from_dict(json.loads(file.read_text()), str(file))

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "the modality spec") -> "ModalitySpec":
        for part in ("state", "action", "video"):
            if not raw.get(part):
                raise ValueError(f"{source}: needs a non-empty {part!r} entry (Isaac-GR00T's modality.json schema)")
        fields = {}
        for part in ("state", "action"):
            fields[part] = []
            for name, entry in raw[part].items():
                if not isinstance(entry.get("start"), int) or not isinstance(entry.get("end"), int):
                    raise ValueError(f"{source}: {part}.{name} needs integer 'start' and 'end'")
                if not 0 <= entry["start"] < entry["end"]:
                    raise ValueError(f"{source}: {part}.{name} has start {entry['start']} >= end {entry['end']}")
                fields[part].append(Field(name, entry["start"], entry["end"],
                                          entry.get("original_key") or DEFAULT_KEYS[part]))
        video = []
        for name, entry in raw["video"].items():
            key = entry.get("original_key")
            if not key or not key.startswith(IMAGE_KEY.format(camera="")):
                raise ValueError(f"{source}: video.{name} needs an 'original_key' like "
                                 f"{IMAGE_KEY.format(camera='<camera>')!r}, got {key!r}")
            video.append((name, key))
        return cls(tuple(fields["state"]), tuple(fields["action"]), tuple(video), dict(raw))

    @property
    def cameras(self) -> tuple[str, ...]:
        """The model's camera names: those of the original keys, in the spec's order."""
        return tuple(key.removeprefix(IMAGE_KEY.format(camera="")) for _, key in self.video)

    def check(self, features: Mapping[str, Mapping]) -> None:
        """Every original key is a feature of the data and every slice lies inside it; else an error naming it."""
        for part, fields in (("state", self.state), ("action", self.action)):
            for f in fields:
                if f.original_key not in features:
                    raise KeyError(f"{part}.{f.name}: the data has no {f.original_key!r}; it has {sorted(features)}")
                size = features[f.original_key]["shape"][-1]
                if f.end > size:
                    raise ValueError(f"{part}.{f.name}: [{f.start}, {f.end}) is outside {f.original_key!r} "
                                     f"({size} wide)")
        for name, key in self.video:
            if key not in features:
                raise KeyError(f"video.{name}: the data has no {key!r}; it has {sorted(features)}")

    def _concat(self, fields: tuple[Field, ...], arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(arrays[f.original_key])[..., f.start:f.end] for f in fields], axis=-1)

    def view(self, demos: EpisodeDataset, state_key: str = "observation.state") -> EpisodeDataset:
        """The demos as this embodiment sees them: its cameras (the same memory maps), `state_key` the concatenated
        state fields, `action` the concatenated action fields, with their statistics (per dimension, so the slices
        of the original ones)."""
        self.check(demos.features)
        out = copy.copy(demos)
        out.arrays = {key: demos.arrays[key] for _, key in self.video}
        out.features = {key: demos.features[key] for _, key in self.video}
        out.stats = {}
        for key, fields in ((state_key, self.state), ("action", self.action)):
            out.arrays[key] = self._concat(fields, demos.arrays).astype(np.float32)
            out.features[key] = {"shape": [out.arrays[key].shape[-1]], "dtype": "float32"}
            out.stats[key] = {stat: self._concat(fields, {k: np.asarray(s[stat]) for k, s in demos.stats.items()
                                                          if stat in s}).tolist()
                              for stat in demos.stats[fields[0].original_key]}
        return out

    def observation(self, features: Mapping[str, Any], state_key: str = "observation.state") -> dict[str, Any]:
        """A robot observation (feature names of the data) as the model reads it."""
        return {**{key: features[key] for _, key in self.video},
                state_key: self._concat(self.state, features).astype(np.float32)}

    def robot_action(self, actions: np.ndarray, size: int) -> np.ndarray:
        """(..., the model's action width) → (..., size): each action field written back to its slice of the
        robot's action vector, zero where no field writes."""
        out = np.zeros((*actions.shape[:-1], size), np.float32)
        offset = 0
        for f in self.action:
            width = f.end - f.start
            out[..., f.start:f.end] = actions[..., offset:offset + width]
            offset += width
        return out
