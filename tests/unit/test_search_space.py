"""The tune search space and tune settings: every bad input is one ConfigError naming the field and what is valid,
raised while loading, before any trial (or Ray) starts; good input becomes per-trial configs."""

import pytest
import torch

from srel_ray.config import load_config
from srel_ray.data.real import validation_indices
from srel_ray.errors import ConfigError, DataError
from srel_ray.search_space import apply_params, max_epochs, parse_space, tunable_fields


def parsed(*overrides):
    return parse_space(load_config(None, list(overrides)))


def test_default_space_is_budget_and_temperature():
    params = parsed()
    assert {p.name: p.kind for p in params} == {"recover.iterations": "grid", "evaluate.temperature": "grid"}


def test_flat_and_nested_forms_agree(tmp_path):
    flat = tmp_path / "flat.yaml"
    flat.write_text("tune:\n  search: random\n  space:\n    recover.lr: {loguniform: [0.05, 0.5]}\n"
                    "    relabel.epochs: {randint: [2, 5]}\n")
    nested = ["tune.search=random", "tune.space.recover.lr={loguniform: [0.05, 0.5]}",
              "tune.space.relabel.epochs={randint: [2, 5]}"]
    assert parse_space(load_config(flat)) == parse_space(load_config(None, nested))


def test_apply_params_sets_values_and_validates():
    base = load_config(None, ["recover.iterations=7"])
    cfg = apply_params(base, {"recover.iterations": 3, "evaluate.temperature": 2, "recover.crop_scale": [0.5, 1]})
    assert (cfg.recover.iterations, cfg.evaluate.temperature, cfg.recover.crop_scale) == (3, 2.0, (0.5, 1.0))
    assert base.recover.iterations == 7  # the base is left alone


def test_max_epochs_follows_a_tuned_epoch_count():
    cfg = load_config(None, ["evaluate.epochs=5", "tune.search=random", "tune.grace_period=1",
                             "tune.space={evaluate.epochs: {choice: [3, 9]}}"])
    assert max_epochs(cfg, parse_space(cfg)) == 9


@pytest.mark.parametrize("space, message", [
    ("{}", "tune.space must be a non-empty mapping"),
    ("{recover.iterations: 500}", "tune.space.recover.iterations must be a mapping with one of grid"),
    ("{recover.iterations: {gird: [1, 2]}}", "must be a mapping with one of grid, choice, uniform"),
    ("{recover.iterations: {grid: []}}", "tune.space.recover.iterations.grid must be a non-empty list"),
    ("{recover.iterations: {grid: 5}}", "must be a non-empty list"),
    ("{recover.iterations: {grid: [0, 10]}}", "value 0 is invalid: recover.iterations must be >= 1"),
    ("{recover.iterations: {grid: [2.5]}}", "recover.iterations must be int"),
    ("{evaluate.temperature: {grid: [fast]}}", "evaluate.temperature must be float"),
])
def test_malformed_space(space, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("{", r"\{")):
        parsed(f"tune.space={space}")


def test_unknown_parameter_lists_tunable_fields():
    with pytest.raises(ConfigError) as e:
        parsed("tune.space={recover.iteration: {grid: [1, 2]}}")
    assert "'recover.iteration' is not a config field" in str(e.value)
    assert "recover.iterations" in str(e.value) and "evaluate.temperature" in str(e.value)
    assert set(tunable_fields()) >= {"recover.iterations", "recover.lr", "recover.bn_weight", "evaluate.temperature"}


@pytest.mark.parametrize("name, reason", [
    ("teacher.epochs", "shared by every trial"), ("data.image_size", "shared by every trial"),
    ("resources.num_cpus", "does not change what a trial computes"),
    ("evaluate.eval_interval", "does not change what a trial computes"),
])
def test_fields_that_cannot_be_tuned(name, reason):
    with pytest.raises(ConfigError, match=f"'{name}' cannot be tuned: .*{reason}"):
        parsed(f"tune.space={{{name}: {{grid: [1, 2]}}}}")


@pytest.mark.parametrize("overrides, message", [
    (["tune.search=random", "tune.space={recover.iterations: {uniform: [1, 9]}}"],
     "recover.iterations is an int field: use grid, choice or randint"),
    (["tune.search=random", "tune.space={recover.lr: {uniform: [0.5, 0.1]}}"], "needs low < high"),
    (["tune.search=random", "tune.space={recover.lr: {loguniform: [0, 0.1]}}"], "needs low > 0"),
    (["tune.search=random", "tune.space={recover.lr: {uniform: [0.1]}}"], r"must be \[low, high\]"),
    (["tune.search=random", "tune.space={evaluate.temperature: {uniform: [-1, 4]}}"],
     "value -1 is invalid: evaluate.temperature must be > 0"),
    (["tune.search=random", "tune.space={recover.crop_scale: {uniform: [0.1, 0.5]}}"], "not a number field"),
    (["tune.space={recover.lr: {uniform: [0.1, 0.5]}}"], "search 'grid' enumerates values"),
    (["tune.search=optuna", "tune.space={recover.lr: {grid: [0.1, 0.5]}}"], "Optuna samples values"),
    (["tune.search=optuna", "tune.space={recover.crop_scale: {choice: [[0.1, 1], [0.5, 1]]}}"],
     "Optuna choices must be numbers"),
    (["evaluate.epochs=5", "tune.grace_period=10"], "tune.grace_period=10 exceeds the student's 5 epochs"),
])
def test_space_that_does_not_fit_the_search(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parsed(*overrides)


@pytest.mark.parametrize("override, message", [
    ("tune.metric=test_top1", "tune.metric must be a metric the trials report, one of ['val_top1'"),
    ("tune.metric=accuracy", "tune.metric must be a metric the trials report"),
    ("tune.mode=maximum", "tune.mode must be 'max' or 'min'"),
    ("tune.search=bayes", "tune.search must be one of ['grid', 'random', 'optuna']"),
    ("tune.num_samples=3", "must be 1 (or left out) with search 'grid'"),
    ("tune.grace_period=0", "tune.grace_period must be >= 1"),
    ("tune.score_interval=0", "tune.score_interval must be >= 1"),
    ("tune.bogus=1", "unknown config key 'tune.bogus'"),
    ("data.val_fraction=1.0", "data.val_fraction must be in (0, 1)"),
    ("resources.gpus_per_trial=0", "resources.gpus_per_trial must be > 0"),
])
def test_bad_tune_settings(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_samples_default_by_search():
    assert load_config(None, []).tune.samples() == 1
    assert load_config(None, ["tune.search=random"]).tune.samples() == 8
    assert load_config(None, ["tune.search=optuna", "tune.num_samples=3"]).tune.samples() == 3


def test_tune_section_is_not_part_of_a_run_identity():
    assert load_config(None, []).identity() == load_config(None, ["tune.search=random"]).identity()


def test_validation_split_is_stratified_stable_and_inside_the_training_split():
    labels = torch.arange(3).repeat_interleave(torch.tensor([10, 20, 3]))
    first = validation_indices(labels, 3, 0.2, split_seed=0)
    assert torch.equal(first, validation_indices(labels, 3, 0.2, split_seed=0))
    assert not torch.equal(first, validation_indices(labels, 3, 0.2, split_seed=1))
    assert [int((labels[first] == c).sum()) for c in range(3)] == [2, 4, 1]  # at least one, never a whole class
    assert len(set(first.tolist())) == len(first)
    with pytest.raises(DataError, match="class 0 has 1 training images"):
        validation_indices(torch.tensor([0, 1, 1]), 2, 0.5, 0)
