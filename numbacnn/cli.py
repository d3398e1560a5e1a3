"""The ``numbacnn`` command: train, evaluate, predict, summary, layers, bench, data, show, export."""

from __future__ import annotations

import functools
import json
import os
import textwrap
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .data import BUILTIN
from .device import DEVICES
from .errors import NumbacnnError
from .optim import OPTIMIZERS
from .presets import DEFAULT_PRESET, PRESETS
from .run import PLATEAU_FACTOR, PLATEAU_PATIENCE, VALIDATION_DEFAULT, Reporter, RunConfig, RunResult, RunStart
from .run import network_spec
from .run import train as run_training
from .run import validation_size as _validation_size
from .train import SCHEDULES

# Help texts are plain text, not Rich markup: "numbacnn[cuda]" must show its brackets. -h works as --help.
HELP_SETTINGS = {"rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(
    help="Small convolutional networks with Numba kernels: train and use MNIST classifiers, add layers as plug-ins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    **HELP_SETTINGS,
)
data_app = typer.Typer(help="Fetch the data sets, show what a data set or a folder of pictures holds, write one out "
                            "as pictures, and show where they are kept.", no_args_is_help=True, **HELP_SETTINGS)
app.add_typer(data_app, name="data")
show_app = typer.Typer(help="Pictures of a trained network, written as PNG files.", no_args_is_help=True,
                       **HELP_SETTINGS)
app.add_typer(show_app, name="show")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # never quiet: see main()


def _choices(name: str, values) -> type[Enum]:
    """The choices of an option, taken from the registry that defines them (so they are listed once)."""
    return Enum(name, {value: value for value in values}, type=str)


Dataset = _choices("Dataset", BUILTIN)
Color = _choices("Color", ("grey", "rgb"))
DeviceName = _choices("DeviceName", DEVICES)
Schedule = _choices("Schedule", SCHEDULES)
OptimizerName = _choices("OptimizerName", OPTIMIZERS)


# Options that several commands share, declared once.
LABEL_SMOOTHING = typer.Option(
    None, "--label-smoothing", metavar="EPS",
    help="Train against targets smoothed towards all classes: (1 - EPS) on the true class and EPS spread evenly, "
         "0 <= EPS < 1, as PyTorch's label_smoothing (default: the network's recipe, else 0, none).",
)
CLASS_WEIGHT = typer.Option(
    None, "--class-weight", metavar="balanced|W0,W1,...",
    help="Weigh each class's loss: 'balanced' (images / (classes * images of the class), for unbalanced data) or "
         "one number per class; the accuracy shown stays unweighted (default: all 1).",
)
DATA_DIR = typer.Option(
    None, "--data-dir", envvar="NUMBACNN_DATA_DIR", show_envvar=True,
    help="Folder holding mnist/ and fashion-mnist/ with the four IDX files each (and cifar10/ with "
         "cifar-10-binary.tar.gz); nothing is downloaded then.",
)
DEVICE = typer.Option(DeviceName.cpu, "--device", help="Where to run: cpu, or cuda (needs numbacnn[cuda] and a GPU).")
THREADS = typer.Option(None, "--threads", min=1, help="CPU threads for the kernels (default: all cores).")
MODEL = typer.Option(None, "--model", "-m", help=f"A named network: {', '.join(PRESETS)} (default: {DEFAULT_PRESET}).")
TEST_DATA = typer.Option(
    None, "--dataset", "-d", metavar="NAME|FOLDER",
    help="The test images: a built-in data set, or a folder of pictures with the classes the network knows "
         "(default: the data it was trained on, prepared as it was then).",
)
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
            # Errors show from every process of a parallel run (the others print nothing), naming it.
            errors.print(f"[bold red]Error{_process_name()}:[/] {escape(_one_line(error))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]Interrupted.[/]")
            raise typer.Exit(130) from None

    return wrapper


def _one_line(error: Exception) -> str:
    """An error's sentence as one printable line: a file name or setting it quotes may hold line breaks or
    other control characters, shown escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(error))


def _set_threads(threads: Optional[int]) -> None:
    """Caps the kernels' threads and BLAS's at ``threads`` (both pools, so figures compare fairly)."""
    if threads:
        import numba
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        threadpool_limits(threads)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _spec(model: Optional[str], layers: Optional[str]) -> str:
    """The spec text that -m or --layers asks for (the default network when neither does)."""
    return network_spec(model, layers)


def _image_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """--image-size "H,W" (or "N" for a square) as (H, W)."""
    if text is None:
        return None
    parts = [part.strip() for part in text.lower().replace("x", ",").split(",")]
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise NumbacnnError(f"--image-size {text!r} is not a size; give HEIGHT,WIDTH in pixels, e.g. 64,64.")
    return (int(parts[0]), int(parts[-1]))


def _saved_data(meta: dict, dataset: Optional[str], data_dir: Optional[Path]):
    """The data set a saved network was trained on (or ``dataset`` instead), prepared as it was then."""
    from .data import DataSpec, reopen

    return reopen(DataSpec.from_metadata(meta), source=dataset, data_dir=data_dir)


def _test_images(data) -> tuple[np.ndarray, np.ndarray]:
    from .run import prepared

    return prepared(data, "test")


def _picture(meta: dict, path: Path) -> np.ndarray:
    """The picture at ``path`` prepared exactly as the network's training images were, as floats."""
    from .data import DataSpec
    from .train import prepare_images

    return prepare_images(DataSpec.from_metadata(meta).preparation.read(path)[None])[0]


def _class_names(meta: dict) -> list[str]:
    from .data import DataSpec

    return list(DataSpec.from_metadata(meta).classes)


@app.command()
@user_errors
def train(
    model: Optional[str] = MODEL,
    layers: Optional[str] = LAYERS,
    dataset: Optional[str] = typer.Option(
        None, "--dataset", "-d", metavar="NAME|FOLDER",
        help=f"The data set to train on: {', '.join(BUILTIN)}, or a folder of pictures with one sub-folder per "
             f"class (FOLDER/cat/*.jpg, FOLDER/dog/*.png; FOLDER/train/ and FOLDER/test/ for a test set of your "
             f"own, else a fifth of each class is held out) (default: mnist).",
    ),
    color: Optional[Color] = typer.Option(
        None, "--color", help="Read a folder's pictures as rgb or grey (default: grey when they all are, else rgb)."
    ),
    image_size: Optional[str] = typer.Option(
        None, "--image-size", metavar="H,W",
        help="Resize a folder's pictures to H,W pixels (or N for N,N) (default: their size, when they all share one).",
    ),
    epochs: Optional[int] = typer.Option(
        None, "--epochs", "-e", help="Passes over the training set (default: the network's recipe, else 12)."
    ),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", "-b", help="Images per training step (default: the network's recipe, else 128)."
    ),
    optimizer: Optional[OptimizerName] = typer.Option(
        None, "--optimizer", help="adam or sgd (with momentum 0.9) (default: the network's recipe, else adam)."
    ),
    lr: Optional[float] = typer.Option(
        None, "--lr", help="Learning rate (default: the network's recipe, else 0.001 for adam, 0.01 for sgd)."
    ),
    schedule: Optional[Schedule] = typer.Option(
        None, "--schedule",
        help="Learning rate over the run: cosine (decays to zero), constant, onecycle (up to --lr over the first fifth, then down to zero), or plateau (--lr, lowered when the validation loss stops falling: see --plateau-factor) (default: the network's recipe, else cosine).",
    ),
    augment: Optional[str] = typer.Option(
        None, "--augment",
        help="Random changes to each training image: none, or shift=N (up to N pixels each way), with "
             "rotate=DEGREES, scale=FRACTION and flip (each image mirrored left to right with probability one "
             "half), e.g. 'shift=2,rotate=10' or 'shift=1,flip' (default: the network's recipe, else none).",
    ),
    validation: Optional[int] = typer.Option(
        None, "--validation", min=0,
        help=f"Training images held out (the last N) to score each epoch, pick the best one and decide --stop-at; "
             f"0 trains on all of them (default: the network's recipe, else {VALIDATION_DEFAULT:,}).",
    ),
    stop_at: Optional[float] = typer.Option(
        None, "--stop-at", min=0.0, max=1.0, help="End early once the validation accuracy reaches this, e.g. 0.99."
    ),
    patience: Optional[int] = typer.Option(
        None, "--patience", metavar="N",
        help="End early after N epochs in a row without a better validation accuracy (the best epoch is kept), as "
             "Keras's EarlyStopping (default: never).",
    ),
    plateau_factor: Optional[float] = typer.Option(
        None, "--plateau-factor",
        help=f"With --schedule plateau: what the rate is multiplied by on a plateau (default {PLATEAU_FACTOR:g}).",
    ),
    plateau_patience: Optional[int] = typer.Option(
        None, "--plateau-patience", metavar="N",
        help=f"With --schedule plateau: lower the rate after N epochs in a row without a lower validation loss "
             f"(default {PLATEAU_PATIENCE}).",
    ),
    label_smoothing: Optional[float] = LABEL_SMOOTHING,
    class_weight: Optional[str] = CLASS_WEIGHT,
    tensorboard: Optional[Path] = typer.Option(
        None, "--tensorboard", metavar="DIR",
        help="Write loss, accuracy and learning rate per step and per epoch, weight histograms, filters and feature "
             "maps into DIR for `tensorboard --logdir DIR` (needs numbacnn[tensorboard]).",
    ),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seeds the weights, the batch order, dropout and augmentation: same seed, same run (default 0)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Train on the first N training images only."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o",
        help="Checkpoint of the best epoch, a name ending in .npz (default model.npz); beside it "
             "OUTPUT.metrics.jsonl (per-epoch metrics) and, until the run ends, OUTPUT.resume.npz (what --resume "
             "continues from).",
    ),
    resume: Optional[Path] = typer.Option(
        None, "--resume", metavar="CHECKPOINT",
        help="Continue the interrupted run whose --output was CHECKPOINT, with all its settings, where it stopped.",
    ),
    restart: bool = typer.Option(
        False, "--restart",
        help="Start afresh at an --output whose interrupted run could still be resumed, throwing its saved state "
             "away (without --resume or --restart, such an output is refused).",
    ),
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
):
    """Train a network and report its test accuracy; the best epoch is kept in --output.

    A named network (-m) brings its own training recipe (`numbacnn models` lists them); every option given
    here wins over it. Each epoch is scored on a validation set held out of the training images; the test
    set is used once, at the end, on the best epoch. Ctrl-C or SIGTERM saves the run so far after the step
    under way (exit code 130 or 143): `--resume` continues it, `--restart` throws it away.
    """
    from .train import TrainingInterrupted

    _set_threads(threads)
    config = RunConfig(
        model=model, layers=layers, dataset=dataset, color=_value(color), image_size=_image_size(image_size),
        epochs=epochs, batch_size=batch_size,
        optimizer=_value(optimizer), lr=lr, schedule=_value(schedule), augment=augment, validation=validation,
        stop_at=stop_at, seed=seed, limit=limit, output=output, resume=resume, restart=restart, data_dir=data_dir,
        device=device.value, patience=patience, plateau_factor=plateau_factor, plateau_patience=plateau_patience,
        label_smoothing=label_smoothing, class_weight=class_weight, tensorboard=tensorboard,
    )
    try:
        run_training(config, _TrainingReport())
    except TrainingInterrupted as stop:
        raise typer.Exit(stop.exit_code) from None


def _value(choice: Optional[Enum]) -> Optional[str]:
    return None if choice is None else choice.value


def _training_habits(s) -> str:
    """The loss, patience, plateau and TensorBoard settings a run uses beyond the usual, in words ("" if none)."""
    said = []
    if s.label_smoothing:
        said.append(f"label smoothing {s.label_smoothing:g}")
    if s.class_weight is not None:
        weights = s.class_weight if isinstance(s.class_weight, str) else ",".join(f"{w:g}" for w in s.class_weight)
        said.append(f"class weights {weights}")
    if s.schedule == "plateau":
        said.append(f"the rate times {s.plateau_factor:g} after {_count(s.plateau_patience, 'epoch')} without a lower "
                    f"validation loss")
    if s.patience is not None:
        said.append(f"stop after {_count(s.patience, 'epoch')} without a better validation accuracy")
    if s.tensorboard is not None:
        said.append(f"TensorBoard files in {escape(s.tensorboard)}")
    return "; ".join(said)


def _say_compiling(what: str) -> None:
    err.print(f"Compiling {what} (once: later runs load it from the kernel cache).")


class _TrainingReport(Reporter):
    """A run's words on the terminal: what it trains, a bar per epoch (on stderr), and the test score."""

    def started(self, start: RunStart) -> None:
        from .kernels import generate
        from .progress import TrainingProgress

        generate.on_new_kernel = _say_compiling

        s, state = start.settings, start.state
        where = f"from epoch {state.epoch}, batch {state.batches_done + 1}, " if start.resumed else ""
        processes = (f", {start.processes} processes (each batch split between them, over MPI)"
                     if start.processes > 1 else "")
        out.print(f"{'Resuming' if where else 'Training'} [bold]{escape(s.name)}[/] ({start.parameters:,} "
                  f"parameters) on {s.dataset}: {start.train_images:,} images ({start.validation_images:,} held out "
                  f"for validation), {where}{_count(s.epochs, 'epoch')} of batch {s.batch_size}, {start.optimizer} "
                  f"lr {start.lr:g} ({s.schedule}), augmentation {s.augment}, seed {s.seed}, "
                  f"{start.device}{processes}.")
        habits = _training_habits(s)
        if habits:
            out.print(f"Also: {habits}.")
        if s.data is not None:  # a folder of pictures: what it holds is the user's to check
            out.print(f"Images of each class (training and validation): {escape(start.class_counts)}.")
        if start.skipped:
            err.print(f"[yellow]{escape(start.skipped)}[/]")
        self.progress = TrainingProgress(err, s.epochs).__enter__()

    def batch(self, stats) -> None:
        self.progress.batch(stats)

    def validating(self, images: int) -> None:
        self.progress.validating(images)

    def epoch(self, result) -> None:
        self.progress.epoch(result)

    def stopped(self) -> None:
        self.progress.__exit__(None, None, None)

    def note(self, text: str) -> None:
        err.print(f"[yellow]Note:[/] {escape(text)}")

    def interrupted(self, state, path: Path, resume_path: Path, best_epoch: Optional[int]) -> None:
        kept = f"; {path} keeps the best epoch, {best_epoch}" if best_epoch else ""
        err.print(f"Interrupted in epoch {state.epoch} after {state.batches_done} batches. Saved the run so far to "
                  f"{resume_path}{kept}. Continue it with: numbacnn train --resume {path}")

    def finished(self, result: RunResult) -> None:
        chosen = (f"the best epoch by validation accuracy, {result.best_epoch} of {result.epochs_run} "
                  f"({result.val_accuracy:.2%})" if result.val_accuracy is not None else f"epoch {result.best_epoch}")
        out.print(f"Test accuracy: [bold]{result.test_accuracy:.2%}[/] on {result.test_images:,} {result.dataset} "
                  f"test images, with {chosen}. Saved to {result.path}; per-epoch metrics in "
                  f"{result.metrics_path}.")


@app.command()
@user_errors
def evaluate(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A file written by `numbacnn train`."),
    dataset: Optional[str] = TEST_DATA,
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
):
    """Accuracy and loss of a saved network on the whole test set, and the accuracy on each class."""
    from . import checkpoint
    from .metrics import class_accuracy
    from .train import evaluate as run_evaluation

    _set_threads(threads)
    net, meta = checkpoint.load(checkpoint_path, device=device.value)
    data = _saved_data(meta, dataset, data_dir)
    x_test, y_test = _test_images(data)
    loss, accuracy = run_evaluation(net, x_test, y_test)
    names = list(data.classes)
    per_class = class_accuracy(y_test, net.predict(x_test).argmax(axis=1), len(names))
    if as_json:
        typer.echo(json.dumps({"dataset": data.name, "images": len(x_test), "accuracy": accuracy, "loss": loss,
                               "class_accuracy": dict(zip(names, per_class.tolist()))}, indent=2))
        return
    out.print(f"{escape(data.name)} test set, {len(x_test):,} images: accuracy [bold]{accuracy:.2%}[/], loss {loss:.4f}")
    table = Table("class", "images", "accuracy")
    for name, count, share in zip(names, np.bincount(y_test, minlength=len(names)), per_class):
        table.add_row(name, f"{count:,}", f"{share:.2%}")
    out.print(table)


@app.command(context_settings={"ignore_unknown_options": True})  # "-1" is an image number, not an option
@user_errors
def predict(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A file written by `numbacnn train`."),
    indexes: Optional[list[int]] = typer.Argument(None, help="Test-set image numbers (0-9999) to classify."),
    image: Optional[list[Path]] = typer.Option(
        None, "--image", "-i",
        help="A picture file (PNG, JPEG, ...; any size), prepared as the training images were: resized to their "
             "size, in their colour (for digits, dark-on-light inverted). Repeatable."
    ),
    dataset: Optional[str] = TEST_DATA,
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts: every class's probability."),
):
    """Classify test-set images by number, or image files, with the class probabilities."""
    from . import checkpoint

    if not indexes and not image:
        raise NumbacnnError("Give test-set image numbers (e.g. `predict model.npz 0 1 2`) or --image FILE.")
    net, meta = checkpoint.load(checkpoint_path, device=device.value)
    names = _class_names(meta)
    rows = []  # (what, true label or "", image)
    if indexes:
        x_test, y_test = _test_images(_saved_data(meta, dataset, data_dir))
        for i in indexes:
            _check_index(i, len(x_test))
            rows.append((f"test #{i}", names[y_test[i]], x_test[i]))
    for path in image or []:
        rows.append((str(path), "", _picture(meta, path)))
    probabilities = net.predict(np.stack([r[2] for r in rows]))
    if as_json:
        typer.echo(json.dumps([{"image": what, "true": truth or None, "predicted": names[int(p.argmax())],
                                "probabilities": dict(zip(names, p.tolist()))}
                               for (what, truth, _), p in zip(rows, probabilities)], indent=2))
        return
    table = Table("image", "true", "predicted", "confidence", "runner-up")
    for (what, truth, _), p in zip(rows, probabilities):
        best, second = np.argsort(p)[::-1][:2]
        table.add_row(what, truth, names[best], f"{p[best]:.1%}", f"{names[second]} {p[second]:.1%}")
    out.print(table)


@app.command()
@user_errors
def summary(
    saved: Optional[Path] = typer.Argument(None, metavar="[CHECKPOINT]",
                                           help="A file written by `numbacnn train`, to summarise that network."),
    model: Optional[str] = MODEL,
    layers: Optional[str] = LAYERS,
    checkpoint_option: Optional[Path] = typer.Option(None, "--checkpoint", "-c",
                                                     help="The same as giving CHECKPOINT."),
):
    """Each layer's output shape and parameters, split into weights and biases, and the total: of a saved
    network (`summary model.npz`), a named one (-m) or a layer spec (-l)."""
    from . import checkpoint
    from .model import Sequential

    if saved and checkpoint_option and saved != checkpoint_option:
        raise NumbacnnError(f"Give one checkpoint, not both {saved} and -c {checkpoint_option}.")
    checkpoint_path = saved or checkpoint_option
    if checkpoint_path and (model or layers):
        raise NumbacnnError("Summarise either a checkpoint or a network given by -m/-l, not both.")
    if checkpoint_path:
        net, meta = checkpoint.load(checkpoint_path)
        out.print(escape(_training_record(checkpoint_path, meta)))
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


def _training_record(path: Path, meta: dict) -> str:
    """One line on how a checkpoint was trained and how well it scores, from what training saved in it."""
    said = [f"{path}: trained on {meta.get('dataset', 'an unknown data set')}"]
    if isinstance(meta.get("epochs"), int):
        run = meta.get("epochs_run")
        said.append(f"epoch {meta['epochs']} of {run}" if isinstance(run, int) else _count(meta["epochs"], "epoch"))
    for key, label in (("val_accuracy", "validation accuracy"), ("test_accuracy", "test accuracy")):
        if isinstance(meta.get(key), (int, float)):
            said.append(f"{label} {meta[key]:.2%}")
    return ", ".join(said) + "."


@app.command("models")
@user_errors
def list_models():
    """The named networks (for -m), their sizes and the training recipe `numbacnn train -m NAME` uses; a row
    "NAME -d DATASET" gives the recipe on a data set where it differs."""
    from .model import Sequential
    from .presets import DATASET_RECIPES, preset_recipe

    headers = ["name", "parameters", "epochs", "batch", "optimiser", "lr", "schedule", "augment", "validation",
               "smoothing", "layers"]
    rows = []
    for name, spec in PRESETS.items():
        size = f"{Sequential(spec).build().count_params():,}"
        datasets = [None] + [dataset for network, dataset in DATASET_RECIPES if network == name]
        for dataset in datasets:
            recipe = preset_recipe(name, dataset)
            lr = "default" if recipe.lr is None else f"{recipe.lr:g}"
            rows.append([name if dataset is None else f"{name} -d {dataset}", size, str(recipe.epochs),
                         str(recipe.batch_size), recipe.optimizer, lr, recipe.schedule, recipe.augment,
                         f"{_validation_size(None, recipe.validation):,}", f"{recipe.label_smoothing:g}",
                         spec if dataset is None else "the same"])

    def lines(row):
        name, size, epochs, batch, optimiser, lr, schedule, augment, validation, smoothing, layers = row
        recipe = (f"{_count(int(epochs), 'epoch')}, batch {batch}, {optimiser}, lr {lr}, {schedule} schedule, "
                  f"augment {augment}, validation {validation}, label smoothing {smoothing}")
        return [f"{name}: {size} parameters", f"recipe: {recipe}", f"layers: {layers}"]

    _print_rows(headers, rows, fold="layers", lines=lines)


@app.command("layers")
@user_errors
def list_layers(as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts.")):
    """Every registered layer: name, providing package and version, devices, load status."""
    from .registry import NO_PLUGINS_ENV, plugins_disabled, registry

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
    headers = ["layer", "arguments", "package", "devices", "status"]

    def table_rows(between: str):
        return [[r["name"], r["arguments"], f"{r['package']}{between}{r['version']}", ", ".join(r["devices"]),
                 r["status"]] for r in rows]

    def lines(row):
        name, arguments, package, devices, status = row
        package = " ".join(package.split())  # the version on the same line again
        return [f"{name}{arguments}", f"from {package}, runs on {devices or 'nothing'}: {status}"]

    # The version below the package's name where that lets the table fit (80 columns).
    between = " " if _table_fits(headers, table_rows(" "), "arguments") else "\n"
    _print_rows(headers, table_rows(between), fold="arguments", lines=lines,
                style=lambda row: None if row[4] == "ok" else "red")
    if plugins_disabled():
        out.print(f"Plug-ins are disabled ({NO_PLUGINS_ENV}=1): only the built-in layers are listed.")


# -- tables that fit the terminal -----------------------------------------------------------------------------

# The narrowest a column that folds may get: below it, plain lines read better than a table.
FOLD_MIN_WIDTH = 16


def _whole_widths(headers: list[str], rows: list[list[str]]) -> list[int]:
    """Each column's width with every line of every cell whole."""
    return [max(len(line) for cell in [header, *(row[i] for row in rows)] for line in cell.split("\n"))
            for i, header in enumerate(headers)]


def _table_fits(headers: list[str], rows: list[list[str]], fold: str) -> bool:
    """Whether the console is wide enough for the table with its cells whole and the column ``fold`` at
    FOLD_MIN_WIDTH: each column takes its text, a space each side and a border."""
    widths = _whole_widths(headers, rows)
    widths[headers.index(fold)] = FOLD_MIN_WIDTH
    return sum(w + 3 for w in widths) + 1 <= out.width


def _print_rows(headers: list[str], rows: list[list[str]], *, fold: str, lines, style=None) -> None:
    """Prints ``rows`` as a table in which every cell stays whole (names and numbers are never cut) except
    those of the column ``fold``, which wrap; where the console (80 columns when piped, or $COLUMNS) is too
    narrow even for that, each row as the plain lines ``lines(row)`` gives, wrapped between words.
    ``style(row)`` may colour a row ("red")."""
    from rich.table import Column
    from rich.text import Text

    if _table_fits(headers, rows, fold):
        widths = _whole_widths(headers, rows)
        columns = [Column(h, overflow="fold", ratio=1, min_width=FOLD_MIN_WIDTH) if h == fold else
                   Column(h, no_wrap=True, min_width=w) for h, w in zip(headers, widths)]
        table = Table(*columns)
        for row in rows:
            table.add_row(*(Text(cell) for cell in row), style=style(row) if style else None)
        out.print(table)
        return
    for row in rows:
        for number, line in enumerate(lines(row)):
            indent = "" if number == 0 else "    "
            out.print(Text(textwrap.fill(line, width=max(out.width, 20), initial_indent=indent,
                                         subsequent_indent=indent + "    ", break_long_words=False,
                                         break_on_hyphens=False), style=style(row) if style else ""))


def _signature(entry) -> str:
    from .spec import signature_text

    return signature_text(entry.load())


@app.command()
@user_errors
def bench(
    model: Optional[str] = MODEL,
    layers: Optional[str] = LAYERS,
    dataset: str = typer.Option(
        "mnist", "--dataset", "-d", metavar="NAME|FOLDER",
        help=f"The images the steps take: the training images of {', '.join(BUILTIN)} or of a folder of pictures, "
             "each step the next batch of a shuffled order, as training draws them; the network is built for their "
             "shape. Random images stand in, and the report says why, when they cannot be loaded or do not fit the "
             "network.",
    ),
    random_images: bool = typer.Option(False, "--random-images", help="Time the steps on random images instead."),
    batch_size: int = typer.Option(128, "--batch-size", "-b", min=1, help="Images per step."),
    steps: int = typer.Option(
        20, "--steps", min=1,
        help="Calls per timing: each layer's row times this many calls in a row; the training and inference "
             "figures are medians over --steps x --repeats steps of each framework, each step timed on its own.",
    ),
    repeats: int = typer.Option(
        5, "--repeats", min=1,
        help="Timings per figure: each layer's row is the median of this many; the training and inference figures "
             "are medians over --steps x --repeats steps.",
    ),
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
    torch: bool = typer.Option(True, "--torch/--no-torch", help="Also time PyTorch, when installed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
    data_dir: Optional[Path] = DATA_DIR,
):
    """Time each layer's forward and backward pass, then training and inference steps on real batches, each
    step timed on its own, in turn with PyTorch's steps on the same batches when it is installed (the ratio:
    PyTorch's median step time over numbacnn's; the middle half of the pairs' ratios beside it)."""
    from .bench import run_bench

    _set_threads(threads)
    report = run_bench(_spec(model, layers), batch_size=batch_size, steps=steps, repeats=repeats,
                       device=device.value, with_torch=torch, dataset=None if random_images else dataset,
                       data_dir=data_dir)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        from .bench import print_report

        print_report(report, out)


@app.command("export")
@user_errors
def export_onnx(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A file written by `numbacnn train`."),
    output: Path = typer.Argument(..., metavar="FILE.onnx", help="The ONNX file to write."),
):
    """Write a saved network as an ONNX model (needs numbacnn[onnx]): input "images" (N, H, W, C) float32 in
    [0, 1], the shape of the images it was trained on (N, 28, 28, 1 for MNIST), output "probabilities" (N, classes),
    for onnxruntime and other ONNX runtimes."""
    from . import checkpoint
    from .export import save_onnx

    _check_output(output, ".onnx")
    net, _ = checkpoint.load(checkpoint_path)
    save_onnx(net, output)
    out.print(f"Saved {output}: input \"images\" (N, {', '.join(map(str, net.input_shape))}) float32 in [0, 1], "
              f"output \"probabilities\" (N, {net.output_shape[0]}).")


def _check_output(path: Path, suffix: str) -> None:
    """A one-sentence error for an output file that cannot be written where the user asked."""
    if path.suffix.lower() != suffix:
        raise NumbacnnError(f"The output {path} should end in {suffix}, e.g. model{suffix}.")
    folder = path.parent
    if not folder.is_dir():
        raise NumbacnnError(f"The folder {folder} does not exist; create it or choose another output file.")
    if path.is_dir():
        raise NumbacnnError(f"The output {path} is a folder; give a file name, e.g. {path / ('model' + suffix)}.")


CHECKPOINT = typer.Argument(..., metavar="CHECKPOINT", help="A file written by `numbacnn train`.")


def _png(default: str):
    return typer.Option(Path(default), "--output", "-o", help="The PNG file to write.")


def _save_picture(figure, output: Path, what: str) -> None:
    from .show import panels, save_png

    save_png(figure, output)
    out.print(f"Saved {what} to {output} ({_count(len(panels(figure)), 'panel')}).")


@show_app.command("filters")
@user_errors
def show_filters(checkpoint_path: Path = CHECKPOINT, output: Path = _png("filters.png")):
    """Every convolution's filters: the first layer's as small pictures, deeper ones one row per filter."""
    from . import checkpoint
    from .show import filters_figure

    _check_output(output, ".png")
    net, _ = checkpoint.load(checkpoint_path)
    _save_picture(filters_figure(net), output, "the filters")


@show_app.command("features")
@user_errors
def show_features(
    checkpoint_path: Path = CHECKPOINT,
    index: int = typer.Option(0, "--index", "-n", help="The test-set image number (0-9999)."),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="A picture file (PNG, JPEG, ...) instead."),
    output: Path = _png("features.png"),
    dataset: Optional[str] = TEST_DATA,
    data_dir: Optional[Path] = DATA_DIR,
):
    """The feature maps of one image after each convolution, ReLU and pooling layer, with their shapes."""
    from . import checkpoint
    from .show import features_figure

    _check_output(output, ".png")
    net, meta = checkpoint.load(checkpoint_path)
    names = _class_names(meta)
    if image is not None:
        x, what = _picture(meta, image), f"{image.name}:"
    else:
        x_test, y_test = _test_images(_saved_data(meta, dataset, data_dir))
        _check_index(index, len(x_test))
        x, what = x_test[index], f"test image #{index} (labelled {names[y_test[index]]}):"
    p = net.predict(x[None])[0]
    title = f"Feature maps of {what} the network says {names[p.argmax()]} ({p.max():.1%})"
    _save_picture(features_figure(net, x, title), output, "the feature maps")


def _check_index(index: int, count: int) -> None:
    if not 0 <= index < count:
        raise NumbacnnError(f"Image number {index} is outside the test set; use 0 to {count - 1}.")


@show_app.command("history")
@user_errors
def show_history(checkpoint_path: Path = CHECKPOINT, output: Path = _png("history.png")):
    """Loss and accuracy per epoch, training and validation, as training saved them."""
    from . import checkpoint
    from .show import history_figure

    _check_output(output, ".png")
    _, meta = checkpoint.load(checkpoint_path)
    _save_picture(history_figure(meta.get("history") or []), output, "the training curves")


def _test_predictions(checkpoint_path: Path, dataset: Optional[str], data_dir: Optional[Path]):
    """(test images, labels, probabilities, class names, data set's name) of a saved network."""
    from . import checkpoint

    net, meta = checkpoint.load(checkpoint_path)
    data = _saved_data(meta, dataset, data_dir)
    x_test, y_test = _test_images(data)
    return x_test, y_test, net.predict(x_test), list(data.classes), data.name


@show_app.command("confusion")
@user_errors
def show_confusion(
    checkpoint_path: Path = CHECKPOINT,
    output: Path = _png("confusion.png"),
    dataset: Optional[str] = TEST_DATA,
    data_dir: Optional[Path] = DATA_DIR,
):
    """The confusion matrix on the test set: how often each class is taken for each other class."""
    from .show import confusion_figure

    _check_output(output, ".png")
    _, labels, probabilities, names, name = _test_predictions(checkpoint_path, dataset, data_dir)
    predicted = probabilities.argmax(axis=1)
    title = (f"{name} test set, {len(labels):,} images: {(predicted == labels).mean():.2%} right, "
             f"{int((predicted != labels).sum()):,} wrong")
    _save_picture(confusion_figure(labels, predicted, names, title), output, "the confusion matrix")


@show_app.command("errors")
@user_errors
def show_errors(
    checkpoint_path: Path = CHECKPOINT,
    output: Path = _png("errors.png"),
    count: int = typer.Option(24, "--count", min=1, max=200, help="How many mistakes to show."),
    dataset: Optional[str] = TEST_DATA,
    data_dir: Optional[Path] = DATA_DIR,
):
    """The test images the network gets wrong with the most confidence, with true and predicted labels."""
    from .show import errors_figure

    _check_output(output, ".png")
    images, labels, probabilities, names, name = _test_predictions(checkpoint_path, dataset, data_dir)
    wrong = int((probabilities.argmax(axis=1) != labels).sum())
    title = f"The most confident of {wrong:,} mistakes on {len(labels):,} {name} test images"
    _save_picture(errors_figure(images, labels, probabilities, names, count, title), output, "the mistakes")


CLASS_OPTION = typer.Option(None, "--class", "-c", min=0,
                            help="The class whose score to explain, by number (default: each image's predicted class).")
COUNT_OPTION = typer.Option(1, "--count", min=1, max=64, help="How many test images, from --index on, in a grid.")


def _images_to_explain(checkpoint_path: Path, index: int, count: int, image: Optional[Path],
                       dataset: Optional[str], data_dir: Optional[Path]):
    """(network, prepared images, a caption per image, class names, what they are) for saliency and Grad-CAM:
    ``count`` test images from ``index`` on, or the one picture ``image``."""
    from . import checkpoint

    net, meta = checkpoint.load(checkpoint_path)
    names = _class_names(meta)
    if image is not None:
        if count != 1:
            raise NumbacnnError("--count takes test images from --index on; leave it out with --image.")
        images, captions, what = _picture(meta, image)[None], [image.name], image.name
    else:
        data = _saved_data(meta, dataset, data_dir)
        x_test, y_test = _test_images(data)
        _check_index(index, len(x_test))
        _check_index(index + count - 1, len(x_test))
        chosen = range(index, index + count)
        images = x_test[index:index + count]
        captions = [f"#{i}: {names[y_test[i]]}" for i in chosen]
        what = (f"{data.name} test image #{index}" if count == 1 else
                f"{data.name} test images #{index}-{index + count - 1}")
    probabilities = net.predict(images)
    captions = [f"{c}\nsays {names[p.argmax()]} ({p.max():.0%})" for c, p in zip(captions, probabilities)]
    return net, images, captions, names, what


def _explained(names: list[str], classes, cls: Optional[int]) -> tuple[list[str], str]:
    """(each map's class name, the title's words for them)."""
    chosen = [names[c] for c in classes]
    return chosen, (f"class {names[cls]}" if cls is not None else "the class the network predicts")


@show_app.command("saliency")
@user_errors
def show_saliency(
    checkpoint_path: Path = CHECKPOINT,
    index: int = typer.Option(0, "--index", "-n", help="The (first) test-set image number."),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="A picture file instead of a test image."),
    cls: Optional[int] = CLASS_OPTION,
    count: int = COUNT_OPTION,
    output: Path = _png("saliency.png"),
    dataset: Optional[str] = TEST_DATA,
    data_dir: Optional[Path] = DATA_DIR,
):
    """Which pixels the class score depends on most: the size of its gradient with respect to each pixel,
    as a heat map beside the image."""
    from .attribution import saliency, saliency_heat
    from .show import saliency_figure

    _check_output(output, ".png")
    net, images, captions, names, what = _images_to_explain(checkpoint_path, index, count, image, dataset, data_dir)
    gradients, classes = saliency(net, images, cls)
    chosen, which = _explained(names, classes, cls)
    title = f"Saliency of {what}: the gradient of the score of {which} with respect to each pixel"
    _save_picture(saliency_figure(images, saliency_heat(gradients), captions, chosen, title), output,
                  "the saliency maps")


@show_app.command("gradcam")
@user_errors
def show_gradcam(
    checkpoint_path: Path = CHECKPOINT,
    index: int = typer.Option(0, "--index", "-n", help="The (first) test-set image number."),
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="A picture file instead of a test image."),
    layer: Optional[str] = typer.Option(
        None, "--layer", help="The convolution to look at, numbered as `numbacnn summary` numbers the layers "
                              "(default: the last convolution)."),
    cls: Optional[int] = CLASS_OPTION,
    count: int = COUNT_OPTION,
    output: Path = _png("gradcam.png"),
    dataset: Optional[str] = TEST_DATA,
    data_dir: Optional[Path] = DATA_DIR,
):
    """Where in the image a convolution's feature maps speak for the class (Grad-CAM): the maps weighted by
    the mean gradient of the class score over each, drawn over the image."""
    from .attribution import gradcam, gradcam_layer
    from .show import gradcam_figure

    _check_output(output, ".png")
    net, images, captions, names, what = _images_to_explain(checkpoint_path, index, count, image, dataset, data_dir)
    where, chosen_layer = gradcam_layer(net, layer)  # a wrong --layer ends here, before any work
    result = gradcam(net, images, cls, where)
    chosen, which = _explained(names, result.classes, cls)
    title = f"Grad-CAM of {what} at layer {where} {chosen_layer!r}, for {which}"
    _save_picture(gradcam_figure(images, result.heat, captions, chosen, title, where), output, "the Grad-CAM maps")


@app.command("lr-find")
@user_errors
def lr_find_command(
    model: Optional[str] = MODEL,
    layers: Optional[str] = LAYERS,
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", metavar="NAME|FOLDER",
                                          help="The data set, as for `numbacnn train` (default: mnist)."),
    start_from: Optional[Path] = typer.Option(
        None, "--from", metavar="CHECKPOINT", help="Search from a saved network's weights (the file is only read)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", min=1,
                                             help="Images per step (default: the network's recipe, else 128)."),
    optimizer: Optional[OptimizerName] = typer.Option(None, "--optimizer",
                                                      help="adam or sgd (default: the network's recipe, else adam)."),
    label_smoothing: Optional[float] = LABEL_SMOOTHING,
    class_weight: Optional[str] = CLASS_WEIGHT,
    steps: int = typer.Option(200, "--steps", min=10, help="Training steps of the search."),
    start_lr: float = typer.Option(1e-7, "--start-lr", min=0.0, help="The rate of the first step."),
    end_lr: float = typer.Option(10.0, "--end-lr", min=0.0, help="The rate of the last step."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seeds the weights and the batch order (default 0)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Search on the first N training images only."),
    output: Path = _png("lr.png"),
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
):
    """Find a learning rate: train a copy of the network for a few hundred steps while the rate grows from
    --start-lr to --end-lr, plot the loss against the rate, and suggest the rate where it falls fastest.
    Nothing is saved but the plot."""
    from .lrfind import search
    from .show import lr_find_figure

    _set_threads(threads)
    _check_output(output, ".png")
    config = RunConfig(model=model, layers=layers, dataset=dataset, batch_size=batch_size,
                       optimizer=_value(optimizer), label_smoothing=label_smoothing, class_weight=class_weight,
                       seed=seed, limit=limit, data_dir=data_dir, device=_value(device))
    found, name = search(config, steps=steps, start=start_lr, end=end_lr, checkpoint=start_from)
    done = f"{_count(len(found.rates), 'step')} of {escape(name)}, rates {found.rates[0]:.2g} to {found.rates[-1]:.2g}"
    if found.stopped_early:
        done += f" (the loss blew up there, so the search stopped before {end_lr:g})"
    title = f"Learning-rate search: {name}, {len(found.rates)} steps"
    _save_picture(lr_find_figure(found, title), output, f"the loss per rate ({done})")
    if found.suggested is None:
        out.print("The loss never fell below where it started, so there is no rate to suggest; try a larger "
                  "--end-lr or more --steps.")
        return
    rate = f"{found.suggested:.2g}"
    same = "".join(f"{flag} {value} " for flag, value in (("-m", model), ("--layers", layers and f'"{layers}"'),
                                                          ("-d", dataset)) if value)
    out.print(f"Suggested learning rate: [bold]{rate}[/], where the loss fell fastest. Train with it: "
              f"`numbacnn train {escape(same)}--lr {rate}` (with --schedule onecycle it is the peak rate; a rate a "
              f"little lower is the safer choice). No checkpoint was changed.")


@data_app.command("fetch")
@user_errors
def data_fetch(
    dataset: Dataset = typer.Argument(Dataset.mnist, help="The data set to download."),
    data_dir: Optional[Path] = DATA_DIR,
):
    """Download a data set into the cache (checksums checked), or check the copy in --data-dir."""
    from .data import open_dataset

    data = open_dataset(dataset.value, data_dir=data_dir)
    for split in ("train", "test"):
        images, _ = data.split(split)
        out.print(f"{dataset.value} {split}: {len(images):,} images, checksums ok.")


@data_app.command("info")
@user_errors
def data_info(
    dataset: str = typer.Argument(..., metavar="NAME|FOLDER", help="A built-in data set or a folder of pictures."),
    color: Optional[Color] = typer.Option(None, "--color", help="As for train: rgb or grey."),
    image_size: Optional[str] = typer.Option(None, "--image-size", metavar="H,W", help="As for train."),
    data_dir: Optional[Path] = DATA_DIR,
):
    """What a data set holds: its classes and how many images each has in each split, the images' size and
    colour, and (for a folder) the pictures' sizes and every file it skips and why."""
    from .data import BUILTIN, open_dataset

    if dataset not in BUILTIN and Path(dataset).expanduser().is_dir():
        _folder_info(Path(dataset).expanduser(), _value(color), _image_size(image_size))
        return
    data = open_dataset(dataset, color=_value(color), image_size=_image_size(image_size), data_dir=data_dir)
    _print_counts(data.name, data.spec.preparation, data.classes, data.class_counts("train"), data.class_counts("test"))


def _print_counts(name: str, preparation, classes, train_counts, test_counts) -> None:
    height, width, channels = preparation.shape
    out.print(f"[bold]{escape(name)}[/]: {len(classes)} classes, images of "
              f"{height}x{width} {preparation.color} ({_count(channels, 'channel')}).")
    table = Table("class", "train", "test")
    for label, n_train, n_test in zip(classes, train_counts, test_counts):
        table.add_row(escape(label), f"{n_train:,}", f"{n_test:,}", style="red" if n_train == 0 else None)
    table.add_section()
    table.add_row("total", f"{int(train_counts.sum()):,}", f"{int(test_counts.sum()):,}", style="bold")
    out.print(table)


def _folder_info(root: Path, color: Optional[str], image_size: Optional[tuple[int, int]]) -> None:
    """What a folder of pictures holds: the pictures' sizes and colours, the images a run would use of each
    class, and every file that is skipped or not read, with why."""
    from collections import Counter

    from .data.folder import load_folder, read_headers, scan_folder

    scan = scan_folder(root)
    headers = read_headers(scan)
    sizes = headers.common_sizes()
    shown = ", ".join(f"{h}x{w} ({n:,})" for (h, w), n in sizes[:8]) + (f" and {len(sizes) - 8:,} more" if
                                                                        len(sizes) > 8 else "")
    colours = ", ".join(f"{c} ({n:,})" for c, n in Counter(headers.colors.values()).most_common())
    out.print(f"Pictures in {escape(str(root))}: sizes {shown or 'none'}; colour {colours or 'none'}.")
    if image_size is None and len(sizes) > 1:
        image_size = sizes[0][0]
        out.print(f"They come in several sizes: counted at {image_size[0]}x{image_size[1]}, the most common; "
                  f"training needs --image-size H,W.")
    if not sizes:
        out.print("[red]No picture in it can be read.[/]")
    else:
        folder = load_folder(root, color=color, image_size=image_size)
        _print_counts(root.name or str(root), folder.preparation, folder.classes, folder.class_counts("train"),
                      folder.class_counts("test"))
        split = "its train/ and test/ folders" if folder.split_folders else "a fifth of each class held out"
        out.print(f"Test set: {split}.")
    if len(scan.classes) < 2:
        out.print("[red]A classifier needs two or more classes (one sub-folder each).[/]")
    skipped = sorted(set(headers.unreadable) | set(folder.skipped if sizes else []))
    for what, files in (("cannot be read", skipped), ("not read", scan.ignored)):
        if files:
            verb = "" if what.startswith("can") else ("is " if len(files) == 1 else "are ")
            out.print(f"{_count(len(files), 'file')} {verb}{what}:")
            for rel, why in files:
                out.print(f"  {escape(rel)}: {escape(why)}")


@data_app.command("export")
@user_errors
def data_export(
    dataset: Dataset = typer.Argument(..., help="The built-in data set to write out."),
    folder: Path = typer.Argument(..., metavar="FOLDER", help="A new (or empty) folder to write the pictures into."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images of each split."),
    data_dir: Optional[Path] = DATA_DIR,
):
    """Write a built-in data set as a folder of PNG pictures, FOLDER/train/CLASS/N.png and FOLDER/test/CLASS/N.png
    (N: the image's number in its split), the layout `numbacnn train -d FOLDER` reads."""
    from .data import export_pictures, open_dataset

    written = export_pictures(open_dataset(dataset.value, data_dir=data_dir), folder, limit=limit)
    out.print(f"Wrote {written['train']:,} training and {written['test']:,} test pictures of {dataset.value} into "
              f"{escape(str(folder))}/train/ and {escape(str(folder))}/test/, one folder per class.")


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


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"numbacnn {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
):
    """Small convolutional networks with Numba kernels: train and use MNIST classifiers, add layers as plug-ins."""
    import warnings

    # Pillow warns of a possible decompression bomb, then numbacnn refuses the picture itself in one sentence.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


def _process_name() -> str:
    from . import distributed

    group = distributed.current()
    return f" (process {group.rank} of {group.size})" if group.size > 1 else ""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning on the command line: its sentence, not Python's file, line and class."""
    err.print(f"[yellow]Warning:[/] {escape(str(message))}")


def main() -> None:  # pragma: no cover - the console script
    """The console script. Under an MPI launcher only the first process prints (errors excepted), and a
    process that fails ends the whole job at once, so that no other one waits for it forever."""
    import warnings

    from . import distributed

    warnings.showwarning = _show_warning
    try:
        group = distributed.current()
        if group.size == 1:
            app()
            return
    except NumbacnnError as error:
        errors.print(f"[bold red]Error:[/] {escape(_one_line(error))}", soft_wrap=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:  # Ctrl-C before a command has started: nothing to save
        err.print("[yellow]Interrupted.[/]")
        raise SystemExit(130) from None
    out.quiet = err.quiet = not group.is_root
    try:
        app()
    except SystemExit as done:
        # 130, 143: every process stopped after the same step on Ctrl-C or SIGTERM and is saving or done; let
        # them finish.
        if done.code not in (0, None, 130, 143):
            group.abort(done.code if isinstance(done.code, int) else 1)
        raise
    except BaseException:
        import traceback

        traceback.print_exc()
        group.abort(1)
