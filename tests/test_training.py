"""The training loop: gradients through heads and losses, truncated BPTT, clipping, the NaN
stop, batching and shuffling, progress, and the same losses on every backend."""

from __future__ import annotations

import os

import numpy as np
import pytest

import fastrnn
from conftest import assert_matches_central_differences, central_differences, fd_tolerance
from fastrnn import io
from fastrnn.layers import GRU, LSTM, RNN, Linear
from fastrnn.losses import bce_with_logits, mask_from_lengths, mse, softmax_cross_entropy
from fastrnn.optim import SGD, StepLR, global_norm
from fastrnn.training import (
    Callback,
    EarlyStopping,
    History,
    LambdaCallback,
    ModelCheckpoint,
    evaluate,
    train,
)

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


class Tagger:
    """A reference model on the layer API: recurrent stack + Linear head + a loss.

    Data: ``(X (N, T, D), y, lengths (N,))`` batch-first. ``head="every"``: a prediction
    at every real step (y (N, T) classes for "ce", (N, T, K) for "mse"); ``head="last"``:
    one prediction at each sequence's last real step (y (N, K) for "bce"). Implements
    :class:`fastrnn.training.SupportsTBPTT` for unidirectional every-step models.
    """

    def __init__(
        self,
        cell="lstm",
        *,
        D=3,
        H=4,
        K=3,
        num_layers=1,
        bidirectional=False,
        head="every",
        loss="ce",
        seed=0,
        dtype=np.float64,
    ):
        self.rnn = CELLS[cell](
            D, H, num_layers, bidirectional=bidirectional, batch_first=True, seed=seed, dtype=dtype
        )
        self.head = Linear(H * self.rnn.num_directions, K, seed=seed + 1, dtype=dtype)
        self.head_kind, self.loss_kind = head, loss

    def parameters(self):
        return {
            **{f"rnn.{k}": v for k, v in self.rnn.params.items()},
            **{f"head.{k}": v for k, v in self.head.params.items()},
        }

    def _grads(self):
        return {
            **{f"rnn.{k}": v for k, v in self.rnn.grads.items()},
            **{f"head.{k}": v for k, v in self.head.grads.items()},
        }

    def _loss(self, logits, y, mask):
        fn = {"ce": softmax_cross_entropy, "bce": bce_with_logits, "mse": mse}[self.loss_kind]
        return fn(logits, y, mask=mask)

    def _run(self, X, y, lengths, state=None, mask=None):
        out, final = self.rnn.forward(X, state, lengths=lengths)
        B = X.shape[0]
        if self.head_kind == "every":
            logits = self.head.forward(out)
            if mask is None:
                mask = mask_from_lengths(lengths, X.shape[1], batch_first=True)
            loss, dlogits = self._loss(logits, y, mask)
            dout = self.head.backward(dlogits)
        else:
            last = out[np.arange(B), lengths - 1]
            loss, dlogits = self._loss(self.head.forward(last), y, None)
            dout = np.zeros_like(out)
            dout[np.arange(B), lengths - 1] = self.head.backward(dlogits)
        self.rnn.backward(dout)
        return loss, final

    def loss_and_grads(self, batch):
        X, y, lengths = batch
        loss, _ = self._run(X, y, lengths)
        return loss, self._grads()

    def num_steps(self, batch):
        return batch[0].shape[1]

    def chunk_loss_and_grads(self, batch, start, stop, state):
        X, y, lengths = batch
        mask = mask_from_lengths(lengths, X.shape[1], batch_first=True)[:, start:stop]
        lens = np.clip(lengths - start, 1, stop - start)  # finished sequences: masked out
        loss, final = self._run(X[:, start:stop], y[:, start:stop], lens, state, mask)
        return loss, self._grads(), final


def _data(N=6, T=5, D=3, K=3, seed=0, kind="ce", dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, T, D)).astype(dtype)
    lengths = rng.integers(1, T + 1, size=N)
    lengths[0] = T
    if kind == "ce":
        y = rng.integers(0, K, size=(N, T))
    elif kind == "mse":
        y = rng.normal(size=(N, T, K))
    else:
        y = rng.integers(0, 2, size=(N, K)).astype(float)
    return X, y, lengths


@pytest.fixture(autouse=True)
def _reference_backend():
    """The reference backend unless a test asks for another (keeps the loop tests fast)."""
    with fastrnn.use_backend("numpy"):
        yield


def _copy_params(model):
    return {k: v.copy() for k, v in model.parameters().items()}


# --- gradients through heads and losses --------------------------------------------------


@pytest.mark.parametrize(
    "cell, layers, bidir, head, loss",
    [
        ("lstm", 2, True, "every", "ce"),
        ("gru", 2, True, "last", "bce"),
        ("rnn", 1, False, "every", "mse"),
    ],
)
def test_gradcheck_through_stack_head_and_loss(cell, layers, bidir, head, loss):
    model = Tagger(cell, num_layers=layers, bidirectional=bidir, head=head, loss=loss)
    batch = _data(N=3, T=4, kind=loss)
    value, grads = model.loss_and_grads(batch)
    grads = {k: v.copy() for k, v in grads.items()}
    # the loss: a mean of per-step losses of O(1) logits, each about max(1, loss) in size
    tol = fd_tolerance(np.float64, max(1.0, abs(value)))
    rng = np.random.default_rng(1)
    for name, arr in model.parameters().items():
        flat = rng.choice(arr.size, size=min(3, arr.size), replace=False)
        idxs = [np.unravel_index(i, arr.shape) for i in flat]
        num = central_differences(lambda: model.loss_and_grads(batch)[0], arr, idxs)
        got = [grads[name][idx] for idx in idxs]
        assert_matches_central_differences(got, num, tol, err_msg=name)


# --- truncated BPTT ----------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [5, 7])
def test_tbptt_with_a_chunk_covering_the_sequence_is_full_bptt(chunk):
    data = _data(N=6, T=5)
    a, b = Tagger("gru", seed=3), Tagger("gru", seed=3)
    ha = train(
        a,
        data,
        epochs=2,
        batch_size=4,
        optimizer="adam",
        lr=0.01,
        seed=0,
        progress=False,
        tbptt=chunk,
    )
    hb = train(b, data, epochs=2, batch_size=4, optimizer="adam", lr=0.01, seed=0, progress=False)
    np.testing.assert_allclose(ha["step_loss"], hb["step_loss"], rtol=1e-13)
    for k, v in a.parameters().items():
        np.testing.assert_allclose(v, b.parameters()[k], rtol=1e-13, atol=1e-15)


def test_tbptt_carries_the_state_and_cuts_the_gradient():
    """With lr = 0 the chunk losses recompose the full loss (the state is carried); the
    summed chunk gradients differ from the full gradient (it is cut at the border) but
    equal the gradients computed from a detached (constant) state."""
    X, y, lengths = _data(N=4, T=6)
    lengths[:] = 6  # every step counts in every chunk, so chunk means recompose the mean
    batch = (X, y, lengths)
    model = Tagger("lstm", seed=2)
    full_loss, full_grads = model.loss_and_grads(batch)
    full_grads = {k: v.copy() for k, v in full_grads.items()}
    hist = train(
        model,
        batch,
        epochs=1,
        batch_size=4,
        optimizer=SGD(model.parameters(), lr=0.0),
        shuffle=False,
        progress=False,
        tbptt=4,
    )
    chunk_losses = hist["step_loss"]
    assert len(chunk_losses) == 2
    assert (4 * chunk_losses[0] + 2 * chunk_losses[1]) / 6 == pytest.approx(full_loss, rel=1e-12)
    assert hist["loss"][0] == pytest.approx(full_loss, rel=1e-12)

    # the gradient of chunk 2 starts at the state after chunk 1, held constant
    _, want_state = model.rnn.forward(X[:, :4])
    l1, g1, state = model.chunk_loss_and_grads(batch, 0, 4, None)
    np.testing.assert_array_equal(state[0], want_state[0])
    g1 = {k: v.copy() for k, v in g1.items()}
    l2, g2, _ = model.chunk_loss_and_grads(batch, 4, 6, state)
    assert [l1, l2] == pytest.approx(chunk_losses, rel=1e-13)
    w = model.parameters()["rnn.weight_hh_l0"]
    idx = (3, 1)
    num = central_differences(lambda: model.chunk_loss_and_grads(batch, 4, 6, state)[0], w, [idx])
    # the loss: a mean of per-step losses of O(1) logits, each about max(1, loss) in size
    tol = fd_tolerance(w.dtype, max(1.0, abs(l2)))
    assert_matches_central_differences(g2["rnn.weight_hh_l0"][idx], num[0], tol)
    summed = (4 * g1["rnn.weight_hh_l0"] + 2 * g2["rnn.weight_hh_l0"]) / 6
    assert not np.allclose(summed, full_grads["rnn.weight_hh_l0"], rtol=1e-3)


class Recorder:
    """Records what the loop hands to the model; fixed gradients."""

    def __init__(self, grad=None, bad_step=None, bad="loss"):
        self.w = {"w": np.zeros(3)}
        self.calls = []
        self.grad = np.array([3.0, 4.0, 0.0]) if grad is None else grad
        self.bad_step, self.bad = bad_step, bad

    def parameters(self):
        return self.w

    def loss_and_grads(self, batch):
        self.calls.append(np.array(batch[0]))
        loss, g = 1.0, self.grad.copy()
        if self.bad_step is not None and len(self.calls) == self.bad_step:
            if self.bad == "loss":
                loss = float("nan")
            else:
                g[1] = np.inf
        return loss, {"w": g}

    def num_steps(self, batch):
        return batch[1].shape[1]

    def chunk_loss_and_grads(self, batch, start, stop, state):
        self.calls.append((start, stop, state))
        return 1.0, {"w": self.grad.copy()}, f"after {stop}"


def _index_data(N=10, T=7):
    return (np.arange(N), np.zeros((N, T)))


def test_tbptt_chunks_and_state_hand_over():
    model = Recorder()
    train(
        model,
        _index_data(N=4),
        epochs=1,
        batch_size=2,
        optimizer="sgd",
        lr=0.0,
        shuffle=False,
        progress=False,
        tbptt=3,
    )
    assert model.calls == [(0, 3, None), (3, 6, "after 3"), (6, 7, "after 6")] * 2


def test_batches_shuffling_and_seed():
    model = Recorder()
    train(
        model,
        _index_data(),
        epochs=2,
        batch_size=4,
        optimizer="sgd",
        lr=0.0,
        seed=5,
        progress=False,
    )
    sizes = [len(c) for c in model.calls]
    assert sizes == [4, 4, 2, 4, 4, 2]
    epoch1, epoch2 = np.concatenate(model.calls[:3]), np.concatenate(model.calls[3:])
    assert sorted(epoch1) == list(range(10)) and sorted(epoch2) == list(range(10))
    assert not np.array_equal(epoch1, epoch2)  # reshuffled every epoch
    again = Recorder()
    train(
        again,
        _index_data(),
        epochs=2,
        batch_size=4,
        optimizer="sgd",
        lr=0.0,
        seed=5,
        progress=False,
    )
    for a, b in zip(model.calls, again.calls, strict=True):
        np.testing.assert_array_equal(a, b)
    plain = Recorder()
    train(
        plain,
        _index_data(),
        epochs=1,
        batch_size=4,
        optimizer="sgd",
        lr=0.0,
        shuffle=False,
        drop_last=True,
        progress=False,
    )
    assert [c.tolist() for c in plain.calls] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize("clip", ["norm", "value"])
def test_clipping_options(clip):
    model = Recorder()  # gradient (3, 4, 0), norm 5
    kw = {"clip_norm": 2.0} if clip == "norm" else {"clip_value": 1.5}
    hist = train(
        model,
        _index_data(N=2),
        epochs=1,
        batch_size=2,
        optimizer="sgd",
        lr=1.0,
        progress=False,
        **kw,
    )
    step = -model.w["w"]
    if clip == "norm":
        assert global_norm({"w": step}) == pytest.approx(2.0, rel=1e-14)
        np.testing.assert_allclose(step, [1.2, 1.6, 0.0])
    else:
        np.testing.assert_array_equal(step, [1.5, 1.5, 0.0])
    assert hist["grad_norm"] == [pytest.approx(5.0)]  # recorded before clipping


@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_nan_or_inf_stops_with_a_clear_message(bad):
    model = Recorder(bad_step=3, bad=bad)
    with pytest.raises(FloatingPointError) as info:
        train(
            model, _index_data(N=8), epochs=2, batch_size=2, optimizer="sgd", lr=0.1, progress=False
        )
    msg = str(info.value)
    assert "epoch 1, step 3" in msg and "clip" in msg and "lower learning rate" in msg
    if bad == "grad":
        assert "gradient of w" in msg
    assert len(model.calls) == 3  # stopped at once


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_exploding_relu_rnn_is_stopped():
    """A real explosion: relu RNN with large recurrent gain and a huge learning rate."""
    model = Tagger("rnn", D=2, H=8, K=2, loss="mse", seed=0)
    model.rnn = RNN(
        2,
        8,
        activation="relu",
        gain=3.0,
        init="orthogonal",
        batch_first=True,
        seed=0,
        dtype=np.float64,
    )
    X, y, lengths = _data(N=8, T=40, D=2, K=2, kind="mse")
    with pytest.raises(FloatingPointError, match=r"step \d+"):
        train(
            model,
            (X * 100, y, lengths),
            epochs=50,
            batch_size=8,
            optimizer="sgd",
            lr=1e3,
            progress=False,
        )


def test_history_and_validation():
    data = _data(N=6)
    val = _data(N=3, seed=9)
    model = Tagger("gru")
    hist = train(
        model, data, epochs=3, batch_size=4, lr=0.05, seed=0, validation_data=val, progress=False
    )
    assert isinstance(hist, History) and hist.epochs == 3
    assert len(hist.loss) == 3 and len(hist.val_loss) == 3 and len(hist["step_loss"]) == 6
    # epoch loss: batch losses weighted by batch size (4 and 2 samples)
    s = hist["step_loss"]
    assert hist.loss[0] == pytest.approx((4 * s[0] + 2 * s[1]) / 6, rel=1e-12)
    assert hist.val_loss[-1] == pytest.approx(evaluate(model, val, batch_size=4), rel=1e-12)
    assert hist.loss[-1] < hist.loss[0]
    more = train(model, data, epochs=1, batch_size=4, progress=False, history=hist)
    assert more is hist and hist.epochs == 4 and len(hist.loss) == 4


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    data = _index_data(N=4)
    train(Recorder(), data, epochs=1, batch_size=2, optimizer="sgd", lr=0.0, progress=None)
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
    train(Recorder(), data, epochs=1, batch_size=2, optimizer="sgd", lr=0.0, progress=False)
    assert capsys.readouterr().err == ""
    train(Recorder(), data, epochs=1, batch_size=2, optimizer="sgd", lr=0.0, progress=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "train" in err


def test_bad_arguments():
    model = Recorder()
    with pytest.raises(ValueError, match=r"different numbers of samples .*\[10, 9\]"):
        train(model, (np.zeros(10), np.zeros(9)), epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="epochs must be a non-negative int, got -1"):
        train(model, _index_data(), epochs=-1, batch_size=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        train(model, _index_data(), epochs=1, batch_size=0)
    with pytest.raises(TypeError, match=r"epochs must be an int, got a float \(1\.5\)"):
        train(model, _index_data(), epochs=1.5, batch_size=2)
    with pytest.raises(TypeError, match="clip_value must be a number, got a str"):
        train(model, _index_data(), epochs=1, batch_size=2, clip_value="1")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train(model, _index_data(), epochs=1, batch_size=2, optimizer="rmsprop")
    with pytest.raises(ValueError, match="does not update the model's parameter arrays"):
        train(model, _index_data(), epochs=1, batch_size=2, optimizer=SGD({"w": np.zeros(3)}))
    with pytest.raises(TypeError, match="must have parameters"):
        train(object(), _index_data(), epochs=1, batch_size=2)

    class Plain:
        def parameters(self):
            return {"w": np.zeros(2)}

        def loss_and_grads(self, batch):
            return 0.0, {"w": np.zeros(2)}

    with pytest.raises(TypeError, match="tbptt needs a model with num_steps"):
        train(Plain(), _index_data(), epochs=1, batch_size=2, tbptt=3)
    with pytest.raises(ValueError, match=r"clip_norm must be finite and > 0, got -1\.0"):
        train(Plain(), _index_data(), epochs=1, batch_size=2, clip_norm=-1.0)


# --- callbacks, early stopping, checkpoints, schedules ----------------------------------


@io.register("tests.Scalar")
class Scalar:
    """One parameter w; loss mean((w - t)^2) over the batch's targets t (a 1-d array)."""

    def __init__(self, w=0.0):
        self.w = {"w": np.array([w])}

    def parameters(self):
        return self.w

    def loss(self, batch):
        return float(np.mean((self.w["w"][0] - batch) ** 2))

    def loss_and_grads(self, batch):
        return self.loss(batch), {"w": np.array([2 * np.mean(self.w["w"][0] - batch)])}

    def _save_state(self):
        return {}, dict(self.w)

    @classmethod
    def _from_state(cls, config, arrays):
        return cls(float(arrays["w"][0]))


def _snapshots():
    """A callback that keeps a copy of the parameters at the end of every epoch."""
    snaps = {}

    def keep(epoch, logs):
        snaps[epoch] = {k: v.copy() for k, v in cb.context.model.parameters().items()}

    cb = LambdaCallback(on_epoch_end=keep)
    return cb, snaps


def _train_scalar(model, targets, callbacks, **kwargs):
    """train() of a Scalar by plain gradient descent, one batch per epoch by default."""
    args = {"epochs": 20, "batch_size": len(targets), "optimizer": "sgd", "lr": 0.05}
    return train(model, targets, progress=False, callbacks=callbacks, **(args | kwargs))


def test_callbacks_see_every_batch_and_epoch_in_order():
    seen = []
    cb = LambdaCallback(
        on_train_begin=lambda ctx: seen.append(("begin", ctx.epochs)),
        on_batch_end=lambda step, logs: seen.append(("batch", step, logs["epoch"], logs["batch"])),
        on_epoch_end=lambda epoch, logs: seen.append(("epoch", epoch, sorted(logs))),
        on_train_end=lambda ctx: seen.append(("end", ctx.history.epochs)),
    )
    hist = train(
        Recorder(),
        _index_data(N=5),
        epochs=2,
        batch_size=2,
        optimizer="sgd",
        lr=0.0,
        progress=False,
        callbacks=[cb],
    )
    keys = ["grad_norm", "loss", "lr"]
    assert seen == [
        ("begin", 2),
        ("batch", 1, 1, 1),
        ("batch", 2, 1, 2),
        ("batch", 3, 1, 3),
        ("epoch", 1, keys),
        ("batch", 4, 2, 1),
        ("batch", 5, 2, 2),
        ("batch", 6, 2, 3),
        ("epoch", 2, keys),
        ("end", 2),
    ]
    assert hist["lr"] == [0.0, 0.0]


def test_a_callback_can_add_a_metric_and_stop_training():
    def metric(epoch, logs):
        logs["val_w"] = float(model.w["w"][0])
        if epoch == 2:
            stopper.context.stop_training = True

    model = Scalar()
    stopper = Callback()
    hist = _train_scalar(model, np.full(4, 10.0), [stopper, LambdaCallback(on_epoch_end=metric)])
    assert hist.epochs == 2 and hist["val_w"] == pytest.approx([1.0, 1.9])


def test_early_stopping_restores_the_best_weights_when_validation_gets_worse():
    """Training pulls w from 0 towards 10; the validation optimum is w = 1, reached
    after the first epoch, so the validation loss then only gets worse."""
    model = Scalar()
    keep, snaps = _snapshots()
    stop = EarlyStopping(patience=2)
    hist = _train_scalar(model, np.full(4, 10.0), [keep, stop], validation_data=np.full(2, 1.0))
    # w: 1.0, 1.9, 2.71 -> val loss 0, 0.81, 2.92: two epochs without improvement
    assert hist.epochs == 3 and hist.val_loss == pytest.approx([0.0, 0.81, 2.9241])
    assert stop.best_epoch == 1 and stop.stopped_epoch == 3 and stop.best == hist.val_loss[0]
    np.testing.assert_array_equal(model.w["w"], snaps[1]["w"])
    assert model.w["w"][0] != snaps[3]["w"][0]


def _rule_data(N, T, seed, noise):
    """3 classes from the signs of two input features, a fraction ``noise`` of labels random."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, T, 3))
    y = (X[..., 0] > 0).astype(np.int64) + (X[..., 1] > 0)
    y = np.where(rng.random(size=y.shape) < noise, rng.integers(0, 3, size=y.shape), y)
    return X, y, np.full(N, T)


def test_early_stopping_on_a_real_model_that_overfits():
    """A GRU tagger on a few sequences with half their labels random: it first learns the
    rule (the clean validation loss falls), then memorises the noise (it rises)."""
    model = Tagger("gru", H=16, K=3, seed=2)
    params = model.parameters()
    keep, snaps = _snapshots()
    stop = EarlyStopping("val_loss", patience=5, min_delta=1e-4)
    hist = train(
        model,
        _rule_data(12, 6, seed=0, noise=0.5),
        epochs=100,
        batch_size=12,
        lr=0.03,
        seed=0,
        validation_data=_rule_data(12, 6, seed=1, noise=0.0),
        progress=False,
        callbacks=[keep, stop],
    )
    best = int(np.argmin(hist.val_loss)) + 1
    assert best > 1  # it did improve first (argmin: the first minimum, below val_loss[0])
    assert stop.best_epoch == best and stop.stopped_epoch == hist.epochs == best + 5
    assert hist.val_loss[-1] > hist.val_loss[best - 1] and hist.loss[-1] < hist.loss[best - 1]
    for k, v in params.items():
        assert model.parameters()[k] is v  # restored in place
        np.testing.assert_array_equal(v, snaps[best][k], err_msg=k)
        assert not np.array_equal(v, snaps[hist.epochs][k])


def test_early_stopping_needs_its_metric():
    with pytest.raises(ValueError, match=r"monitors 'val_loss'.*only with validation_data"):
        _train_scalar(Scalar(), np.full(4, 1.0), [EarlyStopping()])
    with pytest.raises(ValueError, match="mode must be one of 'auto', 'min', 'max'"):
        EarlyStopping(mode="best")
    with pytest.raises(TypeError, match="patience must be an int"):
        EarlyStopping(patience=1.5)
    assert EarlyStopping("val_acc")._monitor.mode == "max"


def test_model_checkpoint_writes_loadable_files(tmp_path):
    model = Scalar()
    every = ModelCheckpoint(tmp_path / "w-{epoch:02d}.npz", monitor="val_loss")
    best = ModelCheckpoint(tmp_path / "best.npz", save_best_only=True)
    keep, snaps = _snapshots()
    callbacks = [keep, every, best]
    _train_scalar(model, np.full(4, 10.0), callbacks, epochs=4, validation_data=np.full(2, 1.0))
    assert [os.path.basename(p) for p in every.saved] == [f"w-0{e}.npz" for e in (1, 2, 3, 4)]
    for epoch, path in enumerate(every.saved, start=1):
        back = fastrnn.load(path)
        assert isinstance(back, Scalar)
        np.testing.assert_array_equal(back.w["w"], snaps[epoch]["w"])
    assert best.saved == [str(tmp_path / "best.npz")]  # only epoch 1 improved
    np.testing.assert_array_equal(fastrnn.load(tmp_path / "best.npz").w["w"], snaps[1]["w"])


def test_model_checkpoint_of_a_model_without_save_state_saves_its_parameters(tmp_path):
    model = Tagger("lstm")
    ckpt = ModelCheckpoint(tmp_path / "tagger.npz")
    train(model, _data(N=4), epochs=1, batch_size=4, progress=False, callbacks=[ckpt])
    back = fastrnn.load(tmp_path / "tagger.npz")
    assert type(back) is dict and list(back) == list(model.parameters())
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(back[k], v)
    with pytest.raises(FileNotFoundError, match=r"the folder .*nowhere' does not exist"):
        train(
            model,
            _data(N=4),
            epochs=1,
            batch_size=4,
            progress=False,
            callbacks=[ModelCheckpoint(tmp_path / "nowhere" / "x.npz")],
        )
    with pytest.raises(ValueError, match=r"cannot be filled .*KeyError: 'acc'"):
        train(
            model,
            _data(N=4),
            epochs=1,
            batch_size=4,
            progress=False,
            callbacks=[ModelCheckpoint(str(tmp_path / "{acc}.npz"))],
        )


def test_a_schedule_is_a_callback_stepping_once_per_epoch():
    model = Scalar()
    sched = StepLR(step_size=2, gamma=0.5)  # no optimizer: train attaches its own
    hist = _train_scalar(model, np.full(4, 1.0), [sched], epochs=5, batch_size=2, lr=0.4)
    assert hist["lr"] == [0.4, 0.4, 0.2, 0.2, 0.1]
    assert sched.last_epoch == 5 and sched.optimizer.lr == pytest.approx(0.1)
    with pytest.raises(ValueError, match="already drives another optimizer"):
        _train_scalar(model, np.full(4, 1.0), [sched])
    # a schedule built on the optimizer given to train drives it as well
    opt = SGD(model.parameters(), lr=1.0)
    hist = _train_scalar(model, np.ones(4), [StepLR(opt, step_size=1)], optimizer=opt, lr=None)
    assert hist["lr"] == pytest.approx([1.0, 0.1, 0.01, 0.001] + [10.0**-k for k in range(4, 20)])


def test_bad_callbacks():
    with pytest.raises(
        TypeError, match="callbacks must be a list of callbacks, got builtin_function"
    ):
        _train_scalar(Scalar(), np.ones(2), print)
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a builtin_function_or_method with"):
        _train_scalar(Scalar(), np.ones(2), [print])
    with pytest.raises(TypeError, match="on_epoch_end must be a function, got int"):
        LambdaCallback(on_epoch_end=3)


# --- every backend -----------------------------------------------------------------------


def _five_steps():
    data = _data(N=8, T=6)
    model = Tagger("lstm", num_layers=2, bidirectional=True, seed=4)
    hist = train(
        model,
        data,
        epochs=1,
        batch_size=2,
        optimizer="adam",
        lr=0.05,
        seed=1,
        clip_norm=5.0,
        progress=False,
    )
    assert len(hist["step_loss"]) == 4
    more = train(
        model, data, epochs=1, batch_size=8, optimizer="sgd", lr=0.1, seed=1, progress=False
    )
    return hist["step_loss"] + more["step_loss"], _copy_params(model)


def test_five_training_steps_agree_on_every_backend(backend):
    with fastrnn.use_backend("numpy"):
        want_losses, want_params = _five_steps()
    with fastrnn.use_backend(backend):
        losses, params = _five_steps()
    assert len(losses) == 5
    np.testing.assert_allclose(losses, want_losses, rtol=1e-8)
    for k in params:
        np.testing.assert_allclose(params[k], want_params[k], rtol=1e-7, atol=1e-9, err_msg=k)
