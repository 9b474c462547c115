"""Search spaces: the YAML format, its error messages, and samples that always build configs."""

import re
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ray.tune.search.optuna import OptunaSearch

from mrnet_ray.config import MRNetConfig, TrialConfig
from mrnet_ray.errors import UserError
from mrnet_ray.search.space import SearchSpace, load_space

SPACES = sorted((Path(__file__).parents[1] / "search_spaces").glob("*.yaml"))
optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        load_space(write(tmp_path, text))
    return str(info.value)


def sample(space: SearchSpace, sampler: optuna.samplers.BaseSampler, n: int) -> list[TrialConfig]:
    """``n`` trials of a real in-memory study, each mapped back to a TrialConfig."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(space.default_point())
    configs = []
    for i in range(n):
        trial = study.ask()
        space.define_by_run(trial)
        configs.append(space.to_trial(trial.params, n_mels=40, n_classes=8))
        study.tell(trial, (i * 7919 % 101) / 100)  # any deterministic objective
    return configs


def test_shipped_spaces_exist():
    assert {p.stem for p in SPACES} >= {"mrnet", "smoke", "baselines", "demo"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_default_point_is_the_paper_model_inside_the_space(path):
    space = load_space(path)
    point = space.default_point()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(point)
    trial = study.ask()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when an enqueued value is out of range
        space.define_by_run(trial)
    assert trial.params == point
    model = space.to_trial(point, n_mels=128, n_classes=10).model
    if path.stem in ("mrnet", "baselines"):
        assert model.dilations == (2, 3, 4)
        assert model.route_depths == ((1, 2, 3),) * 3
        assert model.res2_scale == 8


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # TPE's group
@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_random_and_tpe_samples_build_valid_configs(path):
    space = load_space(path)
    configs = sample(space, optuna.samplers.RandomSampler(seed=1), 200)
    tpe = optuna.samplers.TPESampler(seed=2, multivariate=True, group=True)
    configs += sample(space, tpe, 100)
    assert all(isinstance(c, TrialConfig) for c in configs)
    if path.stem != "baselines":  # the structure is searched: samples must differ in it
        assert len({c.model.dilations for c in configs}) > 5
        assert len({c.model.route_depths for c in configs}) > 5
        assert len({c.model.n_blocks for c in configs}) > 1


def test_res2_scale_gets_one_name_per_set_of_allowed_scales():
    space = load_space(Path(__file__).parents[1] / "search_spaces/smoke.yaml")
    names: dict[str, set] = {}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(60):
        trial = study.ask()
        space.define_by_run(trial)
        res2 = [k for k in trial.params if k.startswith("model.res2_scale")]
        assert len(res2) == 1
        names.setdefault(res2[0], set()).add(trial.params["model.channels"])
        study.tell(trial, 0.0)
    # 16 and 32 allow scales 2 and 4; 24 also allows 3.
    assert names == {"model.res2_scale_in_2_4": {16, 32}, "model.res2_scale_in_2_3_4": {24}}


def test_round_trip_through_ray_optuna_search():
    """Names survive Ray's OptunaSearch (which nests keys on '/') and the enqueued default."""
    space = load_space(Path(__file__).parents[1] / "search_spaces/smoke.yaml")
    searcher = OptunaSearch(
        space=space.define_by_run,
        metric="valid_acc",
        mode="max",
        points_to_evaluate=[space.default_point()],
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3),
    )
    first = searcher.suggest("t0")
    assert first == space.default_point()
    searcher.on_trial_complete("t0", {"valid_acc": 0.5, "training_iteration": 1})
    for i in range(1, 8):
        config = searcher.suggest(f"t{i}")
        assert all("." in key and "/" not in key for key in config)
        trial = space.to_trial(config, n_mels=40, n_classes=8)
        searcher.on_trial_complete(f"t{i}", {"valid_acc": i / 10, "training_iteration": 1})
    assert trial.train.epochs == 2  # fixed values come from the space


def test_to_trial_names_a_missing_parameter(tmp_path):
    space = load_space(write(tmp_path, "model:\n  channels: {choice: [16, 32]}\n"))
    with pytest.raises(UserError, match=r"space.yaml: the trial config has no 'model.channels'"):
        space.to_trial({"train.lr": 0.1}, n_mels=40, n_classes=8)


def test_flat_params_are_plain_and_complete():
    trial = TrialConfig(model=MRNetConfig(dilations=(2, 5), route_depths=((1,), (1, 3))))
    flat = trial.flat()
    assert flat["model.dilations"] == "2,5"
    assert flat["model.route_depths"] == "1,1-3"
    assert flat["model.n_blocks"] == 2
    assert flat["train.crop_frames"] == "None"
    assert all(isinstance(v, str | int | float) for v in flat.values())
    assert len(flat) == len(MRNetConfig.field_names()) + len(trial.train.to_dict()) + 1


def test_floats_without_a_dot_are_numbers(tmp_path):
    space = load_space(write(tmp_path, "train:\n  lr: {float: [1e-4, 1e-2], log: true}\n"))
    assert space.default_point() == {"train.lr": 1e-3}


# --- every mistake is named with file, line, key and fix -------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  channel: 64\n", r"space.yaml:2: model.channel: .*did you mean 'channels'\?"),
        ("modle:\n  channels: 64\n", r"space.yaml:1: modle: unknown section; did you mean 'model'"),
        ("train:\n  dropout: 0.1\n", r"space.yaml:2: train.dropout: .*belongs under model:"),
        (
            "train:\n  lr: {float: [0.1, 0.01]}\n",
            r"space.yaml:2: train.lr: bad range \[0.1, 0.01\]",
        ),
        ("train:\n  lr: {float: [0, 1], log: true}\n", r"train.lr: log: true needs low > 0"),
        ("model:\n  kernel_size: {choice: []}\n", r"space.yaml:2: model.kernel_size: empty choice"),
        ("model:\n  channels: [1, 2\n  x: 3\n", r"space.yaml:3: not valid YAML \(expected ','"),
        ("model:\n  channels: {choise: [8]}\n", r"unknown key 'choise'.*did you mean 'choice'"),
        ("model:\n  embedding_dim: big\n", r"model.embedding_dim: 'big' is not an integer"),
        ("model:\n  dropout: {float: [0.0, 1.0]}\n", r"model.dropout: 1.0 is rejected.*\[0, 1\)"),
        ("model:\n  kernel_size: {int: [3, 5]}\n", r"model.kernel_size: 4 is rejected .* odd"),
        ("train:\n  epochs: {float: [1, 3]}\n", r"train.epochs: \{float: ...\} draws fractions"),
        ("model:\n  n_mels: 64\n", r"model.n_mels: is set by the prepared data; remove it"),
        ("model:\n  channels: 8\n  channels: 16\n", r"space.yaml:3: model.channels: given twice"),
        (
            "model:\n  channels: {choice: [24, 36]}\n"
            "  res2_scale: {divisor_of: channels, choice: [8]}\n",
            r"space.yaml:3: model.res2_scale: no candidate of \{choice: \[8\]\} divides "
            r"channels=36; add a divisor of 36 or drop that width",
        ),
        (
            "model:\n  channels: {choice: [20, 32]}\n  res2_scale: 8\n",
            r"res2_scale=8 does not divide channels=20; use res2_scale: \{divisor_of: channels",
        ),
        (
            "model:\n  n_blocks: {int: [2, 4]}\n  dilations: [1, 2, 3]\n"
            "  route_depths: {per_route: {int: [1, 2]}}\n  routes_per_block: 2\n",
            r"space.yaml:3: model.dilations: lists 3 blocks but n_blocks is \{int: \[2, 4\]\}",
        ),
        ("model:\n  routes_per_block: 2\n", r"routes_per_block: needs route_depths: \{per_route"),
        ("model:\n  dilations: [1, 2]\n  route_depths: [[1], [2], [3]]\n", r"lists 3 blocks but"),
        ("model:\n  dilations: {per_block: {int: [0, 2]}}\n", r"dilations takes integers >= 1"),
        ("train:\n  batch_size: {int: [8, 30], step: 8}\n", r"step 8 does not fit \[8, 30\]"),
        ("[1, 2]\n", r"space.yaml: a search space is a mapping .* not a list"),
        ("", r"space.yaml: the search space is empty"),
    ],
)
def test_each_mistake_is_reported_clearly(tmp_path, text, expected):
    message = load_error(tmp_path, text)
    assert re.search(expected, message), message
    assert str(tmp_path / "space.yaml") in message


def test_all_mistakes_are_reported_together_in_file_order(tmp_path):
    message = load_error(
        tmp_path, "model:\n  channel: 64\n  dropout: {float: [1, 0]}\ntrain:\n  epoch: 3\n"
    )
    lines = message.splitlines()
    assert lines[0] == "3 problems in the search space:"
    assert [re.search(r":(\d+): ", line).group(1) for line in lines[1:]] == ["2", "3", "5"]


def test_unreadable_file_names_the_path(tmp_path):
    with pytest.raises(UserError, match=r"missing.yaml: cannot read the search space"):
        load_space(tmp_path / "missing.yaml")


# --- property: any space that loads only ever yields valid configs -----------------------------


def dist(values, ints=True):
    """A random spec over ``values``: fixed, a choice, or (for ints) a range."""
    pick = st.sampled_from(values)
    choice = st.lists(pick, min_size=1, max_size=3, unique=True).map(lambda c: {"choice": c})
    if not ints:
        return st.one_of(pick, choice)
    bounds = st.tuples(pick, pick).filter(lambda t: t[0] < t[1])
    return st.one_of(pick, choice, bounds.map(lambda t: {"int": list(t)}))


def model_spaces(valid: bool):
    """Random small model sections; unless ``valid``, they may hold mistakes."""
    extra = [] if valid else [0]  # 0 is no dilation or depth
    divisor_sets = st.lists(
        st.sampled_from([1, 2, 3, 4] if valid else [3, 5, 8]), min_size=1, max_size=3, unique=True
    )
    if valid:  # every width is even, so 1 and 2 always divide it
        res2 = st.one_of(
            dist([1, 2], ints=False),
            divisor_sets.map(lambda c: {"divisor_of": "channels", "choice": sorted({*c, 2})}),
        )
    else:
        res2 = st.one_of(
            dist([1, 2, 3, 4], ints=False),
            divisor_sets.map(lambda c: {"divisor_of": "channels", "choice": c}),
        )
    dropouts = [0.1, {"float": [0.0, 0.5]}, {"choice": [0.0, 0.9]}]
    return st.fixed_dictionaries(
        {
            "channels": dist([8, 12, 16, 20, 24], ints=not valid),
            "res2_scale": res2,
            "n_blocks": dist([1, 2, 3]),
            "dilations": dist([*extra, 1, 2, 3]).map(lambda d: {"per_block": d}),
            "routes_per_block": st.one_of(
                dist([1, 2]), dist([1, 2]).map(lambda d: {"per_block": d})
            ),
            "route_depths": dist([*extra, 1, 2, 3]).map(lambda d: {"per_route": d}),
            "kernel_size": dist([1, 3, 5], ints=False) if valid else dist([1, 2, 3]),
            "dropout": st.sampled_from(dropouts + ([] if valid else [{"float": [0.2, 1.0]}])),
        },
        optional={"arch": dist(["mrnet", "ecapa", "shortchunk"], ints=False)},
    )


TRAIN = {"lr": {"float": [1e-4, 1e-2], "log": True}, "batch_size": {"int": [8, 32], "step": 8}}


def from_plain(model):
    return SearchSpace.from_dict(yaml.safe_load(yaml.safe_dump({"model": model, "train": TRAIN})))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=model_spaces(valid=True), seed=st.integers(0, 2**16))
def test_valid_random_spaces_load_and_yield_valid_configs(model, seed):
    space = from_plain(model)  # must not raise: every piece is valid
    for config in sample(space, optuna.samplers.RandomSampler(seed=seed), 15):
        assert config.model.n_blocks == len(config.model.route_depths)
        assert config.model.channels % config.model.res2_scale == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=model_spaces(valid=False), seed=st.integers(0, 2**16))
def test_any_space_either_fails_at_load_or_yields_valid_configs(model, seed):
    """Mistakes surface as one UserError before any trial, never while sampling."""
    try:
        space = from_plain(model)
    except UserError as e:
        assert re.match(r"(<space>: model\.\w+: |\d+ problems in the search space:\n)", str(e))
        return
    for config in sample(space, optuna.samplers.RandomSampler(seed=seed), 15):
        assert config.model.channels % config.model.res2_scale == 0
