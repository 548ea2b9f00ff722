"""The typed configuration: one default per key, validated whole with did-you-mean messages."""

import re
from pathlib import Path

import pytest
import yaml

from brainage.config import DEMO_OVERRIDES, Config, dump_config, load_config
from brainage.errors import ConfigError
from brainage.preprocess import PreprocessConfig
from brainage.train import TrainConfig


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            {"train": {"epochz": 3}},
            r"unknown configuration key 'train.epochz'; did you mean 'epochs'",
        ),
        (
            {"train": {"epochs": "sixty"}},
            r"'train.epochs': input should be a valid integer; got 'sixty'",
        ),
        ({"train": {"epochs": 0}}, r"'train.epochs': input should be greater than or equal to 1"),
        ({"train": {"model": "resnt"}}, r"unknown model 'resnt'; did you mean 'resnet'"),
        ({"train": {"model_params": {"dropot": 0.1}}}, r"'train.model_params.dropot'.*'dropout'"),
        ({"train": {"augment": ["flip", "elastc"]}}, r"'train.augment.1'.*did you mean 'elastic'"),
        ({"explain": {"methods": ["lrp", "gradcm"]}}, r"did you mean 'gradcam'"),
        ({"explain": {"params": {"occlussion": {"window": 4}}}}, r"did you mean 'occlusion'"),
        (
            {"explain": {"params": {"occlusion": {"windw": 4}}}},
            r"no parameter 'windw'; did you mean 'window'",
        ),
        ({"explain": {"unoise_fit": {"epochs": -1}}}, r"'explain.unoise_fit.epochs'"),
        (
            {"explain": {"unoise_fit": {"epoch": 2}}},
            r"'explain.unoise_fit.epoch'; did you mean 'epochs'",
        ),
        ({"explain": {"subjects": "tests"}}, r"did you mean 'test'"),
        ({"population": {"atlases": ["aall"]}}, r"unknown atlas 'aall'; did you mean 'aal'"),
        ({"population": {"normalise": "zscor"}}, r"did you mean 'zscore'"),
        ({"split": {"test_fraction": 0.9}}, r"'split.test_fraction': input should be less than"),
        ({"preprocess": {"register": "afine"}}, r"did you mean 'affine'"),
        ({"preprocess": {"n4_shrink_factor": 0}}, r"'preprocess.n4_shrink_factor'"),
        ({"run": {"backend": "dusk"}}, r"did you mean 'dask'"),
        ({"sed": 1}, r"unknown configuration key 'sed'; did you mean 'seed'"),
        ({"ensemble": {"seeds": [1, 1]}}, r"'ensemble.seeds'"),
    ],
)
def test_bad_values_fail_with_key_value_and_hint(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=overrides)


def test_one_default_per_key():
    cfg = Config()
    # the sections are the stages' own parameter classes, with their own defaults
    assert cfg.train == TrainConfig() and cfg.preprocess == PreprocessConfig()
    assert (cfg.train.resolution_mm, cfg.train.patience, cfg.train.lr) == (4.0, 30, 2e-3)
    assert cfg.explain.unoise_fit.n_subjects == 48
    assert cfg.seeds == [0, 1]
    assert (cfg.split.scheme, cfg.split.n_folds) == ("kfold", 5)
    # every key is settable, e.g. the N4 shrink factor and the registration seed
    cfg = load_config(overrides={"preprocess": {"n4_shrink_factor": 2, "seed": 7}})
    assert (cfg.preprocess.n4_shrink_factor, cfg.preprocess.seed) == (2, 7)


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(base=DEMO_OVERRIDES, overrides={"explain": {"methods": ["lrp"]}})
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    # YAML 1.2 floats (1e-3) are numbers, not strings
    path.write_text("train: {lr: 1e-3, weight_decay: 5e-4}\n")
    assert load_config(path).train.lr == pytest.approx(1e-3)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read configuration .*bad.yaml"):
        load_config(bad)
    bad.write_text("train: {epocs: 1}\n")
    with pytest.raises(ConfigError, match=r"in .*bad.yaml.*did you mean 'epochs'"):
        load_config(bad)


def test_readme_configuration_example_is_valid():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    load_config(overrides=yaml.safe_load(block))
