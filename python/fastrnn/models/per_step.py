"""Many-to-many, synchronised models: a softmax head at every step (:class:`SequenceTagger`)
and the character language model (:class:`CharLanguageModel`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _validation as V
from .. import io as _io
from .. import losses
from ..datasets import PAD, CharCorpus, char_corpus, one_hot
from ._base import BaseModel, encode_labels, full_lengths, softmax, unpack_validation


class _PerStep(BaseModel):
    """An RNN stack with a softmax head at every step: tagging and language modelling.

    With ``tbptt=k`` training runs truncated BPTT (the ``SupportsTBPTT`` protocol of
    :mod:`fastrnn.training`): each batch is cut into chunks of k steps, the state is
    carried from chunk to chunk and the gradient stops at chunk borders.
    """

    tbptt: int | None  # set by the constructors of the subclasses

    def _check_tbptt(self, tbptt: object) -> int | None:
        if tbptt is None:
            return None
        if self.bidirectional:
            raise ValueError("tbptt needs a unidirectional model (bidirectional=False)")
        return V.check_positive_int("tbptt", tbptt)

    def _build(self, meta: dict[str, Any], rng: np.random.Generator) -> None:
        self._parts["rnn"] = self._rnn(meta["input_size"], rng, bidirectional=self.bidirectional)
        dirs = 2 if self.bidirectional else 1
        self._parts["head"] = self._linear(dirs * self.hidden_size, meta["n_classes"], rng)

    def _chunk(
        self, batch: Sequence[np.ndarray], start: int, stop: int, state: Any, backward: bool
    ) -> tuple[float, Any]:
        """Loss of steps ``start:stop`` from ``state`` (gradient cut there); final state."""
        X, y, lens = batch
        chunk_lens = np.clip(lens - start, 0, stop - start)
        # sequences that already ended run one padded step; their loss is masked out
        out, final = self._parts["rnn"].forward(
            X[:, start:stop], state, lengths=np.maximum(chunk_lens, 1)
        )
        head, target = self._parts["head"], y[:, start:stop]
        mask = losses.mask_from_lengths(chunk_lens, stop - start, batch_first=True)
        if not backward:
            return losses.softmax_cross_entropy(head.forward(out), target, mask=mask)[0], final
        loss, dh = head.softmax_cross_entropy(out, target, mask=mask)  # fused head + loss
        self._parts["rnn"].backward(dh)
        return loss, final

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        return self._chunk(batch, 0, self.num_steps(batch), None, backward)[0]

    def num_steps(self, batch: Sequence[np.ndarray]) -> int:
        """The number of steps of ``batch`` (its longest sequence)."""
        return int(batch[2].max())

    def chunk_loss_and_grads(
        self, batch: Sequence[np.ndarray], start: int, stop: int, state: Any
    ) -> tuple[float, dict[str, np.ndarray], Any]:
        """Truncated BPTT: loss and gradients of steps ``start:stop`` from ``state``."""
        with self._training_mode():
            loss, final = self._chunk(batch, start, stop, state, True)
        return loss, self._grads(), final

    def _step_logits(self, X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        out, _ = self._parts["rnn"].forward(X, lengths=lengths)
        return self._parts["head"].forward(out)


@_io.register("SequenceTagger")
class SequenceTagger(_PerStep):
    """Many-to-many, synchronised: a label per step (e.g. next-token prediction, tagging).

    ``y`` (n, T) holds non-negative integer labels; steps beyond a sequence's length (and
    entries equal to :data:`fastrnn.datasets.PAD`) are ignored. ``classes_`` are the labels
    seen in ``fit``; ``predict`` fills padded steps with ``PAD`` (-1). ``tbptt``: train with
    truncated BPTT in chunks of this many steps (default: full BPTT).
    """

    def __init__(self, hidden_size: int = 32, *, tbptt: int | None = None, **kwargs: Any):
        """``tbptt`` (int or None): truncated BPTT in chunks of this many steps (needs
        ``bidirectional=False``); the other hyper-parameters are those of every model
        (see ``help(fastrnn.models)`` or the base class's constructor)."""
        super().__init__(hidden_size, **kwargs)
        self.tbptt = self._check_tbptt(tbptt)

    def _adjust_tags(self, tags: Any) -> None:
        tags.target_tags.two_d_labels = True

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        *,
        validation_data: tuple | None = None,
    ) -> SequenceTagger:
        """Learn from ``X`` (n, T, D), labels ``y`` (n, T) and optional ``lengths`` (n,).

        NaN or inf in ``X`` is a ValueError naming the first bad position, raised before
        any training."""
        X = self._check_X(X)
        y, lens = self._check_y(X, y, lengths)
        classes = np.unique(y[losses.mask_from_lengths(lens, X.shape[1], batch_first=True)])
        if classes[0] < 0:
            raise ValueError(f"y holds negative labels inside the sequences: {classes[:3]}")
        rng = self._setup(
            {"input_size": X.shape[2], "n_classes": len(classes), "classes": classes.tolist()}
        )
        val = None
        if validation_data is not None:
            Xv, yv, lv = unpack_validation(validation_data)
            Xv = self._check_X(Xv, "validation_data X")
            yv, lv = self._check_y(Xv, yv, lv)
            val = (Xv, self._encode(yv, lv), lv)
        self._train((X, self._encode(y, lens), lens), rng, val, tbptt=self.tbptt)
        return self

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.classes_ = np.asarray(meta["classes"], dtype=np.int64)
        return rng

    def _check_y(self, X: np.ndarray, y: object, lengths: object) -> tuple[np.ndarray, np.ndarray]:
        n, T = X.shape[:2]
        y = V.as_int_array("y", y)
        if y.shape != (n, T):
            raise ValueError(f"y has shape {y.shape}, expected ({n}, {T}): a label per step of X")
        return y, full_lengths(lengths, n, T)

    def _encode(self, y: np.ndarray, lens: np.ndarray) -> np.ndarray:
        mask = losses.mask_from_lengths(lens, y.shape[1], batch_first=True)
        return encode_labels(self.classes_, y, mask)

    def predict_proba(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Per-step class probabilities (n, T, n_classes); zero rows at padded steps."""
        self._check_fitted()
        X = self._check_X(X)
        lens = full_lengths(lengths, X.shape[0], X.shape[1])
        p = softmax(self._step_logits(X, lens)).astype(self._dtype)
        p[~losses.mask_from_lengths(lens, X.shape[1], batch_first=True)] = 0
        return p

    def predict(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """The most probable label at every step (n, T); ``PAD`` at padded steps."""
        p = self.predict_proba(X, lengths)
        out = self.classes_[p.argmax(axis=-1)]
        out[p.sum(axis=-1) == 0] = PAD
        return out

    def score(self, X: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
        """Per-step accuracy over the real (unpadded) steps."""
        X = self._check_X(X)
        y, lens = self._check_y(X, y, lengths)
        mask = losses.mask_from_lengths(lens, X.shape[1], batch_first=True)
        return float(np.mean(self.predict(X, lens)[mask] == y[mask]))


@_io.register("CharLanguageModel")
class CharLanguageModel(_PerStep):
    """A character-level language model: predicts the next character at every step.

    ``fit(text)`` learns from a string (or a :class:`~fastrnn.datasets.CharCorpus`), cut
    into windows of ``seq_len`` characters (the state starts at zero in every window);
    ``tbptt=k`` additionally cuts the gradient every k steps inside a window while carrying
    the state across. ``generate(prompt, n)`` continues a prompt by sampling with a
    ``temperature`` or greedily. ``vocab_`` holds the characters.
    """

    _causal = True

    def __init__(
        self,
        hidden_size: int = 64,
        *,
        seq_len: int = 32,
        tbptt: int | None = None,
        cell: str = "lstm",
        num_layers: int = 1,
        activation: str = "tanh",
        negative_slope: float = 0.01,
        init: str = "uniform",
        gain: float = 1.0,
        epochs: int = 40,
        batch_size: int = 16,
        optimizer: str = "adam",
        lr: float = 0.01,
        clip_norm: float | None = 5.0,
        clip_value: float | None = None,
        seed: int | None = None,
        dtype: Any = "float32",
        progress: bool | None = None,
    ) -> None:
        """``seq_len`` (int): the length of the training windows; ``tbptt`` (int or
        None): truncated BPTT in chunks of this many steps inside a window; the other
        hyper-parameters are those of every model (with other defaults; see the base
        class's constructor)."""
        super().__init__(
            hidden_size,
            cell=cell,
            num_layers=num_layers,
            activation=activation,
            negative_slope=negative_slope,
            init=init,
            gain=gain,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            clip_norm=clip_norm,
            clip_value=clip_value,
            seed=seed,
            dtype=dtype,
            progress=progress,
        )
        self.seq_len = V.check_positive_int("seq_len", seq_len)
        self.tbptt = self._check_tbptt(tbptt)

    def _adjust_tags(self, tags: Any) -> None:
        tags.input_tags.three_d_array = False
        tags.input_tags.string = True
        tags.target_tags.required = False

    def fit(self, text: str | CharCorpus, y: None = None) -> CharLanguageModel:
        """Learn the text ``text`` (a str or a CharCorpus); windows of ``seq_len``
        characters start every ``seq_len // 2`` characters."""
        corpus = text if isinstance(text, CharCorpus) else char_corpus(text=text)
        data = corpus.windows(self.seq_len, step=max(1, self.seq_len // 2), dtype=self._dtype)
        K = corpus.vocab_size
        rng = self._setup({"input_size": K, "n_classes": K, "vocab": list(corpus.vocab)})
        lens = np.full(len(data.X), self.seq_len, dtype=np.int64)
        self._train((data.X, data.y, lens), rng, tbptt=self.tbptt)
        return self

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.vocab_ = tuple(meta["vocab"])
        self._corpus = CharCorpus(text="", vocab=self.vocab_)
        return rng

    def _one_hot(self, ids: np.ndarray) -> np.ndarray:
        return one_hot(ids, len(self.vocab_), dtype=self._dtype)

    def cross_entropy(self, text: str) -> float:
        """The mean cross-entropy per character (nats) of predicting ``text[1:]`` from
        ``text[:-1]`` in one pass; compare with the uniform baseline ln(len(vocab_))."""
        self._check_fitted()
        ids = self._corpus.encode(text)
        if len(ids) < 2:
            raise ValueError(f"text must have at least 2 characters, got {len(ids)}")
        logits = self._step_logits(self._one_hot(ids[None, :-1]), np.array([len(ids) - 1]))
        loss, _ = losses.softmax_cross_entropy(logits, ids[None, 1:])
        return loss

    def generate(
        self,
        prompt: str,
        n: int = 100,
        *,
        temperature: float = 1.0,
        greedy: bool = False,
        seed: int | None = None,
    ) -> str:
        """``prompt`` followed by ``n`` generated characters.

        Each next character is drawn from softmax(logits / ``temperature``) (lower is more
        conservative), or taken as the most probable one with ``greedy=True``. ``seed``
        makes the sampling reproducible.
        """
        self._check_fitted()
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a non-empty str, got {V.describe(prompt)}")
        if not prompt:
            raise ValueError("prompt must be a non-empty str, got ''")
        n = V.check_non_negative_int("n", n)
        temperature = V.check_positive_float("temperature", temperature)
        rng = np.random.default_rng(seed)
        rnn, head = self._parts["rnn"], self._parts["head"]
        out, state = rnn.forward(self._one_hot(self._corpus.encode(prompt)[None, :]))
        logits = head.forward(out[:, -1])[0]
        generated = []
        for _ in range(n):
            if greedy:
                nxt = int(np.argmax(logits))
            else:
                nxt = int(rng.choice(len(logits), p=softmax(logits, temperature)))
            generated.append(nxt)
            out, state = rnn.forward(self._one_hot(np.array([[nxt]])), state)
            logits = head.forward(out[:, -1])[0]
        return prompt + self._corpus.decode(np.array(generated, dtype=np.int64))
