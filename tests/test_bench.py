"""`numbacnn bench`'s step comparison: real batches drawn as ``fit`` draws them, numbacnn and PyTorch
alternating step by step, each step timed on its own after uncounted warm-up steps, and the ratio and its
spread as numbacnn.bench documents them. No figure here depends on the machine's speed: the clock is faked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from numbacnn import bench
from numbacnn.model import Sequential
from numbacnn.presets import PRESETS
from numbacnn.train import epoch_order


class FakeClock:
    """``time.perf_counter`` that moves only when a fake step says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_contender(name: str, clock: FakeClock, log: list, seconds) -> bench.Contender:
    """A contender whose step i takes ``seconds(i)`` on the fake clock and is written into ``log``."""

    def step(kind):
        def take(i):
            log.append((name, kind, i))
            clock.now += seconds(i)
        return take

    return bench.Contender(name, step("train"), step("inference"), lambda: log.append((name, "sync")))


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(bench.time, "perf_counter", fake)
    return fake


def test_the_contenders_alternate_step_by_step_each_step_between_two_synchronisations(clock):
    log = []
    ours, theirs = (fake_contender(name, clock, log, lambda i: 1.0) for name in ("ours", "theirs"))
    bench.alternate([ours, theirs], "train", steps=2, warmup=1)

    def one_step(name, i):
        return [(name, "sync"), (name, "train", i), (name, "sync")]

    assert log == [entry for i in range(3) for name in ("ours", "theirs") for entry in one_step(name, i)]


def test_warm_up_steps_are_not_counted(clock):
    log = []
    ours = fake_contender("ours", clock, log, lambda i: 100.0 if i < 2 else i)  # compiling: 100 s
    theirs = fake_contender("theirs", clock, log, lambda i: 100.0 if i < 2 else 10.0 * i)
    assert bench.alternate([ours, theirs], "inference", steps=3, warmup=2) == [[2, 3, 4], [20, 30, 40]]
    assert [entry[2] for entry in log if entry[0] == "ours" and len(entry) == 3] == [0, 1, 2, 3, 4]


def test_the_ratio_is_pytorchs_median_step_over_numbacnns_and_the_spread_the_middle_half_of_the_pairs():
    ours, theirs = [1.0, 2.0, 4.0, 1.0], [3.0, 2.0, 8.0, 10.0]
    ratio, (low, high) = bench.step_ratio(ours, theirs)
    assert ratio == pytest.approx(5.5 / 1.5)  # medians 5.5 and 1.5
    # The pairs' ratios 3, 1, 2, 10, sorted 1, 2, 3, 10: the 25th and 75th percentiles, interpolated.
    assert (low, high) == pytest.approx((1.75, 4.75))


def test_the_report_holds_the_medians_ratio_and_spread_of_the_timed_steps(clock, monkeypatch):
    """run_bench's figures from fake contenders: numbacnn's timed steps take 1, 2, 3, 4 ms, PyTorch's 3 ms each
    (the warm-up step 1 s, which would show in every figure were it counted)."""
    log = []
    ours = fake_contender("ours", clock, log, lambda i: 1.0 if i == 0 else 1e-3 * i)
    theirs = fake_contender("theirs", clock, log, lambda i: 1.0 if i == 0 else 3e-3)
    monkeypatch.setattr(bench, "numbacnn_contender", lambda *args: ours)
    monkeypatch.setattr(bench, "torch_contender", lambda *args: (theirs, {"version": "fake"}))
    report = bench.run_bench(PRESETS["tiny"], batch_size=8, steps=2, repeats=2, warmup=1, dataset=None,
                             per_layer=False)
    assert report["timed_steps"] == 4 and report["warmup_steps"] == 1
    for kind in ("train", "inference"):  # numbacnn's steps 1..4 ms: median 2.5 ms; PyTorch's all 3 ms
        assert report[f"{kind}_step_ms"] == pytest.approx([1.75, 2.5, 3.25])
        assert report[f"{kind}_images_per_s"] == pytest.approx(8 / 2.5e-3)
        assert report["torch"][f"{kind}_images_per_s"] == pytest.approx(8 / 3e-3)
        assert report[f"{kind}_ratio"] == pytest.approx(3 / 2.5)
        assert report[f"{kind}_ratio_spread"] == pytest.approx(np.percentile([3, 1.5, 1, 0.75], [25, 75]))
    assert report["images"]["source"] == "random"


def test_every_step_takes_the_next_batch_of_the_shuffled_epochs_fit_draws():
    batches = bench.Batches(10, 3, seed=4)  # three whole batches an epoch; the tenth image waits for the next
    first, second = epoch_order(4, 1, 10), epoch_order(4, 2, 10)
    assert np.array_equal(np.concatenate([batches.indices(i) for i in range(3)]), first[:9])
    assert np.array_equal(batches.indices(3), second[:3]) and batches.position(3) == (2, 0)
    assert len({tuple(batches.indices(i)) for i in range(6)}) == 6


def test_both_contenders_take_the_same_batches_and_a_different_one_each_step(monkeypatch):
    """Each image holds its own number, so the batches the two networks see can be read back (PyTorch's laid
    out NCHW); five steps of two-image batches cross into the second epoch."""
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'numbacnn[bench]')")
    model = Sequential("flatten dense(10)", (2, 2, 1)).build(seed=0)
    n, seen = 8, {"numbacnn": [], "PyTorch": []}
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1)).copy()
    labels = np.arange(n) % 10
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x, **k: seen["numbacnn"].append(x[:, 0, 0, 0]) or forward(x, **k))

    make_twin = bench.torch_twin

    def twin_that_records(model, torch):
        net = make_twin(model, torch)
        net.register_forward_pre_hook(lambda _net, inputs: seen["PyTorch"].append(inputs[0][:, 0, 0, 0].numpy()))
        return net

    monkeypatch.setattr(bench, "torch_twin", twin_that_records)
    batches = bench.Batches(n, 2, seed=1)
    contenders = [bench.numbacnn_contender(model, images, labels, batches),
                  bench.torch_contender(model, images, labels, batches, seed=0)[0]]
    for kind in ("train", "inference"):
        for name in seen:
            seen[name].clear()
        for i in range(5):
            for contender in contenders:
                getattr(contender, kind)(i)
        wanted = [batches.indices(i) for i in range(5)]
        for name, batch_images in seen.items():
            assert [list(b.astype(int)) for b in batch_images] == [list(w) for w in wanted], (kind, name)
    assert len({tuple(w) for w in wanted}) == 5


@pytest.mark.data
def test_a_short_real_bench_of_tiny_on_mnist_reports_its_figures(datasets_dir):
    report = bench.run_bench(PRESETS["tiny"], batch_size=16, steps=2, repeats=2, warmup=1, data_dir=datasets_dir)
    json.dumps(report)  # --json prints it
    assert report["images"] == {"source": "mnist", "count": 60_000}
    assert (report["timed_steps"], report["warmup_steps"]) == (4, 1)
    assert [row["layer"].split(" (")[0] for row in report["layers"]] == [r.layer for r in Sequential(
        PRESETS["tiny"]).summary()]
    for kind in ("train", "inference"):
        low, median, high = report[f"{kind}_step_ms"]
        assert 0 < low <= median <= high
        assert report[f"{kind}_images_per_s"] == pytest.approx(16 / (median / 1e3))
        if "skipped" not in report["torch"]:
            spread = report[f"{kind}_ratio_spread"]
            assert report[f"{kind}_ratio"] > 0 and 0 < spread[0] <= spread[1]


@pytest.mark.data
def test_a_network_the_data_set_cannot_feed_is_timed_on_random_images_saying_why(datasets_dir):
    report = bench.run_bench("flatten dense(3)", batch_size=4, steps=1, repeats=1, warmup=1, data_dir=datasets_dir,
                             with_torch=False, per_layer=False)
    assert report["images"]["source"] == "random"
    assert report["images"]["why"] == "the network scores 3 classes and mnist has 10"


def test_without_a_data_set_the_steps_take_random_images_of_the_networks_shape():
    report = bench.run_bench("flatten dense(10)", batch_size=4, steps=1, repeats=1, warmup=1, dataset=None,
                             with_torch=False, per_layer=False)
    assert report["images"] == {"source": "random", "count": 8, "why": "no data set was given"}
    assert "torch" not in report and report["train_images_per_s"] > 0
