"""The training loop as it runs on a GPU, checked on the CPU.

On a GPU the loop reads nothing from the device between log steps: the loss, the gradient
norm, the clip factor and the divergence guard stay device scalars, AdamW reads its grad_scale
and step count through pointers, and a non-finite step is skipped on the device (see
TrainingStep.guard). On the CPU the host reads them every step because that is free. These
tests make a CPU run take the GPU's path (reads_every_step off) and check that it trains to the
same bits, reads the host only at the steps that need it, and stops on divergence with the
last good weights."""

import numpy as np
import pytest

from nanollm import TransformerLanguageModel, train_with_config
from nanollm import train as train_module



def tiny_model(vocab_size, dtype="float32"):
    return TransformerLanguageModel(vocab_size, embedding_dim=16, num_layers=1, num_heads=2, ffn_hidden_dim=32,
                                    max_seq_len=16, dtype=dtype, seed=0)


# threads=1: the backward hooks below count calls per micro-batch (shards would add calls, from two threads)
CFG = {"batch_size": 4, "grad_accum_steps": 2, "num_steps": 12, "learning_rate": 3e-3, "max_grad_norm": 0.5,
       "log_interval": 5, "eval_interval": 0, "val_fraction": 0.0, "threads": 1}


class GpuPath:
    """While ``on``, runs read the device guard only at the steps that need it, as on a GPU;
    ``reads`` lists the 1-based steps at which they read it."""

    def __init__(self):
        self.on, self.reads = True, []


@pytest.fixture()
def gpu_path(monkeypatch):
    original_init, original_read = train_module.Trainer.__init__, train_module.Trainer.read_guard
    path = GpuPath()

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.training_step.reads_every_step = not path.on

    def read_guard(self, step):
        path.reads.append(step + 1)
        return original_read(self, step)

    monkeypatch.setattr(train_module.Trainer, "__init__", init)
    monkeypatch.setattr(train_module.Trainer, "read_guard", read_guard)
    return path


def _train(ids, vocab, cfg, backward_hook=None):
    model = tiny_model(vocab)
    if backward_hook is not None:
        model.backward = backward_hook(model.backward)
    return model, train_with_config(model, ids, cfg)


def _assert_same(model, reference, results, reference_results):
    assert results["final_loss"] == reference_results["final_loss"]
    assert results["final_grad_norm"] == reference_results["final_grad_norm"]
    assert [r["loss"] for r in results["history"]] == [r["loss"] for r in reference_results["history"]]
    for name, p in reference.params.items():
        np.testing.assert_array_equal(model.params[name], p, err_msg=name)


def test_deferred_reads_train_to_the_same_bits_and_read_only_when_needed(ids_and_vocab, gpu_path):
    ids, vocab = ids_and_vocab
    model, results = _train(ids, vocab, CFG)
    assert gpu_path.reads == [1, 5, 10, 12]  # the log steps and the last, not every step
    gpu_path.on = False
    reference, reference_results = _train(ids, vocab, CFG)
    assert len(gpu_path.reads) == 4 + 12  # read every step
    assert results["final_grad_norm"] > CFG["max_grad_norm"] and results["steps"] == 12  # clipping was active
    _assert_same(model, reference, results, reference_results)


def _poison_third_step(original_backward):
    """A backward that puts a NaN into the gradient of step 3's first micro-batch (two per step)."""
    calls = []

    def backward(dlogits=None, dloss=1.0):
        grads = original_backward(dlogits, dloss)
        calls.append(1)
        if len(calls) == 5:
            grads["blocks.0.mlp.fc.bias"][0] = np.nan
        return grads

    return backward


def test_a_deferred_divergence_stops_with_the_last_good_weights(ids_and_vocab, gpu_path):
    ids, vocab = ids_and_vocab
    model, results = _train(ids, vocab, CFG, _poison_third_step)
    assert gpu_path.reads == [1, 5]  # read at step 5, it finds step 3
    assert results["diverged"] and results["steps"] == 2 and results["tokens_seen"] == 2 * 2 * 4 * 16
    assert results["stopped_because"].startswith("diverged at step 3: gradient norm is nan; training stopped "
                                                 "before updating, nor in the 2 step(s) queued after it")
    gpu_path.on = False  # the CPU's path stops at step 3 itself, before its update
    reference, reference_results = _train(ids, vocab, CFG, _poison_third_step)
    assert reference_results["steps"] == 2 and "nor in" not in reference_results["stopped_because"]
    _assert_same(model, reference, results, reference_results)


class _OtherDeviceStream:
    """A dropout source whose state names another generator kind, as a GPU's CounterGenerator does."""

    def __init__(self, seed):
        self.generator = np.random.default_rng(seed)
        self.bit_generator = self

    def random(self, shape, dtype):
        return self.generator.random(shape, dtype=dtype)

    @property
    def state(self):
        return {"bit_generator": "nanollm.CounterGenerator", "seed": 1, "counter": 0}


def test_a_checkpoint_from_another_device_resumes_with_a_fresh_dropout_stream(ids_and_vocab, tmp_path, monkeypatch,
                                                                             capsys):
    ids, vocab = ids_and_vocab
    cfg = {**CFG, "num_steps": 4, "checkpoint_interval": 2, "dropout": 0.1, "checkpoint_dir": str(tmp_path)}
    with monkeypatch.context() as patch:
        patch.setattr(train_module.backends, "random_generator", _OtherDeviceStream)
        train_with_config(tiny_model(vocab), ids, cfg)
    resumed = train_with_config(tiny_model(vocab), ids, {**cfg, "num_steps": 6,
                                                         "resume_from": str(tmp_path / "checkpoint_step_2.npz")})
    assert resumed["steps"] == 6 and not resumed["diverged"]
    assert ("holds a nanollm.CounterGenerator dropout stream and this device draws from PCG64: the dropout "
            "stream starts fresh") in capsys.readouterr().out
