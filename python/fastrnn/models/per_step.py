"""Many-to-many, synchronised models: a softmax head at every step (:class:`SequenceTagger`)
and the character language model (:class:`CharLanguageModel`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import _validation as V
from .. import io as _io
from .. import losses
from ..datasets import PAD, CharCorpus, char_corpus
from ._base import (
    BaseModel,
    encode_labels,
    full_lengths,
    head_backward,
    optional_positive_int,
    shared_docs,
    softmax,
    unpack_validation,
)


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

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
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
            self._inputs(X[:, start:stop]), state, lengths=np.maximum(chunk_lens, 1)
        )
        head, target = self._parts["head"], y[:, start:stop]
        mask = losses.mask_from_lengths(chunk_lens, stop - start, batch_first=True)
        if not backward:
            return losses.softmax_cross_entropy(head.forward(out), target, mask=mask)[0], final
        rnn = self._parts["rnn"]
        loss, dx, _ = head_backward(rnn, head, out, target, mask, self._input_grad())
        self._embed_backward(dx)
        return loss, final

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        return self._chunk(batch, 0, self.num_steps(batch), None, backward)[0]

    def num_steps(self, batch: Sequence[np.ndarray]) -> int:
        """The number of steps of ``batch`` (its longest sequence)."""
        return int(batch[2].max())

    def loss_weight(
        self, batch: Sequence[np.ndarray], start: int = 0, stop: int | None = None
    ) -> float:
        """The number of targets the loss of steps ``start:stop`` averages (real steps)."""
        stop = self.num_steps(batch) if stop is None else stop
        return float(np.clip(batch[2] - start, 0, stop - start).sum())

    def chunk_loss_and_grads(
        self, batch: Sequence[np.ndarray], start: int, stop: int, state: Any
    ) -> tuple[float, dict[str, np.ndarray], Any]:
        """Truncated BPTT: loss and gradients of steps ``start:stop`` from ``state``."""
        with self._training_mode():
            loss, final = self._chunk(batch, start, stop, state, True)
        return loss, self._grads(), final

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        """The recurrent input of a batch's ``X``: ``X`` itself (features), or for token
        ids ``X`` (n, T) the ids themselves or their vectors through the part ``"embed"``."""
        return X if X.ndim == 3 else self._token_features(X, self._meta["n_classes"])

    def _step_logits(self, X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        out, _ = self._parts["rnn"].forward(self._inputs(X), lengths=lengths)
        logits: np.ndarray = self._parts["head"].forward(out)
        return logits


@_io.register("SequenceTagger")
class SequenceTagger(_PerStep):
    """Many-to-many, synchronised: a label per step (e.g. next-token prediction, tagging).

    ``y`` (n, T) holds non-negative integer labels; steps beyond a sequence's length (and
    entries equal to :data:`fastrnn.datasets.PAD`) are ignored. ``classes_`` are the labels
    seen in ``fit``; ``predict`` fills padded steps with ``PAD`` (-1). ``tbptt``: train with
    truncated BPTT in chunks of this many steps (default: full BPTT).
    """

    def __init__(self, hidden_size: int = 32, *, tbptt: int | None = None, **kwargs: Any):
        """The hyper-parameters of the tagger.

        Parameters
        ----------
        tbptt : int or None
            Truncated BPTT in chunks of this many steps (needs ``bidirectional=False``;
            None: full BPTT).
        **kwargs
            The hyper-parameters of every model (see
            :class:`fastrnn.models._base.BaseModel`).

        Raises
        ------
        TypeError
            A hyper-parameter of the wrong type.
        ValueError
            A hyper-parameter of the wrong value (e.g. ``tbptt`` with ``bidirectional``).
        """
        super().__init__(hidden_size, **kwargs)
        self.tbptt = self._check_tbptt(tbptt)

    def _adjust_tags(self, tags: Any) -> None:
        tags.target_tags.two_d_labels = True

    @shared_docs
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        *,
        validation_data: tuple[Any, ...] | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> SequenceTagger:
        """Learn from ``X`` (n, T, D), labels ``y`` (n, T) and optional ``lengths`` (n,).

        Parameters
        ----------
        {X}
        y : array of int of shape (n_samples, T)
            A non-negative label per step (anything at padded steps, e.g. ``PAD``).
        {lengths}
        {validation_data}
        {callbacks}

        Returns
        -------
        SequenceTagger
            The model itself, fitted: ``classes_``, ``history_``.

        Raises
        ------
        TypeError
            ``X`` not an array of numbers, ``y`` not an integer array.
        ValueError
            A wrong shape, negative labels inside the sequences, NaN or inf in ``X``
            (naming the first bad position, before any training), validation labels not
            seen in ``y``.
        {diverged}
        """
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
        self._train(
            (X, self._encode(y, lens), lens), rng, val, tbptt=self.tbptt, callbacks=callbacks
        )
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

    @shared_docs
    def predict_proba(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Per-step class probabilities.

        Parameters
        ----------
        {X}
        {lengths}

        Returns
        -------
        numpy.ndarray of shape (n_samples, T, n_classes)
            Rows sum to 1 at real steps, zero rows at padded steps; columns in the order
            of ``classes_``.

        Raises
        ------
        {inference_raises}
        """
        self._check_fitted()
        X = self._check_X(X)
        lens = full_lengths(lengths, X.shape[0], X.shape[1])
        p = softmax(self._step_logits(X, lens)).astype(self._dtype)
        p[~losses.mask_from_lengths(lens, X.shape[1], batch_first=True)] = 0
        return p

    @shared_docs
    def predict(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """The most probable label at every step.

        Parameters
        ----------
        {X}
        {lengths}

        Returns
        -------
        numpy.ndarray of int of shape (n_samples, T)
            Labels from ``classes_``; ``PAD`` (-1) at padded steps.

        Raises
        ------
        {inference_raises}
        """
        p = self.predict_proba(X, lengths)
        out: np.ndarray = self.classes_[p.argmax(axis=-1)]
        out[p.sum(axis=-1) == 0] = PAD
        return out

    @shared_docs
    def score(self, X: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
        """Per-step accuracy over the real (unpadded) steps.

        Parameters
        ----------
        {X}
        y : array of int of shape (n_samples, T)
        {lengths}

        Returns
        -------
        float
            The share of real steps whose predicted label equals ``y``.

        Raises
        ------
        {inference_raises}
        """
        X = self._check_X(X)
        y, lens = self._check_y(X, y, lengths)
        mask = losses.mask_from_lengths(lens, X.shape[1], batch_first=True)
        return float(np.mean(self.predict(X, lens)[mask] == y[mask]))


UNK = "<unk>"
"""The vocabulary entry of :class:`CharLanguageModel` for characters not seen in ``fit``
(``unknown="unk"``)."""

UNKNOWN_POLICIES: tuple[str, ...] = ("error", "unk")


@_io.register("CharLanguageModel")
class CharLanguageModel(_PerStep):
    """A character-level language model: predicts the next character at every step.

    ``fit(text)`` learns from a string (or a :class:`~fastrnn.datasets.CharCorpus`), cut
    into windows of ``seq_len`` characters (the state starts at zero in every window);
    ``tbptt=k`` additionally cuts the gradient every k steps inside a window while carrying
    the state across. ``generate(prompt, n)`` continues a prompt by sampling with a
    ``temperature`` or greedily; ``cross_entropy(text)`` and ``score(text)`` measure how
    well it predicts a text. ``vocab_`` holds the characters (and :data:`UNK` last with
    ``unknown="unk"``).

    Input: one-hot characters by default (the ids, which the recurrent layer reads as
    one-hot rows without making them; the batches hold ids (n, seq_len), not
    (n, seq_len, V) floats); ``embedding_dim=k`` feeds the recurrent stack
    learned k-dimensional vectors instead (an :class:`~fastrnn.layers.Embedding`, the
    part ``"embed"``, parameters ``"embed.weight"``), which scales to large vocabularies.

    Characters not seen in ``fit``: ``unknown="error"`` (default) refuses a text that holds
    any, with a ValueError listing them; ``unknown="unk"`` adds the entry :data:`UNK`
    (``"<unk>"``) to the vocabulary and reads every unseen character as it. The training
    text never holds :data:`UNK`, so the model learns to give it a low probability:
    ``cross_entropy`` charges an unseen character as ``-log p(<unk>)`` and ``generate``
    never emits it.
    """

    _causal = True

    def __init__(
        self,
        hidden_size: int = 64,
        *,
        seq_len: int = 32,
        tbptt: int | None = None,
        embedding_dim: int | None = None,
        unknown: str = "error",
        cell: str = "lstm",
        num_layers: int = 1,
        activation: str = "tanh",
        negative_slope: float = 0.01,
        init: str = "uniform",
        gain: float = 1.0,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        input_dropout: float = 0.0,
        epochs: int = 40,
        batch_size: int = 16,
        optimizer: str = "adam",
        lr: float = 0.01,
        clip_norm: float | None = 5.0,
        clip_value: float | None = None,
        seed: int | None = None,
        dtype: Any = "float32",
        progress: bool | None = None,
        checkpoint: Any = None,
    ) -> None:
        """The hyper-parameters of the language model.

        Parameters
        ----------
        seq_len : int
            The length of the training windows.
        tbptt : int or None
            Truncated BPTT in chunks of this many steps inside a window (None: full).
        embedding_dim : int or None
            None: one-hot input; an int: an :class:`~fastrnn.layers.Embedding` of this
            size feeds the recurrent stack.
        unknown : {"error", "unk"}
            Characters not seen in ``fit``: a ValueError listing them, or read as the
            vocabulary entry ``"<unk>"``.
        hidden_size, cell, num_layers, activation, ..., progress, checkpoint
            Those of every model, with other defaults (see
            :class:`fastrnn.models._base.BaseModel`).

        Raises
        ------
        TypeError
            A hyper-parameter of the wrong type.
        ValueError
            A hyper-parameter of the wrong value (e.g. ``unknown="skip"``).
        """
        super().__init__(
            hidden_size,
            cell=cell,
            num_layers=num_layers,
            activation=activation,
            negative_slope=negative_slope,
            init=init,
            gain=gain,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            input_dropout=input_dropout,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            clip_norm=clip_norm,
            clip_value=clip_value,
            seed=seed,
            dtype=dtype,
            progress=progress,
            checkpoint=checkpoint,
        )
        self.seq_len = V.check_positive_int("seq_len", seq_len)
        self.tbptt = self._check_tbptt(tbptt)
        self.embedding_dim = optional_positive_int("embedding_dim", embedding_dim)
        self.unknown = V.check_choice("unknown", unknown, UNKNOWN_POLICIES)

    def _adjust_tags(self, tags: Any) -> None:
        tags.input_tags.three_d_array = False
        tags.input_tags.string = True
        tags.target_tags.required = False

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        super()._build(meta, rng)
        self._embedding(meta["n_classes"], self.embedding_dim, rng)

    @shared_docs
    def fit(
        self,
        text: str | CharCorpus,
        y: None = None,
        *,
        validation_data: str | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> CharLanguageModel:
        """Learn the text ``text``: windows of ``seq_len`` characters starting every
        ``seq_len // 2`` characters.

        Parameters
        ----------
        text : str or fastrnn.datasets.CharCorpus
            The training text; its characters are the vocabulary.
        y : None
            Ignored (scikit-learn's signature).
        validation_data : str, optional
            A text whose windows are evaluated after every epoch
            (``history_["val_loss"]``); characters not in ``text`` follow ``unknown``.
        {callbacks}

        Returns
        -------
        CharLanguageModel
            The model itself, fitted: ``vocab_``, ``history_``.

        Raises
        ------
        TypeError
            ``text`` or ``validation_data`` not a str.
        ValueError
            A text shorter than ``seq_len + 1`` characters; with ``unknown="error"``, a
            validation text holding characters not in ``text``.
        {diverged}
        """
        corpus = text if isinstance(text, CharCorpus) else char_corpus(text=text)
        vocab = list(corpus.vocab) + ([UNK] if self.unknown == "unk" else [])
        K = len(vocab)
        input_size = K if self.embedding_dim is None else self.embedding_dim
        rng = self._setup({"input_size": input_size, "n_classes": K, "vocab": vocab})
        data = self._windows(corpus.ids, "text")
        val = (
            None
            if validation_data is None
            else self._windows(
                self._encode_text(validation_data, "validation_data"), "validation_data"
            )
        )
        self._train(data, rng, val, tbptt=self.tbptt, callbacks=callbacks)
        return self

    def _windows(self, ids: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The training batch arrays of the character ids of a text: inputs (the ids
        (n, seq_len), int64: the recurrent layer reads them as one-hot rows without making
        them, or an embedding its vectors), next-character targets (n, seq_len) and
        lengths (n,)."""
        T = self.seq_len
        if len(ids) < T + 1:
            raise ValueError(
                f"{name} has {len(ids)} characters; seq_len={T} needs at least {T + 1}"
            )
        starts = np.arange(0, len(ids) - T, max(1, T // 2))
        idx = starts[:, None] + np.arange(T)[None, :]
        return ids[idx], ids[idx + 1], np.full(len(starts), T, dtype=np.int64)

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.vocab_ = tuple(meta["vocab"])
        self._index = {c: i for i, c in enumerate(self.vocab_)}
        return rng

    def _encode_text(self, text: object, name: str) -> np.ndarray:
        """The vocabulary ids of the characters of ``text`` (int64), unseen characters
        following ``unknown``."""
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a str, got {V.describe(text)}")
        unseen = sorted({c for c in text if c not in self._index})
        if unseen and self.unknown == "error":
            raise ValueError(
                f"{name} holds {len(unseen)} character(s) not in the vocabulary seen in fit: "
                f"{unseen[:20]!r}"
                f"{' ...' * (len(unseen) > 20)} (unknown='error'; CharLanguageModel("
                "unknown='unk') reads them as '<unk>')"
            )
        unk = self._index.get(UNK, -1)
        return np.fromiter((self._index.get(c, unk) for c in text), dtype=np.int64, count=len(text))

    def _features(self, ids: np.ndarray) -> np.ndarray:
        return self._token_features(ids, len(self.vocab_))

    def _next_logits(self, logits: np.ndarray) -> np.ndarray:
        """``logits`` with :data:`UNK` made impossible (never generated)."""
        unk = self._index.get(UNK)
        if unk is None:
            return logits
        logits = logits.copy()
        logits[..., unk] = -np.inf
        return logits

    def cross_entropy(self, text: str) -> float:
        """The mean cross-entropy per character of predicting ``text[1:]`` from
        ``text[:-1]`` in one pass.

        Parameters
        ----------
        text : str
            At least 2 characters.

        Returns
        -------
        float
            Nats per character; compare with the uniform baseline ``ln(len(vocab_))``.

        Raises
        ------
        NotFittedError
            Before ``fit``.
        TypeError
            ``text`` not a str.
        ValueError
            Fewer than 2 characters; with ``unknown="error"``, characters not seen in
            ``fit`` (listed).
        """
        self._check_fitted()
        ids = self._encode_text(text, "text")
        if len(ids) < 2:
            raise ValueError(f"text must have at least 2 characters, got {len(ids)}")
        logits = self._step_logits(self._features(ids[None, :-1]), np.array([len(ids) - 1]))
        loss, _ = losses.softmax_cross_entropy(logits, ids[None, 1:])
        return loss

    def score(self, text: str, y: None = None) -> float:
        """Minus :meth:`cross_entropy` (higher is better, as scikit-learn's ``score``).

        Parameters
        ----------
        text : str
            At least 2 characters.
        y : None
            Ignored (scikit-learn's signature).

        Returns
        -------
        float
            ``-cross_entropy(text)``, in nats per character.

        Raises
        ------
        NotFittedError, TypeError, ValueError
            As :meth:`cross_entropy`.
        """
        return -self.cross_entropy(text)

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

        Parameters
        ----------
        prompt : str
            A non-empty text to continue (unseen characters follow ``unknown``).
        n : int
            How many characters to generate (>= 0).
        temperature : float
            Each next character is drawn from softmax(logits / ``temperature``); lower is
            more conservative (> 0).
        greedy : bool
            Take the most probable character instead of sampling.
        seed : int or None
            Makes the sampling reproducible.

        Returns
        -------
        str
            ``prompt + `` the ``n`` generated characters (never ``"<unk>"``).

        Raises
        ------
        NotFittedError
            Before ``fit``.
        TypeError
            ``prompt`` not a str, ``n`` not an int.
        ValueError
            An empty prompt, ``n < 0``, ``temperature <= 0``; with ``unknown="error"``,
            prompt characters not seen in ``fit`` (listed).
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
        out, state = rnn.forward(self._features(self._encode_text(prompt, "prompt")[None, :]))
        logits = self._next_logits(head.forward(out[:, -1])[0])
        generated = []
        for _ in range(n):
            if greedy:
                nxt = int(np.argmax(logits))
            else:
                nxt = int(rng.choice(len(logits), p=softmax(logits, temperature)))
            generated.append(nxt)
            out, state = rnn.forward(self._features(np.array([[nxt]])), state)
            logits = self._next_logits(head.forward(out[:, -1])[0])
        return prompt + "".join(self.vocab_[i] for i in generated)
