"""A training run as a library: what ``numbacnn train`` does, callable from Python.

    >>> from numbacnn.run import RunConfig, train
    >>> result = train(RunConfig(model="tiny", epochs=1, limit=1000, output="tiny.npz"))
    >>> result.test_accuracy

``RunConfig`` holds the options of ``numbacnn train`` by name (``batch_size`` is ``--batch-size``); a field
left at None takes the network's recipe (``numbacnn.presets``), else the general default. ``train`` builds the
network, holds out the validation images, fits, keeps the best epoch in ``output``, scores it once on the
test set and saves it, keeping a state to ``resume`` from beside it until the run ends. It says what it does
through a ``Reporter``, whose methods do nothing unless a caller overrides them (the command line prints).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import distributed
from . import train as training
from .data import DataSet, DataSpec, open_dataset, reopen
from .errors import CheckpointError, NumbacnnError, ShapeError
from .presets import DEFAULT_PRESET, preset_recipe, preset_spec

VALIDATION_DEFAULT = 5000
# ReduceLROnPlateau's factor in Keras and PyTorch; their patience of 10 epochs suits runs of hundreds of epochs,
# numbacnn's run a dozen.
PLATEAU_FACTOR = 0.1
PLATEAU_PATIENCE = 2
OUTPUT_DEFAULT = Path("model.npz")


@dataclass
class RunConfig:
    """The options of a run, named as ``numbacnn train`` names them (``stop_at`` is ``--stop-at``). None
    means "the network's recipe, else the general default"; ``numbacnn train -h`` says what each one does.

    ``resume``: the ``output`` of an interrupted run to continue with the settings it started with; every
    setting of the run (all but ``data_dir`` and ``device``) must then be left at None. ``restart``: start
    afresh at an ``output`` whose interrupted run could still be resumed, throwing its resume state away
    (without it, such an output is refused, so that a forgotten ``resume`` loses nothing)."""

    model: str | None = None
    layers: str | None = None
    dataset: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    schedule: str | None = None
    augment: str | None = None
    validation: int | None = None
    stop_at: float | None = None
    seed: int | None = None
    limit: int | None = None
    output: str | Path | None = None
    resume: str | Path | None = None
    restart: bool = False
    data_dir: str | Path | None = None
    device: str = "cpu"
    color: str | None = None
    image_size: tuple[int, int] | None = None
    label_smoothing: float | None = None
    class_weight: str | tuple[float, ...] | None = None
    patience: int | None = None
    plateau_factor: float | None = None
    plateau_patience: int | None = None
    tensorboard: str | Path | None = None

    # What a resumed run takes from where it stopped rather than from the config.
    NOT_SETTINGS = ("output", "resume", "restart", "data_dir", "device")

    def given_settings(self) -> list[str]:
        """The names of the run settings this config gives (not None)."""
        return [f.name for f in fields(self) if f.name not in self.NOT_SETTINGS and getattr(self, f.name) is not None]


def option_name(field: str) -> str:
    """How the command line spells the option of a ``RunConfig`` field: ``batch_size`` is ``--batch-size``."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class RunSettings:
    """How a run goes, every choice made (the options given, else the recipe's): saved in the resume state,
    so that a resumed run goes on as it started. The optimiser and its learning rate travel with the
    optimiser itself. A field added here needs a default, so that older resume states still load."""

    name: str
    dataset: str
    epochs: int
    batch_size: int
    schedule: str
    augment: str
    validation: int
    stop_at: float | None = None
    seed: int = 0
    limit: int | None = None
    data: dict | None = None  # the data set's DataSpec (numbacnn.data), as a checkpoint keeps it; None: built-in
    label_smoothing: float = 0.0
    class_weight: list[float] | None = None  # one per class, "balanced" already worked out
    patience: int | None = None
    plateau_factor: float = PLATEAU_FACTOR
    plateau_patience: int = PLATEAU_PATIENCE
    tensorboard: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> RunSettings:
        """The settings a resume state saved; a ``TypeError`` or ``ValueError`` naming the first one that is
        missing, of the wrong type or out of range (a resume state may have been edited)."""
        from .checkpoint import check_field

        for key, kind, low, high in cls._RANGES:
            check_field(settings, key, kind, low, high, optional=key not in ("epochs", "batch_size", "validation"))
        for key in ("name", "dataset", "schedule", "augment"):
            check_field(settings, key, str)
        if settings["schedule"] not in training.SCHEDULES:
            raise ValueError(f"its schedule {settings['schedule']!r} is not one of {', '.join(training.SCHEDULES)}")
        if settings.get("data") is not None and not isinstance(settings["data"], dict):
            raise ValueError("its 'data' is not a mapping")
        if settings.get("class_weight") not in (None, "balanced"):
            from .losses import check_class_weights

            check_class_weights(settings["class_weight"])  # a SpecError is a ValueError
        return cls(**{f.name: settings[f.name] for f in fields(cls) if f.name in settings})

    # (setting, type, lowest, highest) of the numbers, as the options allow them.
    _RANGES = (("epochs", int, 1, None), ("batch_size", int, 1, None), ("validation", int, 0, None),
               ("seed", int, 0, None), ("limit", int, 1, None), ("stop_at", float, 0.0, 1.0),
               ("label_smoothing", float, 0.0, 0.999999), ("patience", int, 1, None),
               ("plateau_factor", float, 1e-9, 0.999999), ("plateau_patience", int, 1, None))


@dataclass
class RunStart:
    """What a run is about to do, for its first words."""

    settings: RunSettings
    state: training.RunState
    parameters: int
    train_images: int
    validation_images: int
    optimizer: str
    lr: float
    device: str
    processes: int
    class_counts: str = ""  # "cat 120, dog 118": the training images of each class
    skipped: str = ""  # a sentence naming the pictures that could not be read, if any

    @property
    def resumed(self) -> bool:
        return bool(self.state.history or self.state.batches_done)


@dataclass
class RunResult:
    """A finished run: the best epoch (by validation accuracy, else the last), its test score, where it is."""

    path: Path
    metrics_path: Path
    dataset: str
    best_epoch: int
    epochs_run: int
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float
    test_images: int
    history: list[dict[str, Any]]


class Reporter:
    """What a run says while it runs. Every method does nothing here; override the ones you want.

    ``batch``, ``validating`` and ``epoch`` are ``fit``'s callbacks; ``stopped`` comes after the training loop
    however it ended (a live display closes there); ``interrupted`` after Ctrl-C, once the state to resume
    from is saved at ``resume_path``."""

    def started(self, start: RunStart) -> None:
        pass

    def note(self, text: str) -> None:
        """Something the run does differently from what was asked, in one sentence (said once)."""

    def batch(self, stats: training.BatchStats) -> None:
        pass

    def validating(self, images: int) -> None:
        pass

    def epoch(self, result: training.EpochResult) -> None:
        pass

    def stopped(self) -> None:
        pass

    def interrupted(self, state: training.RunState, path: Path, resume_path: Path, best_epoch: int | None) -> None:
        pass

    def finished(self, result: RunResult) -> None:
        pass


def network_spec(model: str | None, layers: str | None) -> str:
    """The spec text that ``model`` (a named network) or ``layers`` (a spec) asks for; the default network
    when neither does."""
    if model is not None and layers is not None:
        raise NumbacnnError("Give either -m (a named network) or --layers (a spec of your own), not both.")
    if layers is not None:
        if not layers.strip():
            raise NumbacnnError('--layers is empty; give layers such as "conv2d(8,3) relu maxpool2d(2) flatten '
                                'dense(10)", or leave it out for the default network.')
        return layers
    return preset_spec(model or DEFAULT_PRESET)


def validation_size(given: int | None, recipe: int | None) -> int:
    """Images held out for validation: the option, else the recipe's, else ``VALIDATION_DEFAULT``."""
    if given is not None:
        return given
    return VALIDATION_DEFAULT if recipe is None else recipe


def train(config: RunConfig, reporter: Reporter | None = None) -> RunResult | None:
    """Runs (or, with ``config.resume``, continues) the training ``config`` describes, as ``numbacnn train``
    does; returns the result, or None in the processes of a parallel run other than the first (which alone
    writes files and scores the test set).

    Raises ``TrainingInterrupted`` after Ctrl-C, once the state to resume from is saved, and a
    ``NumbacnnError`` (one sentence) for anything the config or the data make impossible."""
    from .device import get_device
    from .outputs import RunOutputs

    reporter = reporter or Reporter()
    group = distributed.current()
    device = get_device(config.device)  # an unusable device: one sentence here, before anything else
    if group.size > 1:
        device.spread_over(group)
    if config.resume is not None:
        given = config.given_settings()
        if given or (config.output is not None and Path(config.output) != Path(config.resume)):
            raise NumbacnnError(f"--resume continues a run with the settings it started with; leave out "
                                f"{', '.join(map(option_name, given)) or '--output'}.")
        outputs = RunOutputs(config.resume)
    else:
        network_spec(config.model, config.layers)  # a bad choice of network ends here, before any file is touched
        training.check_settings(**{k: getattr(config, k) for k in ("epochs", "batch_size", "seed")
                                   if getattr(config, k) is not None})  # the sentences fit() says too
        outputs = RunOutputs(config.output or OUTPUT_DEFAULT)
    if not group.is_root:  # in a parallel run the first process writes every file
        outputs = outputs.unwritten()
    if config.resume is not None and config.restart:
        raise NumbacnnError("Give --resume (continue the interrupted run) or --restart (throw it away and start "
                            "afresh), not both.")
    outputs.check()
    with outputs:
        if config.resume is not None:
            net, optimizer, state, settings = _resumed_run(outputs, config.device)
            data = run_data(settings, config.data_dir)
        else:
            outputs.check_new_run(restart=config.restart)
            data = open_dataset(config.dataset or "mnist", color=config.color, image_size=config.image_size,
                                data_dir=config.data_dir)
            net, optimizer, state, settings = _new_run(config, data)
        return _run(net, optimizer, state, settings, data, outputs, reporter)


def _new_run(config: RunConfig, data: DataSet):
    """(model, optimiser, RunState, RunSettings) for a run that starts now on ``data``, from the config and the
    recipe. The network is built for the data's image shape; a named network ends in one score per class."""
    from .augment import Augment
    from .model import Sequential
    from .optim import make_optimizer

    dataset = data.name
    name = None if config.layers else config.model or DEFAULT_PRESET
    recipe = preset_recipe(name, dataset if data.spec.builtin else None)
    batch_size = config.batch_size or recipe.batch_size
    seed = config.seed or 0
    spec = network_spec(config.model, config.layers)
    if not config.layers:
        spec = classes_spec(spec, len(data.classes))
    try:
        net = Sequential(spec, input_shape=data.shape).build(seed=seed, device=config.device, batch_size=batch_size)
    except ShapeError as error:
        if data.spec.builtin:
            raise
        raise ShapeError(f"The network does not fit the {'x'.join(map(str, data.shape))} images of {dataset}: "
                         f"{error}") from None
    training.check_classifier(net, len(data.classes))  # before any image is loaded
    validation = validation_size(config.validation, recipe.validation)
    if config.validation is None and not data.spec.builtin:  # a small folder keeps most pictures for training
        validation = min(validation, len(data.split("train")[1]) // 10)
    optimizer = make_optimizer(config.optimizer or recipe.optimizer, config.lr if config.lr is not None else recipe.lr)
    settings = RunSettings(
        name=name or "custom layers",
        dataset=dataset,
        epochs=config.epochs or recipe.epochs,
        batch_size=batch_size,
        schedule=config.schedule or recipe.schedule,
        augment=str(Augment.parse(config.augment if config.augment is not None else recipe.augment)),
        validation=validation,
        stop_at=config.stop_at,
        seed=seed,
        limit=config.limit,
        data=None if data.spec.builtin else data.spec.as_metadata(),
        **_habits(config, recipe),
    )
    from .monitor import check_monitoring

    check_monitoring(settings.schedule, settings.patience, settings.validation > 0, settings.plateau_factor,
                     settings.plateau_patience, plateau_given=config.plateau_factor is not None
                     or config.plateau_patience is not None)
    if settings.tensorboard is not None:
        from .tensorboard import check_folder

        check_folder(settings.tensorboard)  # before any training: an unwritable folder ends the run here
    return net, optimizer, training.RunState(), settings


def _habits(config: RunConfig, recipe) -> dict[str, Any]:
    """The RunSettings of the loss, patience, plateau and TensorBoard options (the label smoothing: the
    option, else the ``recipe``'s), checked: a ``NumbacnnError`` in one sentence for a value out of range."""
    from .losses import check_smoothing, parse_class_weights

    weights = config.class_weight
    if isinstance(weights, str):
        weights = parse_class_weights(weights)
    elif weights is not None:
        from .losses import check_class_weights

        weights = check_class_weights(weights)
    return {
        "label_smoothing": check_smoothing(recipe.label_smoothing if config.label_smoothing is None
                                           else config.label_smoothing),
        "class_weight": weights if weights in (None, "balanced") else list(weights),
        "patience": config.patience,
        "plateau_factor": PLATEAU_FACTOR if config.plateau_factor is None else config.plateau_factor,
        "plateau_patience": PLATEAU_PATIENCE if config.plateau_patience is None else config.plateau_patience,
        "tensorboard": None if config.tensorboard is None else str(config.tensorboard),
    }


def loss_function(settings: RunSettings, labels: np.ndarray, classes: int, device):
    """The loss a run trains with: cross-entropy with the settings' label smoothing and class weights
    ("balanced" worked out from the training ``labels`` of the ``classes`` classes, as ``fit`` does)."""
    from .losses import SoftmaxCrossEntropy, resolve_class_weights

    weights = resolve_class_weights(settings.class_weight, labels, classes)
    return SoftmaxCrossEntropy(device, class_weights=weights, smoothing=settings.label_smoothing)


def classes_spec(spec: str, classes: int) -> str:
    """A named network's spec with its last ``dense(10)`` made ``dense(classes)``, one score per class."""
    head, found, tail = spec.rpartition("dense(10)")
    return f"{head}dense({classes}){tail}" if found and classes != 10 else spec


def run_data(settings: RunSettings, data_dir=None) -> DataSet:
    """The data set a run trains on, as its settings describe it (a resumed run finds it again)."""
    if settings.data is None:
        return open_dataset(settings.dataset, data_dir=data_dir)
    return reopen(DataSpec.from_metadata({"data": settings.data}), data_dir=data_dir)


def _resumed_run(outputs, device: str):
    """(model, optimiser, RunState, RunSettings) of the run that stopped at ``outputs``."""
    net, optimizer, state, settings = outputs.load_resume(device=device)
    try:
        return net, optimizer, state, RunSettings.from_dict(settings)
    except (TypeError, ValueError) as error:  # a setting missing, or edited out of its range
        raise CheckpointError(f"{outputs.resume_path} is not a state to resume from ({error}); start the run "
                              f"again with --restart.") from None


def _run(net, optimizer, state, settings: RunSettings, data: DataSet, outputs, reporter: Reporter
         ) -> RunResult | None:
    """Trains (or goes on training) ``net`` on ``data`` as ``settings`` say, keeping ``outputs`` up to date; then
    scores the best epoch on the test set."""
    from . import checkpoint
    from .augment import Augment
    from .data.folder import describe_failures

    dataset = settings.dataset
    if net.input_shape != data.shape:
        raise NumbacnnError(f"The network takes {'x'.join(map(str, net.input_shape))} images but {dataset} has "
                            f"{'x'.join(map(str, data.shape))}; train on the data it was built for.")
    training.check_classifier(net, len(data.classes))
    Augment.parse(settings.augment).check_fits(data.shape)  # before any image is loaded
    (x_train, y_train), (x_val, y_val) = _training_images(settings, data)
    if settings.batch_size > len(x_train):  # as Keras and PyTorch do: one smaller batch an epoch
        reporter.note(f"The batch size {settings.batch_size:,} is more than the {len(x_train):,} training images, so "
                      f"each epoch trains on them all as one batch.")
    group = distributed.current()
    used = np.bincount(np.concatenate([y_train, y_val]), minlength=len(data.classes))
    reporter.started(RunStart(settings, state, net.count_params(), len(x_train), len(x_val), optimizer.name,
                              optimizer.base_lr, net.device.name, group.size,
                              class_counts=", ".join(f"{c} {n:,}" for c, n in zip(data.classes, used)),
                              skipped=describe_failures(data.skipped, Path(data.spec.source)) if data.skipped else ""))

    def metadata(extra=None):
        return {"dataset": dataset, "epochs": state.best_epoch, "epochs_run": len(state.history),
                "val_accuracy": state.best_accuracy, "optimizer": optimizer.name, "lr": optimizer.base_lr,
                "seed": settings.seed, "schedule": settings.schedule, "batch_size": settings.batch_size,
                "augment": settings.augment, "validation": settings.validation,
                "data": data.spec.as_metadata(), "history": state.history, **(extra or {})}

    sample = (x_val if len(x_val) else x_train)[:1]  # the picture TensorBoard shows
    board = _tensorboard_log(settings, group, len(x_train), training.prepare_images(sample)[0])
    scale = [state.lr_scale]

    def end_of_epoch(result):
        if result.best:
            outputs.save_best(net, metadata())
        outputs.save_resume(net, optimizer, state, settings.as_dict())
        outputs.write_metrics(state.history)
        reporter.epoch(result)
        if board is not None:
            board.epoch(net, result)
        _say_what_the_monitors_did(reporter, settings, state, result, scale, optimizer.base_lr)

    def on_batch(stats):
        reporter.batch(stats)
        if board is not None:
            board.batch(stats, optimizer.lr)

    try:
        try:
            training.fit(net, optimizer, x_train, y_train, epochs=settings.epochs, batch_size=settings.batch_size,
                         seed=settings.seed, validation=(x_val, y_val) if len(x_val) else None,
                         schedule=settings.schedule, stop_at=settings.stop_at, patience=settings.patience,
                         plateau_factor=settings.plateau_factor, plateau_patience=settings.plateau_patience,
                         label_smoothing=settings.label_smoothing, class_weight=settings.class_weight,
                         augment=Augment.parse(settings.augment), run=state, on_batch=on_batch,
                         on_validate=reporter.validating, on_epoch=end_of_epoch)
        finally:
            if board is not None:
                board.close()
            reporter.stopped()
    except training.TrainingInterrupted as stop:
        outputs.save_resume(net, optimizer, stop.run, settings.as_dict())
        reporter.interrupted(stop.run, outputs.path, outputs.resume_path, state.best_epoch)
        raise
    if not group.is_root:
        return None
    best, _ = checkpoint.load(outputs.path, device=net.device.name)
    pixels, labels = data.split("test")  # evaluate prepares them a chunk at a time
    test_loss, test_accuracy = training.evaluate(best, pixels, labels.astype(np.int64))
    state.history[state.best_epoch - 1].update(test_loss=test_loss, test_accuracy=test_accuracy)
    outputs.save_best(best, metadata({"test_loss": test_loss, "test_accuracy": test_accuracy}))
    outputs.write_metrics(state.history)
    outputs.finish()
    result = RunResult(outputs.path, outputs.metrics_path, dataset, state.best_epoch, len(state.history),
                       state.best_accuracy, test_loss, test_accuracy, len(pixels), state.history)
    reporter.finished(result)
    return result


def _tensorboard_log(settings: RunSettings, group, train_images: int, image: np.ndarray):
    """The TensorBoard writer of a run with ``tensorboard`` set (in a parallel run, the first process's only);
    the feature maps drawn each epoch are ``image``'s."""
    if settings.tensorboard is None or not group.is_root:
        return None
    from .tensorboard import TensorBoardLog

    batches = -(-train_images // min(settings.batch_size, train_images))
    return TensorBoardLog(settings.tensorboard, batches, image)


def _say_what_the_monitors_did(reporter: Reporter, settings: RunSettings, state: training.RunState, result,
                               scale: list[float], base_lr: float) -> None:
    """A note when the plateau schedule lowered the rate after this epoch, or patience ended the run."""
    if state.lr_scale != scale[0]:
        scale[0] = state.lr_scale
        epochs = f"{settings.plateau_patience} epoch{'s' if settings.plateau_patience > 1 else ''}"
        reporter.note(f"The validation loss has not fallen for {epochs}: the learning rate goes down to "
                      f"{base_lr * state.lr_scale:.3g}.")
    from .monitor import out_of_patience

    if state.finished and result.epoch < settings.epochs and out_of_patience(result.epoch, state.best_epoch,
                                                                             settings.patience):
        reporter.note(f"No better validation accuracy for {settings.patience} epochs since epoch {state.best_epoch}: "
                      f"stopping (--patience {settings.patience}); epoch {state.best_epoch} is kept.")


def _training_images(settings: RunSettings, data: DataSet):
    """((train images, labels), (validation images, labels)) as ``settings`` split them, the images as uint8
    pixels: ``fit`` and ``evaluate`` prepare them a batch at a time (``numbacnn.steps.stored_images``)."""
    images, labels = data.split("train")
    (x_train, y_train), (x_val, y_val) = training.split_validation(images, labels, settings.validation,
                                                                   settings.limit)
    return (x_train, y_train.astype(np.int64)), (x_val, y_val.astype(np.int64))


def prepared(data: DataSet, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images as floats in [0, 1], integer labels) of one split of ``data``."""
    images, labels = data.split(split)
    return training.prepare_images(images), labels.astype(np.int64)
