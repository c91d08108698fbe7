import pytest
import torch

import amc
from amc.config import AgentConfig, CalibrationConfig, DataConfig, ModelConfig, PruneConfig, SearchConfig
from amc.data import load_splits
from amc.errors import AmcError
from amc.io import save_model
from amc.models import ModelSpec, available_models, build_model
from amc_agents import run_search
from amc_envs import make_task

SPEC = ModelSpec("resnet8", 10, (3, 16, 16))
DATA = DataConfig(synthetic_size=(300, 20), holdout=100, search_images=80, image_size=16)
CALIB = CalibrationConfig(images=60, batch_size=30, seed=4)
PRUNE = PruneConfig(bn_batches=2, points_per_image=5, seed=1)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A short random search on synthetic data, with the dense model saved as a checkpoint."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    save_model(folder / "dense.pt", model, SPEC)
    cfg = SearchConfig(model=ModelConfig("resnet8", str(folder / "dense.pt"), 10, (3, 16, 16)), data=DATA,
                       calibration=CALIB, prune=PRUNE, agent=AgentConfig(algorithm="random"), episodes=5, seed=3)
    task = make_task(model, SPEC, DATA, CALIB, PRUNE)
    best, store = run_search(cfg, folder / "search", task=task)
    return model, task, best, store


def test_applying_the_best_policy_rebuilds_the_scored_model_bit_for_bit(searched):
    model, task, best, store = searched
    policy = amc.Policy.load(store.folder / "best_policy.json")  # through the file, as a user would
    assert policy.prune == PRUNE and policy.calibration == CALIB and policy.data == DATA
    applied = amc.apply_policy(model, policy, calibration=amc.calibration_for(policy))
    episode_model = task.engine.prune_keep(best.result.keep).model  # what the environment scored
    for (k, a), (_, b) in zip(episode_model.state_dict().items(), applied.model.state_dict().items()):
        assert torch.equal(a, b), k
    score = task.score(applied.model)
    assert score["top1"] == policy.metrics["top1"] == best.result.metrics["top1"]
    assert score["loss"] == policy.metrics["loss"]
    assert applied.costs["macs"][1] / applied.costs["macs"][0] == pytest.approx(policy.metrics["macs_ratio"])


def test_other_calibration_gives_another_model(searched):
    model, task, best, store = searched
    policy = store.best_policy()
    other = amc.apply_policy(model, policy, calibration=amc.calibration_for(policy, data=DATA.__class__(
        **{**DATA.__dict__, "split_seed": 1})))
    same = amc.apply_policy(model, policy, calibration=amc.calibration_for(policy))
    assert any(not torch.equal(a, b) for a, b in zip(other.model.state_dict().values(), same.model.state_dict().values()))


def test_apply_honours_every_decision_of_the_policy(searched):
    """Edited decisions (counts and indices) are executed exactly: none dropped, none replaced."""
    model, _, _, store = searched
    policy = store.best_policy()
    first, second = policy.groups[0], policy.groups[1]
    first.kept_channels, first.kept_indices = 3, [0, 5, 9]
    first.executed_ratio = 3 / first.channels
    second.kept_channels, second.kept_indices = second.channels, None
    applied = amc.apply_policy(model, policy, prune=PruneConfig(reconstruct=False, bn_batches=0))
    assert applied.selection.kept[first.name].tolist() == [0, 5, 9]
    assert second.name not in applied.selection.kept
    widths = {n: m.out_channels for n, m in applied.model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths[first.name] == 3 and widths[second.name] == second.channels
    for d in policy.groups[2:]:
        assert widths[d.name] == d.kept_channels


def test_apply_without_calibration_is_refused_unless_recovery_is_off(searched):
    model, _, _, store = searched
    policy = store.best_policy()
    with pytest.raises(AmcError, match="need calibration images"):
        amc.apply_policy(model, policy)
    pruned = amc.apply_policy(model, policy, prune=PruneConfig(reconstruct=False, bn_batches=0)).model
    assert amc.cost.macs(pruned, torch.zeros(1, 3, 16, 16)) < amc.cost.macs(model, torch.zeros(1, 3, 16, 16))


def test_configs_reach_what_they_configure(searched):
    """Calibration images, search split and prune settings of the configs are the ones used."""
    _, task, _, store = searched
    assert len(task.engine.calibration) == CALIB.images and task.engine.calibration.batch_size == CALIB.batch_size
    assert len(task.search_labels) == DATA.search_images and task.engine.cfg == PRUNE
    episodes = store.episodes()
    assert len(episodes) == 5 and (episodes.macs_ratio <= 0.5 + 1e-9).all()
    search = load_splits(DATA, ("search",), num_classes=10, image_size=16)["search"]
    assert torch.equal(search.labels, task.search_labels)


@pytest.mark.parametrize("name", available_models())
def test_library_api_on_every_registry_model(name):
    model = build_model(ModelSpec(name)).eval()
    shape = (3, 64, 64) if name.endswith("imagenet") else (3, 32, 32)
    x = torch.randn(2, *shape)
    groups = amc.inspect(model, x)
    assert groups and all(isinstance(g.name, str) and (g.prunable or g.reason) for g in groups)
    assert len({g.name for g in groups}) == len(groups)
    policy = amc.uniform_policy(model, x, 0.5, model_spec={"name": name})
    assert set(policy.ratios) == {g.name for g in groups if g.prunable}
    applied = amc.apply_policy(model, policy, calibration=torch.randn(8, *shape))
    assert applied.costs["macs"][1] <= 0.5 * applied.costs["macs"][0] == 0.5 * amc.cost.macs(model, x)
    assert applied.model(x).shape == model(x).shape
    assert applied.model is not model and amc.cost.macs(model, x) == applied.costs["macs"][0]
