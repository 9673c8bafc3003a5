"""Many-to-one models: a label (:class:`SequenceClassifier`) or a real number or vector
(:class:`SequenceRegressor`) per sequence, read from the top layer's final state."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import _validation as V
from .. import io as _io
from .. import losses
from ._base import (
    BaseModel,
    encode_labels,
    full_lengths,
    shared_docs,
    softmax,
    state_h,
    unpack_validation,
)


class _ManyToOne(BaseModel):
    """An RNN stack read to each sequence's last real step, then a linear head."""

    def _build(self, meta: Mapping[str, Any], rng: np.random.Generator) -> None:
        self._parts["rnn"] = self._rnn(meta["input_size"], rng, bidirectional=self.bidirectional)
        dirs = 2 if self.bidirectional else 1
        self._parts["head"] = self._linear(dirs * self.hidden_size, meta["n_outputs"], rng)

    def _outputs(self, X: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Head outputs (n, n_outputs) from the top layer's final state (both directions)."""
        X = X[:, : int(lengths.max())]
        _, state = self._parts["rnn"].forward(X, lengths=lengths)
        h = state_h(state)
        dirs = 2 if self.bidirectional else 1
        feat = np.concatenate(list(h[-dirs:]), axis=-1)
        out: np.ndarray = self._parts["head"].forward(feat)
        return out

    def _outputs_backward(self, dout: np.ndarray) -> None:
        """Backward of :meth:`_outputs` (the gradient reaches only the top layer's state)."""
        dfeat = self._parts["head"].backward(dout)
        dirs, H = (2 if self.bidirectional else 1), self.hidden_size
        dh = np.zeros((self.num_layers * dirs, dfeat.shape[0], H), dtype=dfeat.dtype)
        for d in range(dirs):
            dh[dh.shape[0] - dirs + d] = dfeat[:, d * H : (d + 1) * H]
        state = (dh, None) if self.cell == "lstm" else dh
        self._parts["rnn"].backward(None, state, input_grad=False)  # X is data: no dx

    def _check_Xy(
        self, X: object, y: object, lengths: object, where: str = ""
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X, y and lengths checked before anything is computed (``where`` prefixes the
        names in messages, e.g. ``"validation_data "``)."""
        X = self._check_X(X, f"{where}X")
        y = V.as_array(f"{where}y", y)
        if y.ndim < 1 or y.shape[0] != X.shape[0]:
            raise ValueError(
                f"{where}y has shape {y.shape}, expected ({X.shape[0]}, ...): one target per "
                f"sample of {where}X"
            )
        V.check_finite(f"{where}y", y)
        return X, y, full_lengths(lengths, X.shape[0], X.shape[1])

    def _predict_outputs(self, X: object, lengths: object) -> np.ndarray:
        self._check_fitted()
        X = self._check_X(X)
        return self._outputs(X, full_lengths(lengths, X.shape[0], X.shape[1]))

    def _validation(
        self, validation_data: object, encode: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, ...] | None:
        if validation_data is None:
            return None
        Xv, yv, lv = unpack_validation(validation_data)
        Xv, yv, lv = self._check_Xy(Xv, yv, lv, "validation_data ")
        return Xv, encode(yv), lv


@_io.register("SequenceClassifier")
class SequenceClassifier(_ManyToOne):
    """Many-to-one classification: a label per sequence.

    Two classes use one output with a sigmoid and binary cross-entropy; more use softmax
    and cross-entropy. ``classes_`` holds the sorted labels seen in ``fit``. With T=1 it is
    the one-to-one network of the course (a plain feed-forward classifier).
    """

    _estimator_type = "classifier"

    @shared_docs
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        *,
        validation_data: tuple[Any, ...] | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> SequenceClassifier:
        """Learn from ``X`` (n, T, D), labels ``y`` (n,) and optional ``lengths`` (n,).

        Parameters
        ----------
        {X}
        y : array of shape (n_samples,)
            A label per sequence (any sortable values; at least 2 classes).
        {lengths}
        {validation_data}
        {callbacks}

        Returns
        -------
        SequenceClassifier
            The model itself, fitted: ``classes_``, ``history_``.

        Raises
        ------
        TypeError
            ``X`` or ``y`` not an array of numbers, ``validation_data`` not a tuple.
        ValueError
            A wrong shape, fewer than 2 classes, NaN or inf in ``X`` or ``y`` (naming the
            first bad position, before any training).
        {diverged}
        """
        X, y, lens = self._check_Xy(X, y, lengths)
        if y.ndim != 1:
            raise ValueError(f"y has shape {y.shape}, expected ({X.shape[0]},): one label each")
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(f"y must hold at least 2 classes, got {classes.tolist()}")
        n_out = 1 if len(classes) == 2 else len(classes)
        rng = self._setup(
            {"input_size": X.shape[2], "n_outputs": n_out, "classes": classes.tolist()}
        )
        val = self._validation(validation_data, self._encode)
        self._train((X, self._encode(y), lens), rng, val, callbacks=callbacks)
        return self

    def _setup(self, meta: dict[str, Any]) -> np.random.Generator:
        rng = super()._setup(meta)
        self.classes_ = np.asarray(meta["classes"])
        return rng

    def _encode(self, y: np.ndarray) -> np.ndarray:
        return encode_labels(self.classes_, y)

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        X, y, lens = batch
        out = self._outputs(X, lens)
        if out.shape[1] == 1:
            loss, dz = losses.bce_with_logits(out[:, 0], y.astype(out.dtype))
            dz = dz[:, None]
        else:
            loss, dz = losses.softmax_cross_entropy(out, y)
        if backward:
            self._outputs_backward(dz)
        return loss

    @shared_docs
    def predict_proba(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities of each sequence.

        Parameters
        ----------
        {X}
        {lengths}

        Returns
        -------
        numpy.ndarray of shape (n_samples, n_classes)
            Rows sum to 1; columns in the order of ``classes_``.

        Raises
        ------
        {inference_raises}
        """
        z = self._predict_outputs(X, lengths)
        if z.shape[1] == 1:  # the two-class model's one logit is z1 - z0
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        return softmax(z).astype(z.dtype)

    @shared_docs
    def predict(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """The most probable label of each sequence.

        Parameters
        ----------
        {X}
        {lengths}

        Returns
        -------
        numpy.ndarray of shape (n_samples,)
            Labels from ``classes_``.

        Raises
        ------
        {inference_raises}
        """
        self._check_fitted()
        labels: np.ndarray = self.classes_[self.predict_proba(X, lengths).argmax(axis=1)]
        return labels

    @shared_docs
    def score(self, X: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
        """The accuracy on ``(X, y)``.

        Parameters
        ----------
        {X}
        y : array of shape (n_samples,)
        {lengths}

        Returns
        -------
        float
            The share of sequences whose predicted label equals ``y``.

        Raises
        ------
        {inference_raises}
        """
        return float(np.mean(self.predict(X, lengths) == np.asarray(y)))


@_io.register("SequenceRegressor")
class SequenceRegressor(_ManyToOne):
    """Many-to-one regression: a real number (``y`` of shape (n,)) or vector ((n, k)) per
    sequence, trained with mean squared error."""

    _estimator_type = "regressor"

    def _adjust_tags(self, tags: Any) -> None:
        tags.target_tags.multi_output = True

    @shared_docs
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        lengths: np.ndarray | None = None,
        *,
        validation_data: tuple[Any, ...] | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> SequenceRegressor:
        """Learn from ``X`` (n, T, D), targets ``y`` (n,) or (n, k), optional ``lengths``.

        Parameters
        ----------
        {X}
        y : array of shape (n_samples,) or (n_samples, k)
            A real number or vector per sequence.
        {lengths}
        {validation_data}
        {callbacks}

        Returns
        -------
        SequenceRegressor
            The model itself, fitted: ``history_``.

        Raises
        ------
        TypeError
            ``X`` or ``y`` not an array of numbers, ``validation_data`` not a tuple.
        ValueError
            A wrong shape, NaN or inf in ``X`` or ``y`` (naming the first bad position,
            before any training).
        {diverged}
        """
        X, y, lens = self._check_Xy(X, y, lengths)
        y2 = self._targets(y)
        rng = self._setup(
            {"input_size": X.shape[2], "n_outputs": y2.shape[1], "vector": y.ndim == 2}
        )
        val = self._validation(validation_data, self._targets)
        self._train((X, y2, lens), rng, val, callbacks=callbacks)
        return self

    def _targets(self, y: np.ndarray) -> np.ndarray:
        """``y`` (n,) or (n, k) as (n, k) numbers of the model's dtype."""
        if y.ndim > 2:
            raise ValueError(f"y has shape {y.shape}, expected (n,) or (n, k)")
        return V.as_numeric_array("y", y, self._dtype).reshape(len(y), -1)

    def _loss_backward(self, batch: Sequence[np.ndarray], backward: bool = True) -> float:
        X, y, lens = batch
        out = self._outputs(X, lens)
        loss, dout = losses.mse(out, y)
        if backward:
            self._outputs_backward(dout)
        return loss

    @shared_docs
    def predict(self, X: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
        """The predicted number or vector of each sequence.

        Parameters
        ----------
        {X}
        {lengths}

        Returns
        -------
        numpy.ndarray of shape (n_samples,) or (n_samples, k)
            The shape of the ``y`` given to ``fit``.

        Raises
        ------
        {inference_raises}
        """
        out = self._predict_outputs(X, lengths)
        return out if self._meta["vector"] else out[:, 0]

    @shared_docs
    def score(self, X: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None) -> float:
        """The coefficient of determination R^2 on ``(X, y)``.

        Parameters
        ----------
        {X}
        y : array of shape (n_samples,) or (n_samples, k)
        {lengths}

        Returns
        -------
        float
            1 - SS_res / SS_tot over all outputs (0.0 when ``y`` is constant).

        Raises
        ------
        {inference_raises}
        """
        y = np.asarray(y, dtype=np.float64)
        p = self.predict(X, lengths).astype(np.float64).reshape(y.shape)
        ss_res = np.sum((y - p) ** 2)
        ss_tot = np.sum((y - y.mean(axis=0)) ** 2)
        return float(1.0 - ss_res / ss_tot) if ss_tot > 0 else 0.0
