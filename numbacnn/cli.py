"""The ``numbacnn`` command: train, evaluate, predict, summary, layers, bench, data, show, export."""

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

# Help texts are plain text, not Rich markup: "numbacnn[cuda]" must show its brackets. -h works as --help.
HELP_SETTINGS = {"rich_markup_mode": None, "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(
    help="Small convolutional networks with Numba kernels: train and use MNIST classifiers, add layers as plug-ins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    **HELP_SETTINGS,
)
data_app = typer.Typer(help="Fetch the data sets and show where they are kept.", no_args_is_help=True, **HELP_SETTINGS)
app.add_typer(data_app, name="data")
show_app = typer.Typer(help="Pictures of a trained network, written as PNG files.", no_args_is_help=True,
                       **HELP_SETTINGS)
app.add_typer(show_app, name="show")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # never quiet: see main()


class Dataset(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"


class DeviceName(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


class Schedule(str, Enum):
    cosine = "cosine"
    constant = "constant"
    onecycle = "onecycle"


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
MODEL = typer.Option(None, "--model", "-m", help=f"A named network: {', '.join(PRESETS)} (default: {DEFAULT_PRESET}).")
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
            errors.print(f"[bold red]Error{_process_name()}:[/] {escape(str(error))}", soft_wrap=True)
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


def _spec(model: Optional[str], layers: Optional[str]) -> str:
    """The spec text that -m or --layers asks for (the default network when neither does)."""
    from .presets import preset_spec

    if model is not None and layers is not None:
        raise NumbacnnError("Give either -m (a named network) or --layers (a spec of your own), not both.")
    if layers is not None:
        if not layers.strip():
            raise NumbacnnError('--layers is empty; give layers such as "conv2d(8,3) relu maxpool2d(2) flatten '
                                'dense(10)", or leave it out for the default network.')
        return layers
    return preset_spec(model or DEFAULT_PRESET)


def _load_split(dataset: Dataset, split: str, data_dir: Optional[Path]):
    from .data import load_dataset
    from .train import prepare_images

    images, labels = load_dataset(dataset.value, split, data_dir=data_dir)
    return prepare_images(images), labels.astype(np.int64)


VALIDATION_DEFAULT = 5000


@app.command()
@user_errors
def train(
    model: Optional[str] = MODEL,
    layers: Optional[str] = LAYERS,
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help="The data set to train on (default: mnist)."),
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
        help="Learning rate over the run: cosine (decays to zero), constant, or onecycle (up to --lr over the first fifth, then down to zero) (default: the network's recipe, else cosine).",
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
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seeds the weights, the batch order, dropout and augmentation: same seed, same run (default 0)."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Train on the first N training images only."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o",
        help="Checkpoint of the best epoch (default model.npz); beside it OUTPUT.metrics.jsonl (per-epoch "
             "metrics) and, until the run ends, OUTPUT.resume.npz (what --resume continues from).",
    ),
    resume: Optional[Path] = typer.Option(
        None, "--resume", metavar="CHECKPOINT",
        help="Continue the interrupted run whose --output was CHECKPOINT, with all its settings, where it stopped.",
    ),
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
):
    """Train a network and report its test accuracy; the best epoch is kept in --output.

    A named network (-m) brings its own training recipe (`numbacnn models` lists them); every option given
    here wins over it. Each epoch is scored on a validation set held out of the training images; the test
    set is used once, at the end, on the best epoch. Ctrl-C saves the run so far: `--resume` continues it.
    """
    from . import distributed
    from .outputs import RunOutputs

    _set_threads(threads)
    if device == DeviceName.cuda and distributed.current().size > 1:
        from .device import get_device

        get_device("cuda")  # no usable GPU: one sentence here, before choosing among them
        distributed.pick_gpu(distributed.current())
    given = {"-m": model, "--layers": layers, "--dataset": dataset, "--epochs": epochs, "--batch-size": batch_size,
             "--optimizer": optimizer, "--lr": lr, "--schedule": schedule, "--augment": augment,
             "--validation": validation, "--stop-at": stop_at, "--seed": seed, "--limit": limit}
    if resume is not None:
        settings_given = [name for name, value in given.items() if value is not None]
        if settings_given or (output is not None and output != resume):
            raise NumbacnnError(f"--resume continues a run with the settings it started with; leave out "
                                f"{', '.join(settings_given) or '--output'}.")
        outputs = RunOutputs(resume)
    else:
        _spec(model, layers)  # a bad choice of network ends here, before any file is touched
        outputs = RunOutputs(output or Path("model.npz"))
    if not distributed.current().is_root:  # in a parallel run the first process writes every file
        outputs = outputs.unwritten()
    outputs.check()
    with outputs:
        if resume is not None:
            run_training(*_resumed_run(outputs, device), outputs, data_dir)
        else:
            run_training(*_new_run(given, device, seed or 0), outputs, data_dir)


def _new_run(given: dict, device: DeviceName, seed: int):
    """(model, optimiser, RunState, settings) for a run that starts now, from the options and the recipe."""
    from .augment import Augment
    from .model import Sequential
    from .optim import make_optimizer
    from .presets import preset_recipe
    from .train import RunState

    name, layers = given["-m"], given["--layers"]
    dataset = (given["--dataset"] or Dataset.mnist).value
    recipe = preset_recipe(None if layers else name or DEFAULT_PRESET, dataset)
    batch_size = given["--batch-size"] or recipe.batch_size
    net = Sequential(_spec(name, layers)).build(seed=seed, device=device.value, batch_size=batch_size)
    optimizer = make_optimizer(given["--optimizer"].value if given["--optimizer"] else recipe.optimizer,
                               given["--lr"] if given["--lr"] is not None else recipe.lr)
    schedule = given["--schedule"]
    augment = given["--augment"]
    settings = {
        "name": "custom layers" if layers else name or DEFAULT_PRESET,
        "dataset": dataset,
        "epochs": given["--epochs"] or recipe.epochs,
        "batch_size": batch_size,
        "schedule": schedule.value if schedule else recipe.schedule,
        "augment": str(Augment.parse(augment if augment is not None else recipe.augment)),
        "validation": _validation_size(given["--validation"], recipe.validation),
        "stop_at": given["--stop-at"],
        "seed": seed,
        "limit": given["--limit"],
    }
    return net, optimizer, RunState(), settings


def _validation_size(given: Optional[int], recipe: Optional[int]) -> int:
    """Images held out for validation: the option, else the recipe's, else ``VALIDATION_DEFAULT``."""
    if given is not None:
        return given
    return VALIDATION_DEFAULT if recipe is None else recipe


def _resumed_run(outputs, device: DeviceName):
    from . import checkpoint
    from .errors import CheckpointError

    if not outputs.resume_path.is_file():
        raise CheckpointError(
            f"There is no run to resume at {outputs.path}: {outputs.resume_path} is missing (it is removed when a run "
            f"ends normally); start a new run with `numbacnn train`."
        )
    return checkpoint.load_resume(outputs.resume_path, device=device.value)


def run_training(net, optimizer, run, settings: dict, outputs, data_dir: Optional[Path]) -> None:
    """Trains (or goes on training) ``net`` as ``settings`` say, keeping ``outputs`` up to date; then scores
    the best epoch on the test set."""
    from . import checkpoint, distributed
    from .augment import Augment
    from .data import class_names, load_dataset
    from .progress import TrainingProgress
    from .train import TrainingInterrupted, check_classifier, fit, prepare_images, split_validation
    from .train import evaluate as run_evaluation

    dataset = Dataset(settings["dataset"])
    check_classifier(net, len(class_names(dataset.value)))
    images, labels = load_dataset(dataset.value, "train", data_dir=data_dir)
    (x_train, y_train), (x_val, y_val) = split_validation(images, labels, settings["validation"], settings["limit"])
    x_train, x_val = prepare_images(x_train), prepare_images(x_val)
    y_train, y_val = y_train.astype(np.int64), y_val.astype(np.int64)
    epochs, batch_size = settings["epochs"], settings["batch_size"]
    if batch_size > len(x_train):
        raise NumbacnnError(f"--batch-size {batch_size:,} is more than the {len(x_train):,} training images; "
                            f"use at most {len(x_train):,}.")
    where = f"from epoch {run.epoch}, batch {run.batches_done + 1}, " if run.history or run.batches_done else ""
    group = distributed.current()
    processes = f", {group.size} processes (each batch split between them, over MPI)" if group.size > 1 else ""
    out.print(f"{'Resuming' if where else 'Training'} [bold]{escape(settings['name'])}[/] ({net.count_params():,} "
              f"parameters) on {dataset.value}: {len(x_train):,} images ({len(x_val):,} held out for validation), "
              f"{where}{_count(epochs, 'epoch')} of batch {batch_size}, {optimizer.name} lr {optimizer.base_lr:g} "
              f"({settings['schedule']}), augmentation {settings['augment']}, seed {settings['seed']}, "
              f"{net.device.name}{processes}.")

    def metadata(extra=None):
        return {"dataset": dataset.value, "epochs": run.best_epoch, "epochs_run": len(run.history),
                "val_accuracy": run.best_accuracy, "optimizer": optimizer.name, "lr": optimizer.base_lr,
                **{k: settings[k] for k in ("seed", "schedule", "batch_size", "augment", "validation")},
                "history": run.history, **(extra or {})}

    def end_of_epoch(result):
        if result.best:
            outputs.save_best(net, metadata())
        outputs.save_resume(net, optimizer, run, settings)
        outputs.write_metrics(run.history)
        progress.epoch(result)

    with TrainingProgress(err, epochs) as progress:
        try:
            fit(net, optimizer, x_train, y_train, epochs=epochs, batch_size=batch_size, seed=settings["seed"],
                validation=(x_val, y_val) if len(x_val) else None, schedule=settings["schedule"],
                stop_at=settings["stop_at"], augment=Augment.parse(settings["augment"]), run=run,
                on_batch=progress.batch, on_validate=progress.validating, on_epoch=end_of_epoch)
        except TrainingInterrupted as stop:
            outputs.save_resume(net, optimizer, stop.run, settings)
            kept = f"; {outputs.path} keeps the best epoch, {run.best_epoch}" if run.best_epoch else ""
            err.print(f"Interrupted in epoch {stop.run.epoch} after {stop.run.batches_done} batches. Saved the run so "
                      f"far to {outputs.resume_path}{kept}. Continue it with: numbacnn train --resume {outputs.path}")
            raise typer.Exit(130) from None
    if not group.is_root:
        return
    best, _ = checkpoint.load(outputs.path, device=net.device.name)
    x_test, y_test = _load_split(dataset, "test", data_dir)
    test_loss, test_accuracy = run_evaluation(best, x_test, y_test)
    run.history[run.best_epoch - 1].update(test_loss=test_loss, test_accuracy=test_accuracy)
    outputs.save_best(best, metadata({"test_loss": test_loss, "test_accuracy": test_accuracy}))
    outputs.write_metrics(run.history)
    outputs.finish()
    chosen = (f"the best epoch by validation accuracy, {run.best_epoch} of {len(run.history)} "
              f"({run.best_accuracy:.2%})" if run.best_accuracy is not None else f"epoch {run.best_epoch}")
    out.print(f"Test accuracy: [bold]{test_accuracy:.2%}[/] on {len(x_test):,} {dataset.value} test images, with "
              f"{chosen}. Saved to {outputs.path}; per-epoch metrics in {outputs.metrics_path}.")


@app.command()
@user_errors
def evaluate(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A file written by `numbacnn train`."),
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help="Default: the one it was trained on."),
    data_dir: Optional[Path] = DATA_DIR,
    device: DeviceName = DEVICE,
    threads: Optional[int] = THREADS,
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
):
    """Accuracy and loss of a saved network on the whole test set, and the accuracy on each class."""
    from . import checkpoint
    from .data import class_names
    from .metrics import class_accuracy
    from .train import evaluate as run_evaluation

    _set_threads(threads)
    net, meta = checkpoint.load(checkpoint_path, device=device.value)
    dataset = dataset or Dataset(meta.get("dataset", "mnist"))
    x_test, y_test = _load_split(dataset, "test", data_dir)
    loss, accuracy = run_evaluation(net, x_test, y_test)
    names = class_names(dataset.value)
    per_class = class_accuracy(y_test, net.predict(x_test).argmax(axis=1), len(names))
    if as_json:
        typer.echo(json.dumps({"dataset": dataset.value, "images": len(x_test), "accuracy": accuracy, "loss": loss,
                               "class_accuracy": dict(zip(names, per_class.tolist()))}, indent=2))
        return
    out.print(f"{dataset.value} test set, {len(x_test):,} images: accuracy [bold]{accuracy:.2%}[/], loss {loss:.4f}")
    table = Table("class", "images", "accuracy")
    for name, count, share in zip(names, np.bincount(y_test, minlength=len(names)), per_class):
        table.add_row(name, f"{count:,}", f"{share:.2%}")
    out.print(table)


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
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts: every class's probability."),
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
            _check_index(i, len(x_test))
            rows.append((f"test #{i}", names[y_test[i]], x_test[i]))
    for path in image or []:
        rows.append((str(path), "", prepare_images(read_image(path)[None])[0]))
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
    model: Optional[str] = MODEL,
    layers: Optional[str] = LAYERS,
    checkpoint_path: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Summarise a saved network instead."),
):
    """Each layer's output shape and parameters, split into weights and biases, and the total."""
    from . import checkpoint
    from .model import Sequential

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

    table = Table("name", "parameters", "epochs", "batch", "optimiser", "lr", "schedule", "augment", "validation",
                  "layers")
    for name, spec in PRESETS.items():
        size = f"{Sequential(spec).build().count_params():,}"
        datasets = [None] + [dataset for network, dataset in DATASET_RECIPES if network == name]
        for dataset in datasets:
            recipe = preset_recipe(name, dataset)
            lr = "default" if recipe.lr is None else f"{recipe.lr:g}"
            table.add_row(name if dataset is None else f"{name} -d {dataset}", size, str(recipe.epochs),
                          str(recipe.batch_size), recipe.optimizer, lr, recipe.schedule, recipe.augment,
                          f"{_validation_size(None, recipe.validation):,}",
                          escape(spec) if dataset is None else "the same")
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
    model: Optional[str] = MODEL,
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


@app.command("export")
@user_errors
def export_onnx(
    checkpoint_path: Path = typer.Argument(..., metavar="CHECKPOINT", help="A file written by `numbacnn train`."),
    output: Path = typer.Argument(..., metavar="FILE.onnx", help="The ONNX file to write."),
):
    """Write a saved network as an ONNX model (needs numbacnn[onnx]): input "images" (N, 28, 28, 1) float32
    in [0, 1], output "probabilities" (N, 10), for onnxruntime and other ONNX runtimes."""
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
    image: Optional[Path] = typer.Option(None, "--image", "-i", help="A PNG or PGM file of a digit instead."),
    output: Path = _png("features.png"),
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help="Default: the one it was trained on."),
    data_dir: Optional[Path] = DATA_DIR,
):
    """The feature maps of one image after each convolution, ReLU and pooling layer, with their shapes."""
    from . import checkpoint
    from .data import class_names, read_image
    from .show import features_figure
    from .train import prepare_images

    _check_output(output, ".png")
    net, meta = checkpoint.load(checkpoint_path)
    dataset = dataset or Dataset(meta.get("dataset", "mnist"))
    names = class_names(dataset.value)
    if image is not None:
        x, what = prepare_images(read_image(image)[None])[0], f"{image.name}:"
    else:
        x_test, y_test = _load_split(dataset, "test", data_dir)
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


def _test_predictions(checkpoint_path: Path, dataset: Optional[Dataset], data_dir: Optional[Path]):
    """(test images, labels, probabilities, class names, data set) of a saved network."""
    from . import checkpoint
    from .data import class_names

    net, meta = checkpoint.load(checkpoint_path)
    dataset = dataset or Dataset(meta.get("dataset", "mnist"))
    x_test, y_test = _load_split(dataset, "test", data_dir)
    return x_test, y_test, net.predict(x_test), list(class_names(dataset.value)), dataset.value


@show_app.command("confusion")
@user_errors
def show_confusion(
    checkpoint_path: Path = CHECKPOINT,
    output: Path = _png("confusion.png"),
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help="Default: the one it was trained on."),
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
    dataset: Optional[Dataset] = typer.Option(None, "--dataset", "-d", help="Default: the one it was trained on."),
    data_dir: Optional[Path] = DATA_DIR,
):
    """The test images the network gets wrong with the most confidence, with true and predicted labels."""
    from .show import errors_figure

    _check_output(output, ".png")
    images, labels, probabilities, names, name = _test_predictions(checkpoint_path, dataset, data_dir)
    wrong = int((probabilities.argmax(axis=1) != labels).sum())
    title = f"The most confident of {wrong:,} mistakes on {len(labels):,} {name} test images"
    _save_picture(errors_figure(images, labels, probabilities, names, count, title), output, "the mistakes")


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


def _process_name() -> str:
    from . import distributed

    group = distributed.current()
    return f" (process {group.rank} of {group.size})" if group.size > 1 else ""


def main() -> None:  # pragma: no cover - the console script
    """The console script. Under an MPI launcher only the first process prints (errors excepted), and a
    process that fails ends the whole job at once, so that no other one waits for it forever."""
    from . import distributed

    try:
        group = distributed.current()
    except NumbacnnError as error:
        errors.print(f"[bold red]Error:[/] {escape(str(error))}", soft_wrap=True)
        raise SystemExit(1) from None
    if group.size == 1:
        app()
        return
    out.quiet = err.quiet = not group.is_root
    try:
        app()
    except SystemExit as done:
        # 130: every process stopped after the same step on Ctrl-C and is saving or done; let them finish.
        if done.code not in (0, None, 130):
            group.abort(done.code if isinstance(done.code, int) else 1)
        raise
    except BaseException:
        import traceback

        traceback.print_exc()
        group.abort(1)
