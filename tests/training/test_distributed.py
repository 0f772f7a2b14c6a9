import pytest
import torch

from kubedistill.training import distributed
from kubedistill.training.distributed import LaunchEnvironmentError, launch_info

TORCHRUN_ENV = {
    "RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
}  # fmt: skip


def test_no_launch_environment_means_one_process():
    info = launch_info({})
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (0, 1, 0, 1)


def test_full_torchrun_environment_is_read():
    info = launch_info(TORCHRUN_ENV)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (1, 4, 1, 2)


def test_half_set_environment_names_what_is_missing():
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}  # a PyTorchJob pod, no torchrun
    with pytest.raises(LaunchEnvironmentError) as info:
        launch_info(env)
    message = str(info.value)
    assert "LOCAL_RANK, LOCAL_WORLD_SIZE missing" in message
    assert "torchrun" in message and "RANK is the pod index" in message


def test_non_integer_values_are_reported():
    with pytest.raises(LaunchEnvironmentError, match="non-integer"):
        launch_info({**TORCHRUN_ENV, "WORLD_SIZE": "two"})


def test_helpers_work_in_a_single_process():
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    distributed.barrier()
    x = torch.randn(3, 4)
    assert distributed.all_gather(x) is x
    assert distributed.broadcast_int(7, torch.device("cpu")) == 7


def test_a_local_process_failing_with_any_error_raises_its_traceback_in_the_caller(monkeypatch):
    """Without this the caller sees torch's ChildFailedError, whose summary says only "exitcode: 1"."""
    import math

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(distributed.LocalProcessError) as caught:
        distributed.run_local_processes(2, math.sqrt, -1.0)  # a builtin: the spawned processes can unpickle it
    message = str(caught.value)
    assert "local process" in message and "ValueError: math domain error" in message
    assert distributed.run_local_processes(2, math.sqrt, 4.0) == {0: 2.0, 1: 2.0}

