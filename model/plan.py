"""Staged training plans: the training shards split into subsets, trained stage after stage, cycling through them.

Trained this way, a run sees data larger than a host's page cache one cacheable subset at a time (a fifth of
MIRFLICKR-1M is 30 GB of shards), and each stage continues from the stage before: the same networks, the same
optimizer moments, the same EMA, as one run. Where a stage starts and ends is a function of the plan and the
data alone, so a run killed anywhere resumes in the same stage, on the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class TrainingPlan:
    """``stages`` stages of ``epochs_per_stage`` epochs; stage ``k`` (from 1) trains on subset ``(k - 1) mod n``.

    ``subsets``: a number (the training shards in that many contiguous, near-equal parts) or the explicit lists
    of shards; :func:`resolve_subsets` turns a number into the lists, so ``config.yaml`` records them.
    """

    subsets: int | list[list[int]] = 1
    stages: int = 1
    epochs_per_stage: int = 1


@dataclass(frozen=True)
class Stage:
    """One stage of a plan: which subset, its steps ``[first_step, end_step)`` and its first epoch's number.

    Epochs are numbered across stages (stage ``k`` starts at epoch ``(k - 1) · epochs_per_stage``), so every
    stage's permutations differ, and the epoch figure of a run counts its passes over data of a subset's size.
    """

    number: int
    subset: int
    shards: tuple[int, ...]
    first_step: int
    end_step: int
    first_epoch: int


class PlanError(ValueError):
    """A plan cannot run: the message starts with the field it is about (``plan.stages``, ``stage``)."""


def resolve_subsets(plan: TrainingPlan, shards: Sequence[int], holdout_shard: int) -> list[list[int]]:
    """The plan's subsets as lists of shards, checked against the training ``shards`` and the held-out one."""
    if plan.stages <= 0:
        raise PlanError(f"plan.stages: must be positive, got {plan.stages}")
    if plan.epochs_per_stage <= 0:
        raise PlanError(f"plan.epochs_per_stage: must be positive, got {plan.epochs_per_stage}")
    if isinstance(plan.subsets, int):
        if not 1 <= plan.subsets <= len(shards):
            raise PlanError(f"plan.subsets: {plan.subsets} subsets of {len(shards)} training shard(s)")
        return [part.tolist() for part in np.array_split(np.array(sorted(shards)), plan.subsets)]
    if not plan.subsets or any(not subset for subset in plan.subsets):
        raise PlanError("plan.subsets: every subset must list at least one shard")
    for subset in plan.subsets:
        if holdout_shard in subset:
            raise PlanError(f"plan.subsets: {subset} holds the held-out shard {holdout_shard}")
        if len(set(subset)) != len(subset):
            raise PlanError(f"plan.subsets: {subset} lists a shard twice")
        foreign = sorted(set(subset) - set(shards))
        if foreign:
            raise PlanError(f"plan.subsets: shard(s) {foreign} of {subset} are not training shards {sorted(shards)}")
    return [sorted(subset) for subset in plan.subsets]


def plan_stages(
    plan: TrainingPlan,
    subsets: Sequence[Sequence[int]],
    batches_per_epoch: Sequence[int],
    n_critic: int,
    length_key: str = "plan.epochs_per_stage",
) -> list[Stage]:
    """The stages of ``plan``; ``batches_per_epoch[i]`` is subset ``i``'s (a step takes ``n_critic`` batches).

    ``length_key`` names the setting an error blames for a stage too short to hold a step.
    """
    stages, step = [], 0
    for k in range(plan.stages):
        subset = k % len(subsets)
        steps = plan.epochs_per_stage * batches_per_epoch[subset] // n_critic
        if steps == 0:
            raise PlanError(
                f"{length_key}: {plan.epochs_per_stage} epoch(s) of subset {subset + 1}'s "
                f"{batches_per_epoch[subset]} batches hold no step of {n_critic} batches"
            )
        stages.append(Stage(k + 1, subset + 1, tuple(subsets[subset]), step, step + steps, k * plan.epochs_per_stage))
        step += steps
    return stages


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage that step ``step`` (0-based: the next one to train) belongs to; the last one past the end."""
    return next((stage for stage in stages if step < stage.end_step), stages[-1])
