"""The GPU-shaped configuration builds engine actors with what a GPU cluster needs, checked without a GPU."""

from __future__ import annotations

import ray
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from runtime import Settings
from runtime.llm.engine import EngineActor, engine_actor_options


def test_one_gpu_per_engine_actor(ray_cluster: None) -> None:
    settings = Settings(engine="vllm", vllm={"num_gpus": 1, "num_cpus": 1, "replicas": 2})
    options = engine_actor_options(settings)
    assert options == {"num_cpus": 1, "num_gpus": 1}
    # Ray accepts them as actor options (the actor itself would wait for a GPU node).
    ray.remote(EngineActor).options(**options)


def test_tensor_parallel_engine_gets_a_strict_pack_placement_group(ray_cluster: None) -> None:
    settings = Settings(engine="vllm", vllm={"tensor_parallel_size": 4, "num_cpus": 1})
    options = engine_actor_options(settings)
    strategy = options["scheduling_strategy"]
    assert isinstance(strategy, PlacementGroupSchedulingStrategy)
    assert strategy.placement_group_capture_child_tasks  # vLLM's workers land in the group
    group = strategy.placement_group
    try:
        assert group.bundle_specs == [{"CPU": 1.0, "GPU": 1.0}] * 4
        assert options["num_gpus"] == 0  # the GPUs belong to the group's bundles
        assert group.wait(timeout_seconds=0.5) is False  # no GPUs here: it stays pending
    finally:
        remove_placement_group(group)


def test_simulated_and_cpu_engines_hold_no_cpu(ray_cluster: None) -> None:
    assert engine_actor_options(Settings()) == {"num_cpus": 0}
    assert engine_actor_options(Settings(engine="vllm")) == {"num_cpus": 0, "num_gpus": 0}
