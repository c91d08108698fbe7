"""The fine-grained AMC environment: per-layer weight sparsity for unstructured (mask) pruning."""
from __future__ import annotations

import math

from amc.config import EnvConfig
from amc.cost import WeightBudget
from amc.errors import AmcError

from .channel_pruning import SCORES, ChannelPruningEnv, EpisodeResult, Scored
from .observation import WeightObserver
from .task import PruningTask


class WeightPruningEnv(ChannelPruningEnv):
    """
    ## Description
    Walks the prunable conv and linear layers of a trained CNN in forward order (fine-grained AMC, He
    et al. 2018, section 4.2). At each step the agent chooses how much of the current layer's weights to
    keep; after the last layer the smallest-magnitude weights of each layer are masked
    (:func:`amc.unstructured.magnitude_masks`, ``torch.nn.utils.prune`` masks, no reconstruction) and the
    masked model is scored on the *search* split. A weight policy file built from the episode
    (``Policy.for_weights``) rebuilds exactly this model with :func:`amc.prune_unstructured`.

    ## Action Space
    ``Box(0, 1, (1,), float32)``: the **preserve ratio** of the current layer, the fraction of its weights
    kept (its sparsity is 1 - action). Clipped to ``[lbound, rbound]`` and turned into a whole number of
    weights (at least one). In resource-constrained mode the parameter budget is met by ``budget_rule``
    exactly as in :class:`ChannelPruningEnv` (``clamp``: AMC's forward-order cap; ``scale``: one common
    factor at the episode's end).

    ## Observation Space
    ``Box(0, 1, (11,), float32)``: the features of :class:`ChannelPruningEnv` for the layer
    (``out_channels``, ``in_channels``, input size, stride, kernel; ``cost`` = its weights / dense
    parameters, ``reduced`` = parameters removed so far / dense, ``rest`` = weights of this and later
    layers / dense, ``previous_action``).

    ## Rewards
    0 on every step but the last. On the last step, with ``error = 1 - accuracy`` on the search split:
    ``mode="accuracy"`` (accuracy-guaranteed, the paper's fine-grained setting): ``R = -scale * error *
    log(params)``, params = the masked model's non-zero parameters; ``mode="constrained"``: ``R = -scale *
    error`` under the budget on parameters.

    ## Starting State / Episode End
    As in :class:`ChannelPruningEnv`: the first layer, deterministic; ``terminated=True`` after the last
    layer, with the :class:`EpisodeResult` in ``info["result"]`` (``keep``: kept weights per layer;
    ``executed``: kept fraction; ``kept``: empty, the masks follow from magnitudes; ``cost_ratio``:
    ``params``).

    ## Arguments
    - ``task``: a :class:`~amc_envs.task.PruningTask` whose prune config has ``granularity="weight"``.
    - ``cfg``: :class:`~amc.config.EnvConfig` with ``cost="params"``; ``lbound`` is usually lowered for
      weights (e.g. 0.02: a layer may lose 98% of its weights). Layers matching the task's
      ``exclude`` globs stay dense.
    """

    def __init__(self, task: PruningTask | None = None, cfg: EnvConfig = EnvConfig(cost="params", lbound=0.05)):
        task = task or PruningTask.tiny(granularity="weight")
        if task.prune_config.granularity != "weight":
            raise AmcError("the weight-pruning environment needs a task with PruneConfig(granularity='weight')")
        if cfg.cost != "params":
            raise AmcError(f"fine-grained pruning is budgeted in parameters (cost='params'), not {cfg.cost}")
        super().__init__(task, cfg)

    def make_budget(self, target: float) -> WeightBudget:
        return WeightBudget(self.task.model, target, lbound=self.cfg.lbound, rbound=self.cfg.rbound,
                            keep_dense=self.task.exclude)

    def make_observer(self) -> WeightObserver:
        return WeightObserver(self.budget, self.task.graph)

    def score(self, keep) -> Scored:
        """Mask to ``keep`` (kept weights per layer), check the parameter count, score it."""
        metrics, result = self.task.evaluate_weights(keep)
        expected = self.budget.ratio(keep)
        if not math.isclose(metrics["params_ratio"], expected, rel_tol=0, abs_tol=1e-9):
            raise AmcError(f"the masked model keeps {metrics['params_ratio']:.6f} of the parameters, the accounting "
                           f"says {expected:.6f}")
        return Scored(metrics, {}, dict(result.timings))

    def episode_result(self, keep, requested, scored: Scored) -> EpisodeResult:
        metrics = scored.metrics
        return EpisodeResult(
            keep=dict(keep), requested=dict(requested or {n: k / self.budget.size(n) for n, k in keep.items()}),
            executed={g.name: keep[g.name] / g.size for g in self.groups}, kept={},
            cost_ratio={"params": metrics["params_ratio"]}, metrics={k: metrics[k] for k in SCORES if k in metrics},
            reward=self.reward_of(metrics[self.score_key], metrics["params"]), timings=dict(scored.timings))
