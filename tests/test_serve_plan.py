"""codetr serve's replica and codetr batch's actor placement rules (codetr.serve.plan_replicas,
codetr.batch.plan_actors), without Ray: hand-computed cases of the defaults and of the requests
they must refuse."""
import pytest

from codetr.serve import plan_replicas


@pytest.mark.parametrize("replicas, gpus, on_gpu, cluster, expected", [
    (None, None, True, 2.0, (2, 1.0)),     # a CUDA engine: one replica per GPU of the cluster
    (1, None, True, 2.0, (1, 1.0)),        # one replica on a 2-GPU machine holds one GPU
    (None, 0.5, True, 1.0, (2, 0.5)),      # two replicas share the GPU
    (3, 0.5, True, 2.0, (3, 0.5)),
    (None, 2.0, True, 5.0, (2, 2.0)),      # whole replicas only
    (None, 0.1, True, 1.0, (10, 0.1)),     # 1.0 // 0.1 is 9.0 in floating point
    (None, None, False, None, (1, 0.0)),   # a CPU engine: one replica, no GPU
    (4, None, False, 0.0, (4, 0.0)),
    (None, 1.0, False, 1.0, (1, 1.0)),     # a CPU engine may still be given a GPU's worth of placement
])
def test_defaults_and_requests(replicas, gpus, on_gpu, cluster, expected):
    assert plan_replicas(replicas, gpus, on_gpu, cluster) == expected


@pytest.mark.parametrize("replicas, gpus, on_gpu, cluster, message", [
    (3, 1.0, True, 2.0, r"3 replica\(s\) x --gpus-per-replica 1 need 3 GPUs; the Ray cluster has 2"),
    (None, None, True, 0.0, r"1 replica\(s\) x --gpus-per-replica 1 need 1 GPUs; the Ray cluster has 0"),
    (None, 0.0, True, 1.0, r"--gpus-per-replica 0 with a CUDA engine"),
    (0, None, False, None, r"--replicas must be >= 1 \(got 0\)"),
    (None, -1.0, False, None, r"--gpus-per-replica must be >= 0 \(got -1.0\)"),
])
def test_impossible_requests_are_refused(replicas, gpus, on_gpu, cluster, message):
    with pytest.raises(ValueError, match=message):
        plan_replicas(replicas, gpus, on_gpu, cluster)


@pytest.mark.parametrize("actors, on_gpu, cluster, expected", [
    (None, True, 2.0, (2, 1)),      # one actor per GPU
    (1, True, 2.0, (1, 1)),
    (None, False, 2.0, (1, 0)),     # a CPU engine takes no GPU, also on a GPU cluster
    (3, False, 0.0, (3, 0)),
])
def test_batch_actor_placement(actors, on_gpu, cluster, expected):
    from codetr.batch import plan_actors

    assert plan_actors(actors, on_gpu, cluster) == expected


@pytest.mark.parametrize("actors, cluster, message", [
    (None, 0.0, "the engine runs on cuda but the Ray cluster has no GPU"),
    (3, 2.0, "--actors 3: each actor of a cuda engine holds one GPU; the Ray cluster has 2"),
])
def test_batch_actors_the_cluster_cannot_hold_are_refused(actors, cluster, message):
    from codetr.batch import BatchError, plan_actors

    with pytest.raises(BatchError, match=message):
        plan_actors(actors, True, cluster)
