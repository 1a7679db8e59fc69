"""Checkpoints: round trip, clear mismatch errors, atomic writes, no pickle."""

import numpy as np
import pytest

from nanollm import CharTokenizer, TransformerLanguageModel, load_checkpoint, save_checkpoint
from nanollm import checkpoint as checkpoint_module
from nanollm.optim import OPTIMIZERS


def tiny_model(seed=0, vocab_size=11, embedding_dim=16, dtype="float32"):
    return TransformerLanguageModel(vocab_size, embedding_dim=embedding_dim, num_layers=1, num_heads=2, max_seq_len=8,
                                    dtype=dtype, seed=seed)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_round_trip_restores_parameters_optimizer_state_and_metadata(tmp_path, optimizer):
    model = tiny_model(seed=1)
    states = {name: OPTIMIZERS[optimizer].init(p) for name, p in model.params.items()}
    rng = np.random.default_rng(3)
    for name, p in model.params.items():  # one update, so the state holds real numbers
        OPTIMIZERS[optimizer].update(p, rng.normal(size=p.shape).astype(p.dtype), states[name], lr=0.1)
    tokenizer = CharTokenizer().build_vocab("abcdefghijk")
    generator = np.random.default_rng(7)
    path = save_checkpoint(tmp_path / "ck.npz", model, optimizer_state=states, step=5, loss=1.25,
                           config={"learning_rate": 0.1}, tokenizer=tokenizer,
                           rng_states={"batches": generator.bit_generator.state}, extra={"best_val_loss": 1.5})

    fresh = tiny_model(seed=2)
    fresh_states = {name: OPTIMIZERS[optimizer].init(p) for name, p in fresh.params.items()}
    info = load_checkpoint(path, fresh, optimizer_state=fresh_states, tokenizer=tokenizer)
    for name, p in model.params.items():
        assert fresh.params[name].dtype == p.dtype and np.array_equal(fresh.params[name], p)
        for key, value in states[name].items():
            if hasattr(value, "shape"):
                assert np.array_equal(fresh_states[name][key], value)
            else:
                assert fresh_states[name][key] == value
    assert (info["step"], info["loss"], info["config"], info["extra"]) == (5, 1.25, {"learning_rate": 0.1},
                                                                             {"best_val_loss": 1.5})
    assert info["tokenizer"].chars == tokenizer.chars and info["model_config"] == model.config
    restored = np.random.default_rng(0)
    restored.bit_generator.state = info["rng_states"]["batches"]
    assert restored.integers(1 << 30) == generator.integers(1 << 30)


def test_load_without_a_model_builds_one_from_the_saved_config(tmp_path):
    model = tiny_model(seed=4, dtype="float64")
    save_checkpoint(tmp_path / "ck.npz", model)
    info = load_checkpoint(tmp_path / "ck.npz")
    assert info["model"].config == model.config
    assert all(np.array_equal(info["model"].params[n], p) for n, p in model.params.items())


def test_mismatches_are_clear_errors(tmp_path):
    save_checkpoint(tmp_path / "ck.npz", tiny_model(), tokenizer=CharTokenizer().build_vocab("abcdefghijk"))
    with pytest.raises(ValueError, match="vocabulary of 11 tokens but the model has vocab_size=12"):
        load_checkpoint(tmp_path / "ck.npz", tiny_model(vocab_size=12))
    with pytest.raises(ValueError, match=r"embedding_dim=16 \(checkpoint\) vs 32 \(model\)"):
        load_checkpoint(tmp_path / "ck.npz", tiny_model(embedding_dim=32))
    with pytest.raises(ValueError, match="different tokenizer vocabulary"):
        load_checkpoint(tmp_path / "ck.npz", tiny_model(), tokenizer=CharTokenizer().build_vocab("abcdefghijz"))
    with pytest.raises(ValueError, match="holds no optimizer state"):
        model = tiny_model()
        load_checkpoint(tmp_path / "ck.npz", model, optimizer_state={n: OPTIMIZERS["adamw"].init(p)
                                                                       for n, p in model.params.items()})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz", tiny_model())
    np.savez(tmp_path / "plain.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="without nanollm metadata"):
        load_checkpoint(tmp_path / "plain.npz", tiny_model())
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.npz", tiny_model())


def test_checkpoints_hold_no_pickled_objects(tmp_path):
    model = tiny_model()
    states = {name: OPTIMIZERS["sgd"].init(p) for name, p in model.params.items()}  # buffers still None
    save_checkpoint(tmp_path / "ck.npz", model, optimizer_state=states, config={"betas": (0.9, 0.99)})
    with np.load(tmp_path / "ck.npz", allow_pickle=False) as archive:
        assert all(archive[key].dtype != object for key in archive.files)


def test_a_crash_in_the_middle_of_a_write_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_final.npz"
    old = tiny_model(seed=1)
    save_checkpoint(path, old, step=1)

    def crash_halfway(file, **arrays):
        file.write(b"PK\x03\x04 half of a zip archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint_module.np, "savez", crash_halfway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, tiny_model(seed=2), step=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_final.npz"]  # no temporary file left
    model = tiny_model(seed=3)
    assert load_checkpoint(path, model)["step"] == 1
    assert all(np.array_equal(model.params[n], p) for n, p in old.params.items())
