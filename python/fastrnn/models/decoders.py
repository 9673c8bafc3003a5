"""Decoders: one-to-many (:class:`SequenceGenerator`) and encoder-decoder (:class:`Seq2Seq`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import _validation as V
from .. import io as _io
from .. import layers, losses
from ._base import (
    BaseModel,
    encode_labels,
    full_lengths,
    head_backward,
    optional_positive_int,
    shared_docs,
    state_h,
)


class _Decoder(BaseModel):
    """A token decoder started from a state: teacher forcing in training, greedy decoding.

    Token ids 0..K-1 are the classes; id K is <start> as an input and <stop> as a target.
    The decoder reads the previous token one-hot, or with ``embedding_dim=k`` as a learned
    k-dimensional vector (an :class:`~fastrnn.layers.Embedding` of the K+1 input tokens,
    the part ``"embed"``). Subclasses give the initial state and its backward.
    """

    _causal = True

    def __init__(
        self,
        hidden_size: int = 32,
        *,
        max_length: int | None = None,
        embedding_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        """The hyper-parameters of a decoder.

        Parameters
        ----------
        max_length : int or None
            The most tokens ``predict`` decodes (None: twice the longest training target).
        embedding_dim : int or None
            None: the decoder reads the previous token one-hot; an int: through an
            :class:`~fastrnn.layers.Embedding` of this size.
        **kwargs
            The hyper-parameters of every model (see
            :class:`fastrnn.models._base.BaseModel`).

        Raises
        ------
        TypeError
            A hyper-parameter of the wrong type.
        ValueError
            A hyper-parameter of the wrong value (e.g. ``bidirectional=True``).
        """
        super().__init__(hidden_size, **kwargs)
        self.max_length = (
            None if max_length is None else V.check_positive_int("max_length", max_length)
        )
        self.embedding_dim = optional_positive_int("embedding_dim", embedding_dim)

    def _adjust_tags(self, tags: Any) -> None:
        tags.target_tags.two_d_labels = True

    def _build_decoder(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        K = meta["n_classes"]
        size = K + 1 if self.embedding_dim is None else self.embedding_dim
        self._parts["decoder"] = self._rnn(size, rng)
        self._parts["head"] = self._linear(self.hidden_size, K + 1, rng)
        self._embedding(K + 1, self.embedding_dim, rng)

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.classes_ = np.asarray(meta["classes"], dtype=np.int64)
        return rng

    def _check_targets(self, y: object, y_lengths: object, n: int) -> tuple[np.ndarray, np.ndarray]:
        y = V.as_int_array("y", y)
        if y.ndim != 2 or y.shape[0] != n or y.shape[1] < 1:
            raise ValueError(
                f"y has shape {y.shape}, expected ({n}, T_out): a token sequence per sample"
            )
        if y_lengths is None:
            real = y >= 0
            counts = real.sum(axis=1)
            if not np.array_equal(
                real, losses.mask_from_lengths(counts, y.shape[1], batch_first=True)
            ):
                raise ValueError("y has PAD (-1) entries inside sequences; pass y_lengths")
            y_lengths = counts
        given = V.as_int_array("y_lengths", y_lengths)
        if given.size and given.min() < 1:
            raise ValueError("y_lengths must be >= 1: every target needs at least one token")
        return y, full_lengths(given, n, y.shape[1])

    def _classes_meta(self, y: np.ndarray, lens: np.ndarray) -> dict[str, Any]:
        classes = np.unique(y[losses.mask_from_lengths(lens, y.shape[1], batch_first=True)])
        if classes[0] < 0:
            raise ValueError(f"y holds negative tokens inside the sequences: {classes[:3]}")
        return {"n_classes": len(classes), "classes": classes.tolist(), "max_len": int(lens.max())}

    def _encode(self, y: np.ndarray, lens: np.ndarray) -> np.ndarray:
        mask = losses.mask_from_lengths(lens, y.shape[1], batch_first=True)
        return encode_labels(self.classes_, y, mask, "tokens")

    def _tokens(self, ids: np.ndarray) -> np.ndarray:
        """The decoder input for token ids (K is <start>): the ids (read one-hot) or their
        vectors."""
        return self._token_features(ids, self._meta["n_classes"] + 1)

    def _teacher_forcing(
        self, state0: layers.State, y: np.ndarray, lens: np.ndarray, backward: bool = True
    ) -> tuple[float, layers.State | None]:
        """Loss of predicting y then <stop> given the true previous tokens; returns the
        loss and (with ``backward``) the gradient w.r.t. ``state0``."""
        K = self._meta["n_classes"]
        B = y.shape[0]
        T = int(lens.max()) + 1
        t = np.arange(T)[None, :]
        prev = np.full((B, T), K, dtype=np.int64)
        prev[:, 1:] = np.where(t[:, 1:] <= lens[:, None], y[:, : T - 1], 0)
        yy = np.zeros((B, T), dtype=np.int64)
        yy[:, : T - 1] = np.maximum(y[:, : T - 1], 0)
        target = np.where(t < lens[:, None], yy, np.where(t == lens[:, None], K, 0))
        dec, head = self._parts["decoder"], self._parts["head"]
        out, _ = dec.forward(self._tokens(prev), state0, lengths=lens + 1)
        mask = losses.mask_from_lengths(lens + 1, T, batch_first=True)
        if not backward:
            return losses.softmax_cross_entropy(head.forward(out), target, mask=mask)[0], None
        loss, dx, dstate0 = head_backward(dec, head, out, target, mask, self._input_grad())
        self._embed_backward(dx)
        return loss, dstate0

    def loss_weight(
        self, batch: Sequence[np.ndarray], start: int = 0, stop: int | None = None
    ) -> float:
        """The number of targets the loss averages: every output token and <stop>."""
        del start, stop
        return float(np.sum(batch[-1] + 1))

    def _greedy(self, state: layers.State, B: int, max_length: int | None) -> list[np.ndarray]:
        K = self._meta["n_classes"]
        limit = self.max_length or 2 * self._meta["max_len"] if max_length is None else max_length
        dec, head = self._parts["decoder"], self._parts["head"]
        tok = np.full(B, K, dtype=np.int64)
        tokens = np.zeros((B, limit), dtype=np.int64)
        length = np.full(B, limit, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        for t in range(limit):
            out, state = dec.forward(self._tokens(tok[:, None]), state)
            tok = head.forward(out[:, 0]).argmax(axis=-1)
            tokens[:, t] = tok
            stop = (tok == K) & ~done
            length[stop] = t
            done |= stop
            if done.all():
                break
        return [self.classes_[tokens[b, : length[b]]] for b in range(B)]


@_io.register("SequenceGenerator")
class SequenceGenerator(_Decoder):
    """One-to-many: a token sequence from one input vector (image features, a style code).

    ``fit(X, y)``: ``X`` (n, D) one vector per sample, ``y`` (n, T_out) integer tokens
    (padded with -1, or with ``y_lengths``). The vector sets the decoder's initial state
    ``h0 = tanh(W x + b)`` (every layer; the LSTM cell state starts at 0); the decoder
    is trained with teacher forcing (it reads the true previous token) and stops with a
    learned <stop> token. ``predict(X)`` decodes greedily: a list of token arrays.
    """

    def _adjust_tags(self, tags: Any) -> None:
        super()._adjust_tags(tags)
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = False

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        self._parts["init"] = self._linear(
            meta["input_size"], self.num_layers * self.hidden_size, rng
        )
        self._build_decoder(meta, rng)

    @shared_docs
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        y_lengths: np.ndarray | None = None,
        *,
        callbacks: Sequence[Any] | None = None,
    ) -> SequenceGenerator:
        """Learn to emit ``y`` (n, T_out) tokens from the vectors ``X`` (n, D).

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            One vector per sample.
        y : array of int of shape (n_samples, T_out)
            Non-negative tokens, padded with -1 (or real lengths in ``y_lengths``).
        {y_lengths}
        {callbacks}

        Returns
        -------
        SequenceGenerator
            The model itself, fitted: ``classes_``, ``history_``.

        Raises
        ------
        TypeError
            ``X`` not an array of numbers, ``y`` not an integer array.
        ValueError
            A wrong shape, PAD inside a target, an empty target, NaN or inf in ``X``
            (naming the first bad position, before any training).
        {diverged}
        """
        X = self._check_X(X, ndim=2)
        y, lens = self._check_targets(y, y_lengths, X.shape[0])
        rng = self._setup({"input_size": X.shape[1], **self._classes_meta(y, lens)})
        self._train((X, self._encode(y, lens), lens), rng, callbacks=callbacks)
        return self

    def _initial_state(self, X: np.ndarray) -> tuple[layers.State, np.ndarray]:
        """The decoder's initial state and ``tanh(W x + b)`` (n, L*H) it was made of."""
        h0_flat = np.tanh(self._parts["init"].forward(X))
        B, L, H = X.shape[0], self.num_layers, self.hidden_size
        h0 = np.ascontiguousarray(h0_flat.reshape(B, L, H).transpose(1, 0, 2))
        return ((h0, np.zeros_like(h0)) if self.cell == "lstm" else h0), h0_flat

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        X, y, lens = batch
        state0, h0_flat = self._initial_state(X)
        loss, dstate = self._teacher_forcing(state0, y, lens, backward)
        if dstate is None:
            return loss
        dh0 = state_h(dstate)
        dpre = dh0.transpose(1, 0, 2).reshape(X.shape[0], -1) * (1.0 - h0_flat**2)
        self._parts["init"].backward(dpre.astype(self._dtype, copy=False))
        return loss

    def predict(self, X: np.ndarray, *, max_length: int | None = None) -> list[np.ndarray]:
        """Greedy decoding: the token sequence (without <stop>) for each vector of ``X``.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
        max_length : int, optional
            The most tokens per sequence (default: the constructor's, or twice the
            longest training target).

        Returns
        -------
        list of numpy.ndarray
            One array of tokens (from ``classes_``) per sample, of varying lengths.

        Raises
        ------
        NotFittedError
            Before ``fit``.
        ValueError
            A wrong shape, NaN or inf in ``X``, ``max_length < 1``.
        """
        self._check_fitted()
        X = self._check_X(X, ndim=2)
        return self._greedy(self._initial_state(X)[0], X.shape[0], max_length)


@_io.register("Seq2Seq")
class Seq2Seq(_Decoder):
    """Encoder-decoder for input and output sequences of different, variable lengths.

    The encoder (an RNN stack over ``X`` with ``lengths``) hands its final state to the
    decoder (the same cell and size), which is trained with teacher forcing and decodes
    greedily until it emits <stop>. ``fit(X, y, lengths, y_lengths)``: ``X`` (n, T_in, D),
    ``y`` (n, T_out) integer tokens padded with -1 (or real lengths in ``y_lengths``).
    ``predict`` returns a list of token arrays.

    Source tokens: an integer ``X`` of shape (n, T_in) is read as token ids 0..V-1 (V: one
    more than the largest id in ``fit``; anything at padded steps), fed to the encoder
    one-hot, or through a second :class:`~fastrnn.layers.Embedding` (the part
    ``"src_embed"``) of size ``embedding_dim``. A model fitted on tokens predicts from
    tokens; an id >= V is a ValueError naming its position.
    """

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        V_src = meta.get("source_vocab")
        size = meta["input_size"]
        if V_src is not None and self.embedding_dim is not None:
            size = self.embedding_dim
        self._parts["encoder"] = self._rnn(size, rng)
        self._build_decoder(meta, rng)
        if V_src is not None:
            self._embedding(V_src, self.embedding_dim, rng, part="src_embed")

    def _check_source(
        self, X: object, lengths: object, *, fitting: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """``X`` as features (n, T_in, D), or as token ids (n, T_in) (an integer array of
        2 dimensions) in range wherever ``lengths`` says the step is real (0 elsewhere);
        and the lengths. Unless ``fitting``, the kind of input must be the fitted one."""
        arr = V.as_array("X", X)
        fitted = bool(self._parts) and not fitting
        vocab = self._meta.get("source_vocab") if fitted else None
        if arr.dtype.kind not in "iu" or arr.ndim != 2:
            if vocab is not None:
                raise ValueError(
                    f"X has dtype {arr.dtype} and shape {arr.shape}: the model was fitted on "
                    "token ids, expected an integer array (n_samples, T_in)"
                )
            X = self._check_X(arr)
            return X, full_lengths(lengths, X.shape[0], X.shape[1])
        if fitted and vocab is None:
            raise ValueError(
                f"X is an integer array of shape {arr.shape} (token ids): the model was fitted "
                f"on features, expected (n_samples, T_in, {self._meta['input_size']})"
            )
        ids = V.as_int_array("X", arr)
        lens = full_lengths(lengths, ids.shape[0], ids.shape[1])
        ids = np.where(losses.mask_from_lengths(lens, ids.shape[1], batch_first=True), ids, 0)
        size = vocab if vocab is not None else max(int(ids.max()) + 1, 1)
        V.check_index_range("X", ids, size, "source token id")
        return ids, lens

    @shared_docs
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        y_lengths: np.ndarray | None = None,
        *,
        callbacks: Sequence[Any] | None = None,
    ) -> Seq2Seq:
        """Learn to translate ``X`` (n, T_in, D) with ``lengths`` into tokens ``y``.

        Parameters
        ----------
        {X_source}
        y : array of int of shape (n_samples, T_out)
            Non-negative output tokens, padded with -1 (or real lengths in ``y_lengths``).
        {lengths}
        {y_lengths}
        {callbacks}

        Returns
        -------
        Seq2Seq
            The model itself, fitted: ``classes_``, ``history_``.

        Raises
        ------
        TypeError
            ``X`` not an array of numbers, ``y`` not an integer array.
        ValueError
            A wrong shape, PAD inside a target, an empty target, NaN or inf in ``X``
            (naming the first bad position, before any training), a negative source id.
        {diverged}
        """
        X, lens = self._check_source(X, lengths, fitting=True)
        y, ylens = self._check_targets(y, y_lengths, X.shape[0])
        source: dict[str, Any] = {"input_size": X.shape[-1]}
        if X.ndim == 2:  # token ids: the vocabulary is 0..max
            source = {"source_vocab": int(X.max()) + 1, "input_size": int(X.max()) + 1}
        rng = self._setup({**source, **self._classes_meta(y, ylens)})
        self._train((X, lens, self._encode(y, ylens), ylens), rng, callbacks=callbacks)
        return self

    def _encode_inputs(self, X: np.ndarray, lens: np.ndarray) -> layers.State:
        X = X[:, : int(lens.max())]
        if X.ndim == 2:  # source token ids
            X = self._token_features(X, self._meta["source_vocab"], part="src_embed")
        state: layers.State
        _, state = self._parts["encoder"].forward(X, lengths=lens)
        return state

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        X, lens, y, ylens = batch
        loss, dstate = self._teacher_forcing(self._encode_inputs(X, lens), y, ylens, backward)
        if dstate is not None:
            encoder = self._parts["encoder"]
            dx, _ = encoder.backward(None, dstate, input_grad=self._input_grad("src_embed"))
            self._embed_backward(dx, part="src_embed")
        return loss

    @shared_docs
    def predict(
        self, X: np.ndarray, lengths: np.ndarray | None = None, *, max_length: int | None = None
    ) -> list[np.ndarray]:
        """Greedy decoding: the output tokens (without <stop>) for each input sequence.

        Parameters
        ----------
        {X_source}
        {lengths}
        max_length : int, optional
            The most tokens per sequence (default: the constructor's, or twice the
            longest training target).

        Returns
        -------
        list of numpy.ndarray
            One array of tokens (from ``classes_``) per sample, of varying lengths.

        Raises
        ------
        NotFittedError
            Before ``fit``.
        ValueError
            A wrong shape, NaN or inf in ``X``, ``max_length < 1``, a source token id
            out of the fitted range (naming its position).
        """
        self._check_fitted()
        X, lens = self._check_source(X, lengths)
        return self._greedy(self._encode_inputs(X, lens), X.shape[0], max_length)

    def score(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        y_lengths: np.ndarray | None = None,
    ) -> float:
        """Exact-match accuracy.

        Parameters
        ----------
        {X_source}
        y : array of int of shape (n_samples, T_out)
        lengths, y_lengths : array of int of shape (n_samples,), optional

        Returns
        -------
        float
            The share of sequences decoded exactly as ``y`` (up to its length).

        Raises
        ------
        NotFittedError
            Before ``fit``.
        TypeError
            ``y`` not an integer array.
        ValueError
            A wrong shape, NaN or inf in ``X``.
        """
        self._check_fitted()
        X, lens = self._check_source(X, lengths)
        y, ylens = self._check_targets(y, y_lengths, X.shape[0])
        pred = self.predict(X, lens)
        return float(np.mean([np.array_equal(p, y[i, : ylens[i]]) for i, p in enumerate(pred)]))
