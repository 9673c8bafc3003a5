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
"""

from __future__ import annotations

import argparse
import inspect
import time
from typing import Any

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
    "seed",
)


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
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--backend", help="numpy, numba, cpp or auto (default: configured)")
    parser.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="tqdm progress bar: auto shows it on a terminal",
    )
    parser.add_argument("--save", metavar="PATH", help="save the trained model (.npz)")
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
    """Train the task ``args.task``, print what it learned, optionally save the model."""
    import fastrnn

    task = TASKS[args.task]
    try:
        kwargs = task_arguments(args)
        with fastrnn.use_backend(args.backend or fastrnn.get_backend()):
            print(f"task {args.task}: {task.help} (backend {fastrnn.get_backend()})")
            start = time.perf_counter()
            model = task.run(**kwargs).model
            print(f"trained in {time.perf_counter() - start:.1f} s: {model!r}")
    except (ValueError, TypeError, FloatingPointError, OSError) as exc:
        print(f"fastrnn train {args.task}: {exc}")
        return 2
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")
    return 0
