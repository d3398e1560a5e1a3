"""Optimisers: SGD with momentum and Adam, updating parameters on the device where they live."""

from __future__ import annotations

import importlib
import math

from ..device import get_device
from ..errors import SpecError


class Optimizer:
    """Updates every (param, grad) pair of a model in place; keeps its state next to the parameters."""

    name = ""

    def __init__(self, lr: float):
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise SpecError(f"The learning rate must be a positive number, got {lr!r}.")
        self.lr = float(lr)
        self.steps = 0
        self._state: dict[int, tuple] = {}

    def step(self, model) -> None:
        """One update from the gradients the last backward pass left in the model."""
        self.steps += 1
        kernels = importlib.import_module(f"{__name__}.{model.device.name}")
        for key, (param, grad) in enumerate(model.parameters()):
            if key not in self._state:
                self._state[key] = tuple(model.device.zeros(param.shape, param.dtype) for _ in range(self.slots))
            self.update(kernels, param.reshape(-1), grad.reshape(-1), [s.reshape(-1) for s in self._state[key]])


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's form): v = m v + g; p -= lr v."""

    name = "sgd"
    slots = 1

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

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def update(self, kernels, param, grad, state):
        step_size = self.lr / (1 - self.beta1 ** self.steps)
        inv_root_correction = 1 / math.sqrt(1 - self.beta2 ** self.steps)
        kernels.adam_update(param, grad, state[0], state[1], step_size, self.beta1, self.beta2,
                            inv_root_correction, self.eps)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Adam)}


def make_optimizer(name: str, lr: float | None = None) -> Optimizer:
    """The optimiser called ``name`` with learning rate ``lr`` (its default when None)."""
    try:
        cls = OPTIMIZERS[name.lower()]
    except KeyError:
        raise SpecError(f"Unknown optimiser {name!r}; choose one of: {', '.join(OPTIMIZERS)}.") from None
    return cls() if lr is None else cls(lr=lr)
