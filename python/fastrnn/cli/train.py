"""``fastrnn train TASK``: train one of the course's example tasks from the command line.

The tasks are the functions of :mod:`fastrnn.tasks` (the scripts in ``examples/`` call
the same ones); each runs in seconds with the defaults, a tqdm progress bar shows on a
terminal:

- ``xor``: one-to-one (T = 1) classifier on XOR;
- ``sentiment``: many-to-one classifier on the toy sentiment set (cat, mat, rat);
- ``deep``: many-to-many autocomplete of "deep" (d, e, p, <stop>);
- ``charlm``: character language model on a text file (``--text``, default: the shipped
  nursery rhymes), then generated text;
- ``generator``: one-to-many counting sequences from a (start, step) code;
- ``seq2seq``: number words to digits, exact match on held-out numbers;
- ``adding``: the adding problem (regression, baseline MSE 1/6);
- ``copy``: the copy-memory task (per-step tagging, baseline 10 ln 8 / (T + 20)).

Examples::

    fastrnn train sentiment
    fastrnn train charlm --text my.txt --epochs 30 --generate 300
    fastrnn train adding -T 50 --cell gru --clip-norm 1 --save adding.npz

``--distributed`` trains data-parallel on every process of ``MPI.COMM_WORLD`` (needs
``fastrnn[mpi]``): ``mpiexec -n 2 fastrnn train charlm --distributed``. Only rank 0
prints, shows the progress bar and saves; an error on any rank ends the whole job (MPI
abort, exit status 2, or 1 for an unexpected error) instead of leaving the others waiting.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import traceback
from typing import Any

from .. import distributed as D
from .. import functional as F
from .. import models
from ..tasks import TASKS

# model hyper-parameters that the command line can set (None: the task's default)
_MODEL_OPTIONS = (
    "cell",
    "activation",
    "init",
    "hidden_size",
    "num_layers",
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "clip_norm",
    "dropout",
    "recurrent_dropout",
    "input_dropout",
    "seed",
    "checkpoint",
)


def checkpoint_option(text: str) -> int | str | dict[str, int]:
    """``--checkpoint``: ``sqrt``, an int k, or ``max_bytes=N`` (the functional core's
    ``"sqrt"``, ``k`` and ``{"max_bytes": N}``)."""
    if text == "sqrt":
        return text
    key, sep, value = text.partition("=")
    try:
        if sep and key == "max_bytes":
            return {"max_bytes": int(value)}
        if not sep:
            return int(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected sqrt, an int k >= 1 or max_bytes=N, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``fastrnn train``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = "Train one of the course's example tasks and show what it learned."
    parser.epilog = "tasks:\n" + "\n".join(
        f"  {name:<10} {task.help}" for name, task in sorted(TASKS.items())
    )
    parser.add_argument("task", choices=sorted(TASKS), help="which example to train")
    parser.add_argument("--cell", choices=F.CELLS, help="recurrent cell (default per task)")
    parser.add_argument("--activation", choices=F.ACTIVATIONS, help="rnn activation")
    parser.add_argument("--init", choices=F.INITS, help="weight initialisation")
    parser.add_argument("--hidden-size", type=int, help="hidden units per layer")
    parser.add_argument("--num-layers", type=int, help="stacked layers")
    parser.add_argument("--epochs", type=int, help="passes over the training data")
    parser.add_argument("--batch-size", type=int, help="samples per mini-batch")
    parser.add_argument("--lr", type=float, help="learning rate")
    parser.add_argument("--optimizer", choices=models.OPTIMIZERS, help="default adam")
    parser.add_argument("--clip-norm", type=float, help="clip gradients to this global norm")
    parser.add_argument("--dropout", type=float, help="dropout between stacked layers (0..1)")
    parser.add_argument(
        "--recurrent-dropout", type=float, help="variational dropout on the recurrent state"
    )
    parser.add_argument(
        "--input-dropout", type=float, help="variational dropout on each layer's input"
    )
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument(
        "--checkpoint",
        type=checkpoint_option,
        metavar="{sqrt,K,max_bytes=N}",
        help="checkpointed BPTT: keep the state every K steps (sqrt: K = ceil(sqrt(T))) or "
        "within N bytes, recompute the rest; the gradients are bit-identical",
    )
    parser.add_argument("--backend", help="numpy, numba, cpp or auto (default: configured)")
    parser.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="tqdm progress bar: auto shows it on a terminal",
    )
    parser.add_argument("--save", metavar="PATH", help="save the trained model (.npz)")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel on all MPI processes: mpiexec -n N fastrnn train ... --distributed",
    )
    parser.add_argument("-T", type=int, help="sequence length (adding, copy)")
    parser.add_argument("--samples", type=int, help="training samples (adding, copy)")
    parser.add_argument("--text", metavar="FILE", help="text file for charlm (UTF-8)")
    parser.add_argument("--generate", type=int, help="charlm: characters to write (200)")
    parser.add_argument(
        "--temperature", type=float, help="charlm: sample at this temperature (default 0.5, 1)"
    )


def task_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of the task function: the model hyper-parameters given on
    the command line, the progress bar, and the task's own options that were given."""
    kwargs = {name: getattr(args, name) for name in _MODEL_OPTIONS}
    kwargs["progress"] = {"auto": None, "on": True, "off": False}[args.progress]
    own = {
        "T": args.T,
        "samples": args.samples,
        "text": args.text,
        "length": args.generate,
        "temperatures": None if args.temperature is None else (args.temperature,),
    }
    accepted = inspect.signature(TASKS[args.task].run).parameters
    kwargs.update({k: v for k, v in own.items() if k in accepted})
    return {k: v for k, v in kwargs.items() if v is not None or k == "progress"}


def run(args: argparse.Namespace) -> int:
    """Train the task ``args.task``, print what it learned, optionally save the model.

    With ``args.distributed`` every process of ``MPI.COMM_WORLD`` trains together; rank 0
    alone prints and saves, and an error on any rank aborts the whole job."""
    if not args.distributed:
        return _run(args, None)
    try:
        comm = D.world()
    except ImportError as exc:
        print(f"fastrnn train {args.task} --distributed: {exc}")
        return 2
    if D.size(comm) == 1:
        return _run(args, comm)
    # Another rank waits in the next collective for a rank that stops with an error: end
    # the whole job instead (the status is the error's: 2 for a reported one, else 1).
    where = f"rank {D.rank(comm)} of {D.size(comm)}"
    try:
        status = _run(args, comm, where)
    except Exception:
        print(f"fastrnn train {args.task} ({where}): unexpected error", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
        raise
    if status != 0:
        sys.stdout.flush()
        # MPICH's process manager forwards a rank's output asynchronously and drops what it
        # has not forwarded yet when the job aborts: with every rank failing at once (a bad
        # argument), the message was lost in 1 of 8 loaded runs. A moment for it to leave.
        time.sleep(0.5)
        comm.Abort(status)
    return status


def _run(args: argparse.Namespace, comm: object, where: str = "") -> int:
    """Train (on ``comm`` when given), print on rank 0, save there; the exit status."""
    import fastrnn

    task = TASKS[args.task]
    root = D.is_root(comm)
    say = print if root else (lambda *a, **k: None)
    try:
        kwargs = task_arguments(args)
        if not root:
            kwargs.update(progress=False, verbose=False)
        with fastrnn.use_backend(args.backend or fastrnn.get_backend()), D.data_parallel(comm):
            ranks = "" if comm is None else f", MPI processes: {D.size(comm)}"
            say(f"task {args.task}: {task.help} (backend {fastrnn.get_backend()}{ranks})")
            start = time.perf_counter()
            model = task.run(**kwargs).model
            say(f"trained in {time.perf_counter() - start:.1f} s: {model!r}")
    except (ValueError, TypeError, FloatingPointError, OSError) as exc:
        print(f"fastrnn train {args.task}{f' ({where})' if where else ''}: {exc}", flush=True)
        return 2
    if args.save and root:
        model.save(args.save)
        print(f"saved to {args.save}")
    return 0
