"""The conformance kit checks state, the inference path and blocks, and says how much it checked.

A toy batch normalisation written here in NumPy passes every check; each broken copy of it breaks the contract
in one way, and the check named beside it must fail with a message that says so.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import strategies as st

from numbacnn.block import Block, ChildArrays
from numbacnn.device import get_device
from numbacnn.errors import DeviceError, ShapeError
from numbacnn.layer import Layer
from numbacnn.testing import CHECKS, LayerCase, NothingChecked, check_layer, image_shapes

SHAPES = st.one_of(image_shapes(), st.tuples(st.integers(1, 8)))

# -- a toy batch normalisation and its kernels ------------------------------------------------------------
# The layer computes on host NumPy arrays; its kernels move arrays between host and device and update the
# running statistics, so that a CUDA twin (and a broken one) needs no GPU code of its own.


def _assign(target, values):
    target[...] = values


def _update_running(running, statistic, momentum):
    running *= 1 - momentum
    running += momentum * statistic


CPU_KERNELS = SimpleNamespace(host=lambda a: a, device=lambda a: a, assign=_assign, update_running=_update_running)


def cuda_kernels():
    """The CUDA twin: the same arithmetic on host copies, written back into the device arrays in place."""
    from numba import cuda

    def assign(target, values):
        target.copy_to_device(np.ascontiguousarray(values, dtype=target.dtype))

    def update_running(running, statistic, momentum):
        assign(running, (1 - momentum) * running.copy_to_host() + momentum * statistic)

    return SimpleNamespace(host=lambda a: a.copy_to_host(), device=cuda.to_device, assign=assign,
                           update_running=update_running)


class ToyBatchNorm(Layer):
    """Batch normalisation over the last axis: y = gamma * (x - mean) / sqrt(var + eps) + beta, with the batch's
    statistics while training and the running ones (PyTorch's momentum convention) at inference."""

    name = "toy_batchnorm"
    devices = ("cpu", "cuda")

    def __init__(self, momentum=0.1, eps=1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps

    def load_kernels(self, device):
        return cuda_kernels() if device.name == "cuda" else CPU_KERNELS

    def output_shape(self, in_shape):
        return in_shape

    def init_params(self, in_shape, rng):
        channels = in_shape[-1]
        return {"gamma": 1 + 0.1 * rng.standard_normal(channels), "beta": 0.1 * rng.standard_normal(channels)}

    def init_state(self, in_shape):
        return {"running_mean": np.zeros(in_shape[-1]), "running_var": np.ones(in_shape[-1])}

    def running(self):
        """Where the running statistics live (broken copies keep them elsewhere)."""
        return self.state

    def statistics(self, flat, training):
        """(mean, var) to normalise with; while training, the batch's, which also update the running ones."""
        if not training:
            return self.kernels.host(self.running()["running_mean"]), self.kernels.host(self.running()["running_var"])
        mean, var = flat.mean(axis=0), flat.var(axis=0)
        n = flat.shape[0]
        self.kernels.update_running(self.running()["running_mean"], mean, self.momentum)
        self.kernels.update_running(self.running()["running_var"], var * (n / (n - 1) if n > 1 else 1), self.momentum)
        return mean, var

    def forward(self, x, *, training=False):
        x = self.kernels.host(x)  # shapes of the CUDA simulator's arrays take no negative index
        flat = x.reshape(-1, x.shape[-1])
        mean, var = self.statistics(flat, training)
        inv_std = 1 / np.sqrt(var + self.eps)
        xhat = (flat - mean) * inv_std
        if training:
            self._xhat, self._inv_std = xhat, inv_std
        gamma, beta = (self.kernels.host(self.params[k]) for k in ("gamma", "beta"))
        return self.kernels.device((xhat * gamma + beta).reshape(x.shape))

    def backward(self, dy):
        dy = self.kernels.host(dy)
        g = dy.reshape(-1, dy.shape[-1])
        xhat = self._xhat
        self.kernels.assign(self.grads["gamma"], (g * xhat).sum(axis=0))
        self.kernels.assign(self.grads["beta"], g.sum(axis=0))
        dxhat = g * self.kernels.host(self.params["gamma"])
        dx = self._inv_std * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))
        return self.kernels.device(dx.reshape(dy.shape))


def batchnorm_reference(x, params, state, hyper):
    """What ToyBatchNorm's forward(training=False) must give."""
    return params["gamma"] * (x - state["running_mean"]) / np.sqrt(state["running_var"] + hyper["eps"]) + params["beta"]


def batchnorm_training_reference(x, params, state, hyper):
    """What one ToyBatchNorm forward(training=True) must give, and the state it must leave."""
    flat = x.reshape(-1, x.shape[-1])
    n, m = flat.shape[0], hyper["momentum"]
    mean, var = flat.mean(axis=0), flat.var(axis=0)
    y = params["gamma"] * (x - mean) / np.sqrt(var + hyper["eps"]) + params["beta"]
    unbiased = var * n / (n - 1) if n > 1 else var
    return y, {"running_mean": (1 - m) * state["running_mean"] + m * mean,
               "running_var": (1 - m) * state["running_var"] + m * unbiased}


BATCHNORM_HYPER = st.fixed_dictionaries({"momentum": st.floats(0.05, 0.5), "eps": st.sampled_from([1e-5, 1e-3])})


def batchnorm_case(layer=ToyBatchNorm, **kwargs):
    """A case with both references, as a batch normalisation plug-in would describe itself."""
    options = dict(input_shape=SHAPES, max_examples=5, reference=batchnorm_reference,
                   training_reference=batchnorm_training_reference, state_updates=True)
    return LayerCase(layer, **{**options, **kwargs})


# -- a correct layer passes, and the report counts what ran -------------------------------------------------


def test_a_correct_batchnorm_passes_every_check():
    report = check_layer(batchnorm_case(hyper=BATCHNORM_HYPER))
    assert list(report) == list(CHECKS)
    assert set(report.skipped) <= {"devices"}  # no CUDA here
    assert {"state", "inference", "save_load"} <= set(report.passed)
    assert all(1 <= report.examples[name] <= 5 for name in report.passed)
    assert report.summary().startswith(f"toy_batchnorm: {len(report.passed)} checks passed (")


def test_a_stateless_layer_has_its_state_check_skipped_not_passed():
    report = check_layer(LayerCase("relu", max_examples=3), checks=["state", "inference"])
    assert report.passed == ["inference"]
    assert report.skipped == {"state": "relu: state check skipped: the layer has no state."}
    assert report.summary() == "relu: 1 check passed (3 examples), 1 skipped (state: the layer has no state)"


def test_a_run_where_every_check_was_skipped_fails():
    with pytest.raises(NothingChecked, match="Nothing was checked") as failure:
        check_layer(LayerCase("relu", max_examples=3), checks=["state"])
    assert failure.value.report.skipped == {"state": "relu: state check skipped: the layer has no state."}
    everything = {name: "not this time" for name in CHECKS}
    with pytest.raises(NothingChecked, match="0 checks passed"):
        check_layer(LayerCase("relu", skip=everything))


class RefusesEveryShape(ToyBatchNorm):
    name = "refuses_every_shape"

    def output_shape(self, in_shape):
        raise ShapeError("no shape suits this layer")


def test_a_check_that_ran_no_example_fails():
    with pytest.raises(AssertionError, match="the shapes check ran no example, because build\\(\\) refused every"):
        check_layer(LayerCase(RefusesEveryShape, max_examples=3), checks=["shapes"])


# -- broken copies of the batch normalisation ----------------------------------------------------------------


class RunningStatsAsParams(ToyBatchNorm):
    """Keeps its running statistics among the trainable parameters (with zero gradients) and updates them there."""

    name = "running_stats_as_params"

    def init_params(self, in_shape, rng):
        return {**super().init_params(in_shape, rng), **super().init_state(in_shape)}

    def init_state(self, in_shape):
        return {}

    def running(self):
        return self.params


class FrozenStatsAsParams(RunningStatsAsParams):
    """As above, but never updates them: they are parameters that training never changes."""

    name = "frozen_stats_as_params"

    def statistics(self, flat, training):
        return (flat.mean(axis=0), flat.var(axis=0)) if training else super().statistics(flat, False)


class BatchStatsAtInference(ToyBatchNorm):
    name = "batch_stats_at_inference"

    def statistics(self, flat, training):
        return super().statistics(flat, True) if training else (flat.mean(axis=0), flat.var(axis=0))


class NeverUpdates(ToyBatchNorm):
    name = "never_updates"

    def statistics(self, flat, training):
        return (flat.mean(axis=0), flat.var(axis=0)) if training else super().statistics(flat, False)


class WrongEpsAtInference(ToyBatchNorm):
    name = "wrong_eps_at_inference"

    def forward(self, x, *, training=False):
        eps, self.eps = self.eps, self.eps if training else 1e-3
        try:
            return super().forward(x, training=training)
        finally:
            self.eps = eps


class Float64AtInference(ToyBatchNorm):
    name = "float64_at_inference"

    def forward(self, x, *, training=False):
        y = super().forward(x, training=training)
        return y if training else y.astype(np.float64)


class UpdatesAtInference(ToyBatchNorm):
    """Normalises with its running statistics at inference, then updates them with the batch's."""

    name = "updates_at_inference"

    def forward(self, x, *, training=False):
        y = super().forward(x, training=training)
        if not training:
            super().statistics(x.reshape(-1, x.shape[-1]), True)
        return y


class StateReadFromACopy(ToyBatchNorm):
    """Reads and updates a private copy of its state made when built (and mirrors it into ``state``), so a
    loaded state is ignored."""

    name = "state_read_from_a_copy"

    def build(self, in_shape, **kwargs):
        out = super().build(in_shape, **kwargs)
        self._copy = {k: v.copy() for k, v in self.state.items()}
        return out

    def running(self):
        return self._copy

    def statistics(self, flat, training):
        mean, var = super().statistics(flat, training)
        for k, v in self._copy.items():
            self.state[k][...] = v
        return mean, var


class ReplacesState(ToyBatchNorm):
    """Puts new arrays into ``state`` instead of updating the ones it has."""

    name = "replaces_state"

    def statistics(self, flat, training):
        if training:
            self.state = {k: v.copy() for k, v in self.state.items()}
        return super().statistics(flat, training)


class Float64State(ToyBatchNorm):
    """Keeps its state in float64 whatever the layer's dtype."""

    name = "float64_state"

    def build(self, in_shape, **kwargs):
        out = super().build(in_shape, **kwargs)
        self.state = {k: v.astype(np.float64) for k, v in self.state.items()}
        return out


@pytest.mark.parametrize("layer, options, check, message", [
    # The original trap: the config check blamed the config; now it names the real cause.
    (RunningStatsAsParams, {}, "config", "changed parameter 'running_mean', whose gradient is zero,"),
    (RunningStatsAsParams, {}, "gradients", "keep it in state (return it from init_state), not in params"),
    (FrozenStatsAsParams, {"max_examples": 6}, "gradients", "parameter 'running_mean' always has a zero gradient"),
    (BatchStatsAtInference, {}, "inference", "must not depend on the rest of its batch"),
    (NeverUpdates, {}, "state", "after training step 1 (against LayerCase.training_reference): state['running_mean']"),
    (NeverUpdates, {"training_reference": None}, "state", "but LayerCase.state_updates says the layer updates"),
    (WrongEpsAtInference, {}, "inference", "forward(training=False) outputs (against LayerCase.reference)"),
    (Float64AtInference, {}, "inference", "forward(training=False) returns float64 for float32 inputs"),
    (UpdatesAtInference, {}, "state", "forward(training=False) changed the state"),
    (StateReadFromACopy, {}, "save_load", "after loading the saved params and state, forward(training=False)"),
    (ReplacesState, {}, "state", "replaced state['running_mean'] with a new array"),
    (Float64State, {}, "state", "as built is float64 of shape"),
])
def test_the_kit_catches_broken_state(layer, options, check, message):
    with pytest.raises(AssertionError, match="check\\(s\\) failed") as failure:
        check_layer(batchnorm_case(layer, **options), checks=[check])
    text = str(failure.value)
    assert message in text
    assert f"{layer.name}(" in text or f"{layer.name}:" in text


def test_a_layer_may_say_why_its_inference_depends_on_the_batch():
    case = batchnorm_case(BatchStatsAtInference, reference=None, batch_dependent="normalises every batch by itself")
    assert check_layer(case, checks=["inference"]).passed == ["inference"]


# -- blocks ------------------------------------------------------------------------------------------------


def test_a_block_with_dropout_inside_replays_its_random_state():
    """The gradient check repeats training passes: the dropout child's mask must be the same each time."""
    case = LayerCase("residual", hyper={"layers": "dropout(rate=0.5)"}, input_shape=SHAPES, max_examples=5)
    assert check_layer(case, checks=["gradients", "inference"]).passed == ["gradients", "inference"]


class ToyBlock(Block):
    """Two toy batch normalisations in a chain: a block whose state is its children's, keyed "0.running_mean"."""

    name = "toy_block"

    def __init__(self, momentum=0.1):
        # Not Block.__init__: that reads the children from spec text, which needs them registered.
        Layer.__init__(self)
        self.momentum = momentum
        self.children = [ToyBatchNorm(momentum), ToyBatchNorm(momentum)]
        self.params, self.grads, self.state = (ChildArrays(self, a) for a in ("params", "grads", "state"))
        self.execution_order = list(self.children)

    def load_kernels(self, device):
        return None

    def combine(self, in_shape, children_shape, rng):
        return children_shape

    def forward(self, x, *, training=False):
        return self.forward_children(x, training)

    def backward(self, dy):
        return self.backward_children(dy)


def block_reference(x, params, state, hyper):
    for child in ("0", "1"):
        mine = {k.partition(".")[2]: v for k, v in {**params, **state}.items() if k.startswith(child + ".")}
        x = batchnorm_reference(x, mine, mine, {"eps": 1e-5})
    return x


def test_a_block_with_state_passes_through_its_childrens_arrays():
    case = LayerCase(ToyBlock, input_shape=SHAPES, max_examples=5, reference=block_reference, state_updates=True,
                     skip={"config": "its children are fixed, so it has no layers argument to write as spec text"})
    report = check_layer(case)
    assert {"shapes", "gradients", "save_load", "state", "inference", "dtypes"} <= set(report.passed)


# -- CUDA: run on a GPU, or on the simulator by test_cuda_simulator.py --------------------------------------


class CudaIgnoresRunningStats(ToyBatchNorm):
    """Its CUDA twin never writes the running statistics; the CPU one does."""

    name = "cuda_ignores_running_stats"

    def load_kernels(self, device):
        kernels = super().load_kernels(device)
        if device.name == "cuda":
            kernels.update_running = lambda running, statistic, momentum: None
        return kernels


def require_cuda():
    try:
        get_device("cuda")
    except DeviceError as error:
        pytest.skip(f"no usable CUDA device (set NUMBA_ENABLE_CUDASIM=1 for the simulator): {error}")


def test_a_correct_batchnorm_matches_on_cuda():
    require_cuda()
    assert check_layer(batchnorm_case(max_examples=3), checks=["devices"]).passed == ["devices"]


def test_the_devices_check_catches_a_cuda_twin_that_ignores_running_stats():
    require_cuda()
    with pytest.raises(AssertionError, match="check\\(s\\) failed") as failure:
        check_layer(batchnorm_case(CudaIgnoresRunningStats, max_examples=3), checks=["devices"])
    assert "cuda (against cpu) after 3 more training steps: state['running_mean']" in str(failure.value)
