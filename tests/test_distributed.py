"""The data-parallel pieces that need no MPI: launcher detection, thread sharing, the flat
gradient buffer, the rank checks (against a stand-in communicator) and the single-process path.
tests/test_mpi.py runs real ranks."""

import sys

import numpy as np
import pytest

from nanollm import TransformerLanguageModel, distributed, mpi_launch, train_with_config
from nanollm.step import GradientBuffer

LAUNCHER_VARIABLES = [name for names in mpi_launch.LAUNCHERS for name in names] + [mpi_launch.SWITCH]


@pytest.fixture
def no_launcher(monkeypatch):
    for name in LAUNCHER_VARIABLES + list(mpi_launch.THREAD_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_WORLD", None)
    return monkeypatch


def test_launcher_variables_give_rank_size_and_ranks_per_machine(no_launcher):
    assert mpi_launch.launched_ranks() == (0, 1, 1)
    assert not mpi_launch.wants_mpi()
    no_launcher.setenv("PMI_SIZE", "4")
    no_launcher.setenv("PMI_RANK", "3")
    no_launcher.setenv("MPI_LOCALNRANKS", "2")
    assert mpi_launch.launched_ranks() == (3, 4, 2)
    assert mpi_launch.wants_mpi()
    no_launcher.setenv(mpi_launch.SWITCH, "0")  # each rank alone
    assert mpi_launch.launched_ranks() == (0, 1, 1) and not mpi_launch.wants_mpi()


def test_open_mpi_variables_are_read_too(no_launcher):
    no_launcher.setenv("OMPI_COMM_WORLD_SIZE", "2")
    no_launcher.setenv("OMPI_COMM_WORLD_RANK", "1")
    assert mpi_launch.launched_ranks() == (1, 2, 2)  # no local size: all on this machine


def test_ranks_on_one_machine_share_its_cores_unless_the_user_chose(no_launcher):
    no_launcher.setattr(mpi_launch, "cores", lambda: 8)
    no_launcher.setenv("PMI_SIZE", "4")
    no_launcher.setenv("MPI_LOCALNRANKS", "4")
    assert mpi_launch.share_cores_between_ranks() == {name: "2" for name in mpi_launch.THREAD_VARIABLES}
    for name in mpi_launch.THREAD_VARIABLES:
        no_launcher.delenv(name)
    no_launcher.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands, for every pool
    assert mpi_launch.share_cores_between_ranks() == {}


def test_a_process_started_alone_trains_alone(no_launcher):
    assert isinstance(distributed.world(), distributed.SingleProcess)


def test_an_mpi_launch_without_mpi4py_is_a_clear_error(no_launcher):
    no_launcher.setenv("PMI_SIZE", "2")
    no_launcher.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails
    with pytest.raises(ImportError, match=r"started by an MPI launcher with 2 ranks but mpi4py is not installed: "
                                          r"pip install \"\.\[mpi\]\".*NANOLLM_MPI=0"):
        distributed.world()


def test_rank_zero_draws_what_a_single_process_draws_and_other_ranks_their_own_stream():
    assert distributed.rank_seed(7, 0) == 7
    draws = [np.random.default_rng(distributed.rank_seed(7, rank)).integers(0, 1 << 30, 4) for rank in range(3)]
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[1], draws[2])


def test_the_gradient_buffer_is_one_array_whose_views_have_the_parameters_shapes():
    params = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)}
    buffer = GradientBuffer(params)
    assert buffer.flat.shape == (10 + 4,) and buffer.gradient_bytes == 40
    buffer.flat[:] = 7  # the first micro-batch overwrites whatever the last step left
    buffer.zero_counts()
    buffer.add({"a": np.ones((2, 3), np.float32), "b": np.arange(4, dtype=np.float32)}, 2, first=True)
    buffer.add_counts(np.float32(3.0), 2, 2, np.int64(1))
    buffer.add({"a": np.ones((2, 3), np.float16), "b": np.full(4, 60000, np.float16)}, 2)  # widened, no overflow
    buffer.add_counts(np.float16(0.0), 2, 1, np.int64(2))
    assert np.shares_memory(buffer.grads["a"], buffer.flat)
    np.testing.assert_array_equal(buffer.flat[:10], [4] * 6 + [120000, 120002, 120004, 120006])
    assert buffer.counts() == (6.0, 4.0, 3.0, 3.0)  # loss x targets, targets, windows, top-1 hits
    assert buffer.mean() == (1.5, 0.25)  # the loss's mean over the 4 counted targets; the gradients' factor
    assert buffer.accuracy() == 0.75


class FakeRanks:
    """A stand-in communicator: this is rank ``rank`` and the others answered ``gathered``."""

    def __init__(self, rank, gathered=None, broadcast=None):
        self.rank, self.size, self.is_root = rank, 2, rank == 0
        self.gathered, self.broadcasted = gathered, broadcast

    def allgather(self, value):
        return self.gathered

    def broadcast(self, value):
        return value if self.is_root else self.broadcasted


def test_ranks_started_with_different_configs_are_told_which_keys_differ():
    mine = {"learning_rate": 1e-3, "seed": 1}
    distributed.check_same_config(FakeRanks(0, [mine, dict(mine)]), mine)  # the same: no error
    with pytest.raises(ValueError, match="rank 1's config differs from rank 0's in learning_rate, seed; start every"):
        distributed.check_same_config(FakeRanks(0, [mine, {"learning_rate": 1e-2, "seed": 2}]), mine)


def test_a_parameter_that_differs_by_one_bit_is_found_and_named():
    params = {"wte": np.ones((3, 2), np.float32), "ln_f.weight": np.ones(2, np.float32)}
    nudged = {"wte": params["wte"].copy(), "ln_f.weight": params["ln_f.weight"].copy()}
    nudged["wte"].view(np.uint32)[1, 1] += 1  # the next float up
    same = distributed.parameter_digests(params)
    distributed.check_identical(FakeRanks(0, [same, same]), params, step=10)
    with pytest.raises(RuntimeError, match="ranks disagree after step 10: rank 1's wte differ from rank 0's"):
        distributed.check_identical(FakeRanks(0, [same, distributed.parameter_digests(nudged)]), params, step=10)
    with pytest.raises(RuntimeError, match="ranks disagree before training"):
        distributed.check_identical(FakeRanks(1, [same, distributed.parameter_digests(nudged)]), params, step=0)


def test_an_error_on_rank_zero_is_raised_on_every_rank():
    def fails():
        raise OSError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        distributed.root_only(FakeRanks(0), fails)
    with pytest.raises(ValueError, match="disk full"):  # rank 1 did nothing and hears of it
        distributed.root_only(FakeRanks(1, broadcast="disk full"), lambda: pytest.fail("rank 1 ran it"))
    assert distributed.root_only(FakeRanks(1, broadcast=None), lambda: pytest.fail("rank 1 ran it")) is None


def test_alone_the_training_results_say_one_rank_and_no_communication(tmp_path):
    model = TransformerLanguageModel(vocab_size=11, embedding_dim=8, num_layers=1, ffn_hidden_dim=16, num_heads=2,
                                     max_seq_len=8, seed=0)
    ids = np.random.default_rng(0).integers(0, 11, 400)
    results = train_with_config(model, ids, {"num_steps": 3, "batch_size": 2, "log_interval": 0, "eval_interval": 0,
                                             "param_check_interval": 1})
    assert (results["ranks"], results["rank"], results["communication_seconds"]) == (1, 0, 0.0)


def test_param_check_interval_is_a_checked_config_key():
    from nanollm.config import resolve

    assert resolve({})["param_check_interval"] == 100
    with pytest.raises(ValueError, match="param_check_interval"):
        resolve({"param_check_interval": -1})


def test_the_paper_estimate_is_a_ring_allreduce_at_the_link_rate():
    from nanollm.tools.parallel_bench import LATENCY_SECONDS, LINK_EFFICIENCY, estimate, ring_allreduce_seconds

    assert ring_allreduce_seconds(1e9, 1, 10) == 0.0
    rate = 10e9 / 8 * LINK_EFFICIENCY
    assert ring_allreduce_seconds(1e9, 8, 10) == pytest.approx(2 * 7 / 8 * 1e9 / rate + 14 * LATENCY_SECONDS)
    slow = estimate(0.1, 1e9, 8, 10)
    assert slow["efficiency"] == pytest.approx(0.1 / (0.1 + slow["exchange_ms"] / 1e3))
    assert estimate(0.1, 1e6, 8, 10)["efficiency"] > 0.9 > slow["efficiency"]
