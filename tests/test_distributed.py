"""Data-parallel training over MPI, run for real with ``mpiexec -n 2`` (MPICH from ``numbacnn[mpi]``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from numbacnn import checkpoint
from numbacnn.distributed import Group

pytest.importorskip("mpi4py", reason="needs numbacnn[mpi] (mpi4py and an MPI runtime)")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
if MPIEXEC is None:
    pytest.skip("no mpiexec: install numbacnn[mpi]", allow_module_level=True)

# Each process trains a few steps through the Python API and writes what it holds; run without mpiexec,
# the same script is the one-process reference.
SCRIPT = """
import sys
import numpy as np
import numbacnn
from numbacnn import distributed
from numbacnn.augment import Augment
from numbacnn.data import load_dataset

spec, device, out = sys.argv[1], sys.argv[2], sys.argv[3]
images, labels = load_dataset("mnist", "train", data_dir=sys.argv[4])
x, y = numbacnn.prepare_images(images[:{count}]), labels[:{count}].astype(np.int64)
if spec.startswith("small:"):  # a small input, for the CUDA simulator
    spec, x = spec[6:], np.ascontiguousarray(x[:, ::3, ::3])
model = numbacnn.Sequential(spec, input_shape=x.shape[1:]).build(seed=3, device=device)
numbacnn.fit(model, numbacnn.Adam(1e-3), x, y, epochs=1, batch_size={batch}, seed=7,
             augment=Augment.parse("shift=1"))
group = distributed.current()
np.savez(f"{{out}}.{{group.rank}}.npz", *[w for layer in model.get_weights() for w in layer.values()],
         *[s for layer in model.get_state() for s in layer.values()])
print("processes", group.size)
"""
SPEC = "conv2d(4,3) relu maxpool2d(2) flatten dropout(0.3) dense(10)"


def _script(tmp_path, count=192, batch=64) -> Path:
    path = tmp_path / "train_a_little.py"
    path.write_text(textwrap.dedent(SCRIPT.format(count=count, batch=batch)))
    return path


def _arrays(path) -> list[np.ndarray]:
    with np.load(path) as npz:
        return [npz[k] for k in sorted(npz.files, key=lambda k: int(k.split("_")[1]))]


def _run(args, timeout=300, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)


def _close(a: np.ndarray, b: np.ndarray, relative: float) -> bool:
    """Equal within ``relative`` of the array's largest value (float32 sums in another order differ so)."""
    return float(np.max(np.abs(a - b), initial=0)) <= relative * max(float(np.max(np.abs(b), initial=0)), 1e-12)


@pytest.mark.data
@pytest.mark.parametrize("spec, same", [(SPEC, True), ("conv2d(4,3) batchnorm2d relu maxpool2d(2) flatten dense(10)", False)])
def test_two_processes_hold_the_same_weights_as_one(tmp_path, datasets_dir, spec, same):
    script = _script(tmp_path)
    two = _run([MPIEXEC, "-n", 2, sys.executable, script, spec, "cpu", tmp_path / "two", datasets_dir])
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("processes") == 2 and "1" not in two.stdout  # both report 2 (lines may interleave)
    one = _run([sys.executable, script, spec, "cpu", tmp_path / "one", datasets_dir])
    assert one.returncode == 0, one.stderr
    rank0, rank1, alone = (_arrays(tmp_path / name) for name in ("two.0.npz", "two.1.npz", "one.0.npz"))
    assert all(np.array_equal(a, b) for a, b in zip(rank0, rank1))  # every process applied the same update
    if same:  # batch normalisation sees each process's part of the batch, so only the rest is the same run
        assert all(_close(a, b, 1e-5) for a, b in zip(rank0, alone))


def test_each_process_takes_its_rows_of_a_batch():
    class Fake(Group):
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

    from numbacnn.distributed import MPIGroup

    for count in (1, 7, 64):
        parts = [MPIGroup.part(Fake(r, 3), count) for r in range(3)]
        assert parts[0][0] == 0 and parts[-1][1] == count
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1
    assert Group().part(5) == (0, 5) and Group().sum_step(None, 1.0, [1.0, 2]) == [1.0, 2]


CLI = [sys.executable, "-m", "numbacnn", "train", "--layers", SPEC, "--limit", 3000, "--validation", 500,
       "-b", 64, "--threads", 1]


@pytest.mark.data
def test_the_command_trains_on_two_processes_and_only_the_first_writes(tmp_path, datasets_dir):
    output = tmp_path / "m.npz"
    result = _run([MPIEXEC, "-n", 2, *CLI, "-e", 1, "--data-dir", datasets_dir, "-o", output])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Training custom layers") == 1 and "2 processes" in result.stdout
    assert result.stdout.count("Test accuracy") == 1
    assert checkpoint.load(output)[1]["test_accuracy"] > 0.3  # chance is 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.metrics.jsonl", "m.npz"]


@pytest.mark.data
def test_a_failing_process_ends_the_job_and_the_checkpoint_stays(tmp_path, datasets_dir):
    output = tmp_path / "m.npz"
    assert _run([*CLI, "-e", 1, "--data-dir", datasets_dir, "-o", output]).returncode == 0
    before = output.read_bytes()
    # Process 1 cannot read the data; process 0 can, and would wait for it forever.
    args = [*CLI, "-e", 1, "-o", output]
    started = time.monotonic()
    result = _run([MPIEXEC, "-n", 1, "-env", "NUMBACNN_DATA_DIR", datasets_dir, *args, ":",
                   "-n", 1, "-env", "NUMBACNN_DATA_DIR", tmp_path / "nothing", *args], timeout=120)
    assert result.returncode != 0
    assert "Error (process 1 of 2):" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert output.read_bytes() == before


@pytest.mark.data
def test_a_process_that_dies_ends_the_job(tmp_path, datasets_dir):
    script = tmp_path / "die.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        import numpy as np
        import numbacnn
        from numbacnn import distributed
        x = np.random.default_rng(0).random((256, 8, 8, 1), dtype=np.float32)
        model = numbacnn.Sequential("flatten dense(10)", input_shape=(8, 8, 1)).build()
        def die(stats):
            if distributed.current().rank == 1 and stats.batch == 2:
                os._exit(9)
        numbacnn.fit(model, numbacnn.Adam(), x, np.arange(256) % 10, epochs=50, batch_size=16, on_batch=die)
    """))
    started = time.monotonic()
    result = _run([MPIEXEC, "-n", 2, sys.executable, script], timeout=120)
    assert result.returncode != 0 and time.monotonic() - started < 60


@pytest.mark.data
@pytest.mark.slow
def test_resume_works_under_mpiexec(tmp_path, datasets_dir):
    args = [str(a) for a in [*CLI, "-e", 2, "--limit", 12000, "--data-dir", datasets_dir]]
    stopped = tmp_path / "m.npz"
    process = subprocess.Popen([*args, "-o", str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not stopped.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    resumed = _run([MPIEXEC, "-n", 2, sys.executable, "-m", "numbacnn", "train", "--resume", stopped, "--data-dir",
                    datasets_dir, "--threads", 1])
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming custom layers" in resumed.stdout and "2 processes" in resumed.stdout
    whole = _run([*args, "-o", tmp_path / "whole.npz"])
    assert whole.returncode == 0, whole.stderr
    a, b = checkpoint.load(stopped)[0].get_weights(), checkpoint.load(tmp_path / "whole.npz")[0].get_weights()
    assert all(_close(a[i][k], b[i][k], 1e-3) for i in range(len(a)) for k in a[i])


@pytest.mark.data
def test_two_processes_on_the_cuda_simulator(tmp_path, datasets_dir):
    """Each process uses the GPU of its local rank (the simulator has one) and sums through host memory."""
    pytest.importorskip("numba.cuda")
    script = _script(tmp_path, count=16, batch=8)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    spec = "small:conv2d(2,3) relu flatten dense(10)"
    two = _run([MPIEXEC, "-n", 2, sys.executable, script, spec, "cuda", tmp_path / "gpu", datasets_dir], env=env)
    assert two.returncode == 0, two.stderr
    one = _run([sys.executable, script, spec, "cpu", tmp_path / "cpu", datasets_dir])
    assert one.returncode == 0, one.stderr
    rank0, rank1, cpu = (_arrays(tmp_path / name) for name in ("gpu.0.npz", "gpu.1.npz", "cpu.0.npz"))
    assert all(np.array_equal(a, b) for a, b in zip(rank0, rank1))
    assert all(_close(a, b, 1e-5) for a, b in zip(rank0, cpu))


@pytest.mark.data
def test_sigterm_to_mpiexec_saves_the_run_and_exits_143(tmp_path, datasets_dir):
    """SIGTERM (what timeout, Slurm and Kubernetes send) reaches every process through the launcher; they stop
    after the same step, the first one saves the run, and the job ends with 143."""
    output = tmp_path / "m.npz"
    args = [MPIEXEC, "-n", 2, *CLI[:-4], "-b", 10, "-e", 20, "--threads", 1, "--data-dir", datasets_dir, "-o", output]
    process = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("Training")
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Interrupted in epoch" in stderr and "Traceback" not in stderr
    assert output.with_suffix(".resume.npz").is_file()
