"""Optimisers: SGD with momentum and Adam, updating parameters on the device where they live."""

from __future__ import annotations

import math

import numpy as np

from ..device import kernels_for
from ..errors import ShapeError, SpecError


class Optimizer:
    """Updates every (param, grad) pair of a model in place; keeps its state next to the parameters."""

    name = ""
    slots = 0  # moment arrays kept per parameter array
    hyperparameters: tuple[str, ...] = ()

    def __init__(self, lr: float):
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise SpecError(f"The learning rate must be a positive number, got {lr!r}.")
        # ``lr`` is the rate of the next step, which a schedule changes; ``base_lr`` the one it starts from.
        self.lr = self.base_lr = float(lr)
        self.steps = 0
        # Per slot, one array as long as ``model.flat_params``, made at the first step.
        self._moments: tuple | None = None

    def step(self, model) -> None:
        """One update from the gradients the last backward pass left in the model: one kernel call over all
        parameters at once (``model.flat_params``), each element updated exactly as on its own."""
        self.steps += 1
        kernels = kernels_for(__name__, model.device)
        if self._moments is None:
            flat = model.flat_params
            self._moments = tuple(model.device.zeros(flat.size, flat.dtype) for _ in range(self.slots))
        self.update(kernels, model.flat_params, model.flat_grads, self._moments)

    def get_config(self) -> dict:
        """The name, base learning rate and hyperparameters: ``make_optimizer(**config)`` makes it again."""
        return {"name": self.name, "lr": self.base_lr, **{k: getattr(self, k) for k in self.hyperparameters}}

    def get_state(self, model) -> tuple[int, dict[str, np.ndarray]]:
        """(steps taken, the moment arrays copied to the host, keyed "<parameter number>.<slot>"): with the
        model's weights, what a run needs to go on exactly where it stopped."""
        if self._moments is None:
            return self.steps, {}
        slots = [model.device.to_host(m) for m in self._moments]
        return self.steps, {f"{key}.{i}": slot[where].reshape(shape).copy()
                            for key, (where, shape) in enumerate(model.parameter_slices())
                            for i, slot in enumerate(slots)}

    def set_state(self, model, steps: int, arrays: dict[str, np.ndarray]) -> None:
        """Loads what ``get_state`` gave, for the same model; ``ShapeError`` when it does not fit."""
        slices = model.parameter_slices()
        expected = {f"{key}.{i}": shape for key, (_, shape) in enumerate(slices) for i in range(self.slots)}
        if arrays and ({k: tuple(v.shape) for k, v in arrays.items()} != expected):
            raise ShapeError(f"The saved {self.name} state does not fit this model's {len(slices)} parameter arrays.")
        self.steps = int(steps)
        self._moments = None
        if arrays:
            self._moments = tuple(
                model.device.to_device(np.concatenate(
                    [np.asarray(arrays[f"{key}.{i}"], dtype=model.flat_params.dtype).reshape(-1)
                     for key in range(len(slices))]))
                for i in range(self.slots))


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's form): v = m v + g; p -= lr v."""

    name = "sgd"
    slots = 1
    hyperparameters = ("momentum",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9):
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise SpecError(f"Momentum must be from 0 up to (not including) 1, got {momentum!r}.")
        self.momentum = float(momentum)

    def update(self, kernels, param, grad, state):
        kernels.sgd_update(param, grad, state[0], self.lr, self.momentum)


class Adam(Optimizer):
    """Adam (Kingma and Ba), with bias correction, as in PyTorch."""

    name = "adam"
    slots = 2
    hyperparameters = ("beta1", "beta2", "eps")

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def update(self, kernels, param, grad, state):
        step_size = self.lr / (1 - self.beta1 ** self.steps)
        inv_root_correction = 1 / math.sqrt(1 - self.beta2 ** self.steps)
        kernels.adam_update(param, grad, state[0], state[1], step_size, self.beta1, self.beta2,
                            inv_root_correction, self.eps)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam)}


def make_optimizer(name: str, lr: float | None = None, **hyperparameters) -> Optimizer:
    """The optimiser called ``name`` with learning rate ``lr`` (its default when None) and hyperparameters."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except (KeyError, AttributeError):
        raise SpecError(f"Unknown optimiser {name!r}; choose one of: {', '.join(OPTIMIZERS)}.") from None
    unknown = set(hyperparameters) - set(cls.hyperparameters)
    if unknown:
        raise SpecError(f"The {cls.name} optimiser has no setting {', '.join(sorted(unknown))}.")
    return cls(**hyperparameters) if lr is None else cls(lr=lr, **hyperparameters)
