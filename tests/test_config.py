"""Config validation: every check names the bad field."""

import itertools
import re
from pathlib import Path

import pytest

from mrnet_ray.config import (
    FeatureConfig,
    MRNetConfig,
    ResourcesConfig,
    TrainConfig,
    TrialConfig,
)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"channels": 64, "res2_scale": 5}, "res2_scale"),
        ({"route_depths": ((1, 0), (1,), (1,))}, "route_depths[0]"),
        ({"dilations": (2, 3), "route_depths": ((1,), (1,), (1,))}, "route_depths"),
        ({"arch": "transformer"}, "arch"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"n_classes": 1}, "n_classes"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_model_config_names_bad_field(changes, field):
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        MRNetConfig(**changes)


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="^channel: unknown MRNetConfig field"):
        MRNetConfig.from_dict({"channel": 64})


def test_round_trip_through_plain_dicts():
    cfg = MRNetConfig(channels=64, res2_scale=4, dilations=(2, 5), route_depths=((1,), (1, 3)))
    assert MRNetConfig.from_dict(cfg.to_dict()) == cfg
    trial = TrialConfig(model=cfg, train=TrainConfig(epochs=2))
    assert TrialConfig.from_dict(trial.to_dict()) == trial


@pytest.mark.parametrize(
    ("cls", "changes", "field"),
    [
        (TrainConfig, {"lr": -1.0}, "lr"),
        (TrainConfig, {"schedule": "step"}, "schedule"),
        (TrainConfig, {"crop_frames": 2}, "crop_frames"),
        (FeatureConfig, {"hop_length": 4096}, "hop_length"),
        (FeatureConfig, {"f_max": 20000.0, "sample_rate": 16000}, "f_max"),
        (FeatureConfig, {"short_clip": "loop"}, "short_clip"),
    ],
)
def test_other_configs_name_bad_field(cls, changes, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        cls(**changes)


def test_segment_frames_follow_the_feature_settings():
    cfg = FeatureConfig(sample_rate=22050, hop_length=512, segment_seconds=3.0)
    assert cfg.segment_frames == 129
    assert (
        FeatureConfig(sample_rate=16000, hop_length=256, segment_seconds=3.0).segment_frames == 188
    )


def field_docs(cls) -> dict[str, str]:
    """Each field's attribute docstring, joined into one line, read from the class's source."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@pytest.mark.parametrize("cls", [FeatureConfig, MRNetConfig, TrainConfig, ResourcesConfig])
def test_the_readme_lists_every_field_with_its_default_and_doc(cls):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split(f"**{cls.__name__}**", 1)[1].split("\n\n", 2)[1]
    rows = {
        cells[0].strip("` "): (cells[1].strip("` "), cells[2].strip())
        for line in table.splitlines()[2:]
        for cells in [line.strip("|").split(" | ")]
    }
    default = cls()
    expected = {name: (str(getattr(default, name)), doc) for name, doc in field_docs(cls).items()}
    assert rows == expected
