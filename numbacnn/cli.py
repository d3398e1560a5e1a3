"""The ``numbacnn`` command: train, evaluate, predict, summary, layers, bench, data."""

from __future__ import annotations

import functools
import json
import os
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import NumbacnnError
from .presets import DEFAULT_PRESET, PRESETS

app = typer.Typer(
    help="Small convolutional networks with Numba kernels: train and use MNIST classifiers, add layers as plug-ins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Fetch the data sets and show where they are kept.", no_args_is_help=True)
app.add_typer(data_app, name="data")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Dataset(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"


class DeviceName(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Schedule(str, Enum):
    cosine = "cosine"
    constant = "constant"


class OptimizerName(str, Enum):
    adam = "adam"
    sgd = "sgd"


# Options that several commands share, declared once.
DATA_DIR = typer.Option(
    None, "--data-dir", envvar="NUMBACNN_DATA_DIR", show_envvar=True,
    help="Folder holding mnist/ and fashion-mnist/ with the four IDX files each; nothing is downloaded then.",
)
DEVICE = typer.Option(DeviceName.cpu, "--device", help="Where to run: cpu, or cuda (needs numbacnn[cuda] and a GPU).")
THREADS = typer.Option(None, "--threads", min=1, help="CPU threads for the kernels (default: all cores).")
MODEL = typer.Option(DEFAULT_PRESET, "--model", "-m", help=f"A named network: {', '.join(PRESETS)}.")
LAYERS = typer.Option(
    None, "--layers", "-l",
    help='A layer spec instead of --model, e.g. "conv2d(32,3) relu maxpool2d(2) flatten dense(10)".',
)


def user_errors(command):
    """Ends a command that hit a user error with its one-sentence message, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except NumbacnnError as error:
            # One line however long (the terminal wraps it), and "numbacnn[cuda]" as written, not as markup.
            err.print(f"[bold red]Error:[/] {escape(str(error))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper


def _set_threads(threads: Optional[int]) -> None:
    """Caps the kernels' threads and BLAS's at ``threads`` (both pools, so figures compare fairly)."""
    if threads:
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        threadpool_limits(threads)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _spec(model: str, layers: Optional[str]) -> str:
    from .presets import preset_spec

    return layers if layers else preset_spec(model)


def _load_split(dataset: Dataset, split: str, data_dir: Optional[Path], limit: Optional[int] = None):
    from .data import load_dataset
    from .train import prepare_images

    images, labels = load_dataset(dataset.value, split, data_dir=data_dir)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return prepare_images(images), labels.astype(np.int64)


@app.command()
@user_errors
def train(
    model: str = MODEL,
    layers: Optional[str] = LAYERS,
    dataset: Dataset = typer.Option(Dataset.mnist, "--dataset", "-d", help="The data set to train on."),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", "-e", min=1, help="Passes over the training set (default: the network's recipe, else 12)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", "-b", min=1, help="Images per training step (default: the network's recipe, else 128)."
    ),
    optimizer: Optional[OptimizerName] = typer.Option(
        None, "--optimizer", help="adam or sgd (with momentum 0.9) (default: the network's recipe, else adam)."
    ),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Learning rate (default: the network's recipe, else 0.001 for adam, 0.01 for sgd)."
    ),
    schedule: Optional[Schedule] = typer.Option(
        None, "--schedule",
        help="Learning rate over the run: cosine (decays to zero) or constant (default: the network's recipe, else cosine).",
    ),
    augment: Optional[str] = typer.Option(
        None, "--augment",
        help="Random changes to each training image: none, or shift=N (up to N pixels each way), with "
             "rotate=DEGREES and scale=FRACTION, e.g. 'shift=2,rotate=10' (default: the network's recipe, else none).",
    ),
    stop_at: Optional[float] = typer.Option(
        None, "--stop-at", min=0.0, max=1.0, help="End early once the test accuracy reaches this, e.g. 0.99."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the weights, the batch order, dropout and augmentation: same seed, same run."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Train on the first N training images only."),
    output: Path = typer.Option(
        Path("model.npz"), "--output", "-o", help="Checkpoint file, rewritten after every epoch."
    ),
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
):
    """Train a network and report its test accuracy; the checkpoint is saved after every epoch.

    A named network (-m) brings its own training recipe (`numbacnn models` lists them); every option given
    here wins over it.
    """
    from . import checkpoint
    from .augment import Augment
    from .model import Sequential
    from .optim import make_optimizer
    from .presets import preset_recipe
    from .progress import TrainingProgress
    from .train import fit

    _set_threads(threads)
    spec = _spec(model, layers)
    recipe = preset_recipe(None if layers else model)
    epochs = epochs or recipe.epochs
    batch_size = batch_size or recipe.batch_size
    schedule = schedule.value if schedule else recipe.schedule
    augmentation = Augment.parse(augment if augment is not None else recipe.augment)
    net = Sequential(spec).build(seed=seed, device=device.value)
    opt = make_optimizer(optimizer.value if optimizer else recipe.optimizer, lr if lr is not None else recipe.lr)
    base_lr = opt.lr
    x_train, y_train = _load_split(dataset, "train", data_dir, limit)
    x_test, y_test = _load_split(dataset, "test", data_dir)
    out.print(f"Training [bold]{layers and 'custom layers' or model}[/] ({net.count_params():,} parameters) on "
              f"{dataset.value}: {len(x_train):,} images, {_count(epochs, 'epoch')} of batch {batch_size}, "
              f"{opt.name} lr {base_lr:g} ({schedule}), augmentation {augmentation}, seed {seed}, {device.value}.")

    def save(result):
        meta = {"dataset": dataset.value, "epochs": result.epoch, "seed": seed, "optimizer": opt.name,
                "lr": base_lr, "schedule": schedule, "batch_size": batch_size, "augment": str(augmentation),
                "test_accuracy": result.test_accuracy}
        checkpoint.save(net, output, meta)

    with TrainingProgress(err, epochs) as progress:
        results = fit(net, opt, x_train, y_train, epochs=epochs, batch_size=batch_size, seed=seed,
                      test=(x_test, y_test), schedule=schedule, stop_at=stop_at, augment=augmentation,
                      on_batch=progress.batch,
                      on_epoch=lambda r: (save(r), progress.epoch(r)))
    last = results[-1]
    out.print(f"Test accuracy: [bold]{last.test_accuracy:.2%}[/] on {len(x_test):,} {dataset.value} test images "
              f"after {_count(last.epoch, 'epoch')}. Saved to {output}.")


@app.command()
@user_errors
def evaluate(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A file written by `numbacnn train`."),
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help="Default: the one it was trained on."),
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
):
    """Accuracy and loss of a saved network on the whole test set."""
    from . import checkpoint
    from .train import evaluate as run_evaluation

    _set_threads(threads)
    net, meta = checkpoint.load(checkpoint_path, device=device.value)
    dataset = dataset or Dataset(meta.get("dataset", "mnist"))
    x_test, y_test = _load_split(dataset, "test", data_dir)
    loss, accuracy = run_evaluation(net, x_test, y_test)
    out.print(f"{dataset.value} test set, {len(x_test):,} images: accuracy [bold]{accuracy:.2%}[/], loss {loss:.4f}")


@app.command()
@user_errors
def predict(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A file written by `numbacnn train`."),
    indexes: Optional[list[int]] = typer.Argument(None, help="Test-set image numbers (0-9999) to classify."),
    image: Optional[list[Path]] = typer.Option(
        None, "--image", "-i", help="A PNG or PGM file of one digit (any size; dark-on-light is inverted). Repeatable."
    ),
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help="Default: the one it was trained on."),
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
):
    """Classify test-set images by number, or image files, with the class probabilities."""
    from . import checkpoint
    from .data import class_names, read_image
    from .train import prepare_images

    if not indexes and not image:
        raise NumbacnnError("Give test-set image numbers (e.g. `predict model.npz 0 1 2`) or --image FILE.")
    net, meta = checkpoint.load(checkpoint_path, device=device.value)
    dataset = dataset or Dataset(meta.get("dataset", "mnist"))
    names = class_names(dataset.value)
    rows = []  # (what, true label or "", image)
    if indexes:
        x_test, y_test = _load_split(dataset, "test", data_dir)
        for i in indexes:
            if not 0 <= i < len(x_test):
                raise NumbacnnError(f"Image number {i} is outside the test set; use 0 to {len(x_test) - 1}.")
            rows.append((f"test #{i}", names[y_test[i]], x_test[i]))
    for path in image or []:
        rows.append((str(path), "", prepare_images(read_image(path)[None])[0]))
    probabilities = net.predict(np.stack([r[2] for r in rows]))
    table = Table("image", "true", "predicted", "confidence", "runner-up")
    for (what, truth, _), p in zip(rows, probabilities):
        best, second = np.argsort(p)[::-1][:2]
        table.add_row(what, truth, names[best], f"{p[best]:.1%}", f"{names[second]} {p[second]:.1%}")
    out.print(table)


@app.command()
@user_errors
def summary(
    model: str = MODEL,
    layers: Optional[str] = LAYERS,
    checkpoint_path: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Summarise a saved network instead."),
):
    """Each layer's output shape and parameters, split into weights and biases, and the total."""
    from . import checkpoint
    from .model import Sequential

    if checkpoint_path:
        net, _ = checkpoint.load(checkpoint_path)
    else:
        net = Sequential(_spec(model, layers)).build()
    rows = net.summary()
    table = Table("#", "layer", "output shape", "weights", "biases", "non-trainable", "what they are",
                  title=f"input {net.input_shape}", title_justify="left")
    for r in rows:
        # A block's layers sit below it, indented; its own row already counts them.
        style = "dim" if r.depth else None
        table.add_row(r.index, "  " * r.depth + r.layer, str(r.out_shape), f"{r.weights:,}", f"{r.biases:,}",
                      f"{r.non_trainable:,}", r.detail, style=style)
    top = [r for r in rows if r.depth == 0]
    weights, biases = sum(r.weights for r in top), sum(r.biases for r in top)
    non_trainable = sum(r.non_trainable for r in top)
    table.add_section()
    table.add_row("", "total", "", f"{weights:,}", f"{biases:,}", f"{non_trainable:,}", "", style="bold")
    out.print(table)
    out.print(f"Total parameters: {weights + biases + non_trainable:,}; trainable: {weights + biases:,} (weights "
              f"and biases); non-trainable: {non_trainable:,} (state such as running statistics, never trained).")


@app.command("models")
@user_errors
def list_models():
    """The named networks (for -m), their sizes and the training recipe `numbacnn train -m NAME` uses."""
    from .model import Sequential
    from .presets import preset_recipe

    table = Table("name", "parameters", "epochs", "batch", "optimiser", "lr", "schedule", "augment", "layers")
    for name, spec in PRESETS.items():
        recipe = preset_recipe(name)
        lr = "default" if recipe.lr is None else f"{recipe.lr:g}"
        table.add_row(name, f"{Sequential(spec).build().count_params():,}", str(recipe.epochs), str(recipe.batch_size),
                      recipe.optimizer, lr, recipe.schedule, recipe.augment, escape(spec))
    out.print(table)


@app.command("layers")
@user_errors
def list_layers(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """Every registered layer: name, providing package and version, devices, load status."""
    from .registry import registry

    rows = []
    for e in registry.entries():
        status = e.status
        devices = list(e.load().devices) if status == "ok" else []
        signature = e.load().__init__ and _signature(e) if status == "ok" else ""
        rows.append({"name": e.name, "package": e.package, "version": e.version, "devices": devices,
                     "status": status, "arguments": signature})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("layer", "arguments", "package", "devices", "status")
    for r in rows:
        ok = r["status"] == "ok"
        table.add_row(r["name"], r["arguments"], f"{r['package']} {r['version']}", ", ".join(r["devices"]),
                      "ok" if ok else f"[red]{escape(r['status'])}[/]")
    out.print(table)


def _signature(entry) -> str:
    from .spec import signature_text

    return signature_text(entry.load())


@app.command()
@user_errors
def bench(
    model: str = MODEL,
    layers: Optional[str] = LAYERS,
    batch_size: int = typer.Option(128, "--batch-size", "-b", min=1, help="Images per step."),
    steps: int = typer.Option(20, "--steps", min=1, help="Timed steps per measurement (after warm-up)."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Repeats of each measurement; the median is reported."),
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
    torch: bool = typer.Option(True, "--torch/--no-torch", help="Also time PyTorch, when installed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
):
    """Time each layer's forward and backward pass and whole training steps, beside PyTorch when installed."""
    from .bench import run_bench

    _set_threads(threads)
    report = run_bench(_spec(model, layers), batch_size=batch_size, steps=steps, repeats=repeats,
                       device=device.value, with_torch=torch)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from .bench import print_report

        print_report(report, out)


@data_app.command("fetch")
@user_errors
def data_fetch(
    dataset: Dataset = typer.Argument(Dataset.mnist, help="The data set to download."),
    data_dir: Optional[Path] = DATA_DIR,
):
    """Download a data set into the cache (checksums checked), or check the copy in --data-dir."""
    from .data import load_dataset

    for split in ("train", "test"):
        images, _ = load_dataset(dataset.value, split, data_dir=data_dir)
        out.print(f"{dataset.value} {split}: {len(images):,} images, checksums ok.")


@data_app.command("where")
def data_where(data_dir: Optional[Path] = DATA_DIR):
    """Where the data sets are read from, and where compiled kernels are cached."""
    from .data import resolve_cache_dir, resolve_data_dir

    local = resolve_data_dir(data_dir)
    if local is not None:
        out.print(f"Data sets are read from {local} (--data-dir or NUMBACNN_DATA_DIR); nothing is downloaded.")
    else:
        out.print(f"Data sets are downloaded into {resolve_cache_dir(None)} (set NUMBACNN_CACHE_DIR to move it).")
    import numba

    out.print(f"Compiled kernels are cached in {numba.config.CACHE_DIR} (NUMBA_CACHE_DIR moves it; safe to delete).")


def main() -> None:  # pragma: no cover - the console script
    app()
