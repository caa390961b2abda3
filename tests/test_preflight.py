"""Preflight resource rules on node lists shaped like `ray.nodes()` (reference: Ray's documented
fractional-GPU rule: fractions below 1 or whole numbers; a trial must fit on one node)."""
import pytest

from pipelines.preflight import resource_problem


def node(cpu, gpu=0.0, alive=True):
    return {"Alive": alive, "Resources": {"CPU": cpu, **({"GPU": gpu} if gpu else {})}}


@pytest.mark.parametrize("cpus, gpus", [(1, 0), (4, 0.25), (4, 0.5), (2, 1), (8, 2)])
def test_requests_that_fit_on_one_node_pass(cpus, gpus):
    assert resource_problem([node(2), node(8, 2.0)], cpus, gpus) is None


@pytest.mark.parametrize("nodes, cpus, gpus, message", [
    ([node(2), node(2)], 1, 0.5, "gpus_per_trial=0.5 but no Ray node has that many GPUs (largest: 0)"),
    ([node(8, 1.0)], 1, 2, "gpus_per_trial=2 but no Ray node has that many GPUs (largest: 1)"),
    ([node(8, 4.0)], 1, 1.5, "fractions below 1"),
    ([node(2), node(2)], 3, 0, "cpus_per_trial=3 but the largest Ray node has 2 CPUs"),  # 4 in total, 2 per node
    ([node(2), node(16, 1.0, alive=False)], 1, 1, "largest: 0"),  # dead nodes do not count
])
def test_requests_no_node_can_hold_are_named(nodes, cpus, gpus, message):
    assert message in resource_problem(nodes, cpus, gpus)
