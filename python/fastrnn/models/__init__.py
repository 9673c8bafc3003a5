"""Ready models for the course's architectures, in the style of scikit-learn estimators.

Every model takes its hyper-parameters in the constructor, learns with ``fit`` (which
returns the model), predicts with ``predict`` (and ``predict_proba`` where it means
something) and takes samples-first input: ``X`` of shape (n_samples, T, D), with optional
``lengths`` (n_samples,) for sequences shorter than T (later steps are padding).

- :class:`SequenceClassifier` (many-to-one): a label per sequence, sigmoid for two
  classes, softmax for more; with T=1 it is the one-to-one network;
- :class:`SequenceRegressor` (many-to-one): a real number or vector per sequence (MSE);
- :class:`SequenceTagger` (many-to-many, synchronised): a label per step;
- :class:`CharLanguageModel` (many-to-many): the next character, ``generate(prompt, n)``;
- :class:`SequenceGenerator` (one-to-many): a token sequence from one input vector;
- :class:`Seq2Seq` (encoder-decoder): token sequences from input sequences of another,
  variable length (translation), teacher forcing in training, greedy decoding.

Shared hyper-parameters: ``hidden_size``; ``cell`` (``"rnn"``, ``"lstm"``, ``"gru"``);
``num_layers``; ``bidirectional`` (encoders that see the whole sequence only);
``activation`` and ``negative_slope`` (rnn only: tanh, relu, leaky_relu, identity);
``init`` and ``gain`` (see :func:`fastrnn.init_params`; ``init="identity"`` with relu is
the IRNN); ``dropout`` (between stacked layers, PyTorch's), ``recurrent_dropout`` and
``input_dropout`` (variational, Keras' ``recurrent_dropout`` and ``dropout``; see
:mod:`fastrnn.layers`), in training only; training: ``epochs``, ``batch_size``,
``optimizer`` (:data:`OPTIMIZERS`: ``"sgd"``, ``"momentum"``, ``"adam"``, ``"adamw"``),
``lr``, ``clip_norm``, ``clip_value``; ``seed`` (the same seed gives the same model and
predictions); ``dtype``; ``progress`` (a tqdm bar; ``None`` shows it on a terminal for
long runs). Every ``fit`` takes ``callbacks=[...]`` (:mod:`fastrnn.training`:
``EarlyStopping``, ``ModelCheckpoint``, ...), and the models that take validation data
record ``history_["val_loss"]`` for them to watch.

Token input: ``embedding_dim=None`` (default) feeds tokens one-hot (their ids go to the
recurrent layer, which reads them as one-hot rows without making them: a gather instead of
the input projection's product, and no input gradient); an int feeds learned
vectors of that size through a :class:`fastrnn.layers.Embedding` (the part ``"embed"``)
instead: :class:`CharLanguageModel` for its characters, :class:`SequenceGenerator` and
:class:`Seq2Seq` for the decoder's previous token. :class:`CharLanguageModel`'s
``unknown="error"`` (default) refuses text with characters not seen in ``fit`` (listing
them); ``unknown="unk"`` reads them as the vocabulary entry ``"<unk>"``.

Models train through :func:`fastrnn.training.train` (they implement its ``Trainable``
protocol: :meth:`parameters` and :meth:`loss_and_grads`) and save through
:mod:`fastrnn.io`: ``model.save(path)`` / ``fastrnn.load(path)`` give identical
predictions; a fitted model also pickles (multiprocessing, joblib) and predicts the same.

scikit-learn: ``get_params(deep=True)``, ``set_params`` and the estimator tags of
scikit-learn >= 1.6, so that ``sklearn.base.clone``, ``cross_val_score`` and
``GridSearchCV`` work (fastrnn does not depend on scikit-learn). Input is checked as
scikit-learn's ``check_array`` does: NaN or inf in ``X`` or ``y`` is a ValueError naming
the argument and the first bad position, raised before any training or prediction.

Inference (``predict``, ``predict_proba``, ``score``, ``generate``, the validation loss)
runs the layers in evaluation mode: forwards that save nothing for backward.

The package: :mod:`._base` (what every model shares), :mod:`.many_to_one`,
:mod:`.per_step` and :mod:`.decoders`.
"""

from ._base import OPTIMIZERS, NotFittedError
from .decoders import Seq2Seq, SequenceGenerator
from .many_to_one import SequenceClassifier, SequenceRegressor
from .per_step import CharLanguageModel, SequenceTagger

__all__ = [
    "OPTIMIZERS",
    "CharLanguageModel",
    "NotFittedError",
    "Seq2Seq",
    "SequenceClassifier",
    "SequenceGenerator",
    "SequenceRegressor",
    "SequenceTagger",
]
