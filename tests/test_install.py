"""Where compiled kernels go, and installs that must not trip over them.

Numba's ``cache=True`` once wrote compiled kernels into ``__pycache__`` folders inside the installed package.
pip did not know those files, so after the README's ``pip install .`` a later ``pip install -e`` in the same
environment left ``site-packages/numbacnn/`` behind as a namespace package that hid the editable install. Now
kernels go to the user's cache folder (``numbacnn.cache``); these tests install the package for real, in fresh
virtual environments, and check that nothing is written inside it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numba
import pytest

from numbacnn import cache

REPO_ROOT = Path(__file__).resolve().parent.parent

# What a user's checkout may hold besides the sources: none of it is needed to install, and some is large.
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", ".ci-cache", "__pycache__", ".pytest_cache", ".hypothesis", "build", "dist", "*.egg-info",
    "*.nbi", "*.nbc", "*.npz",
)

# Settings that would change what the installs under test do: CI sets the cache folders, and the tests must
# see a user's defaults.
DROPPED_ENV = ("NUMBA_CACHE_DIR", "NUMBACNN_CACHE_DIR", "NUMBACNN_DATA_DIR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")

# Printed by the installed package: where it was imported from and where its kernels go.
PROBE = (
    "import json, numba, numbacnn; "
    "print(json.dumps({'file': numbacnn.__file__, 'version': numbacnn.__version__, 'kernels': numba.config.CACHE_DIR}))"
)

# Run by a user who may not write into the installed package: a few training steps, then what it saw.
READ_ONLY_RUN = """
import json
from pathlib import Path
import numpy as np, numba, numbacnn

try:
    (Path(numbacnn.__file__).parent / "probe").touch()
    probe = "written"
except PermissionError:
    probe = "denied"
rng = np.random.default_rng(0)
images, labels = rng.random((64, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 64)
model = numbacnn.Sequential("relu flatten dense(10)").build(seed=0)
numbacnn.fit(model, numbacnn.Adam(lr=1e-3), images, labels, epochs=1, batch_size=32)
print(json.dumps({"probe": probe, "file": numbacnn.__file__, "kernels": numba.config.CACHE_DIR}))
"""

# -- helpers -------------------------------------------------------------------------------------------------


def run(args: list, env: dict[str, str], cwd: Path) -> str:
    """Runs ``args``, failing the test with their output unless they succeed; returns stdout and stderr."""
    done = subprocess.run([str(a) for a in args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited with {done.returncode}:\n{output}"
    return output


def user_env(home: Path) -> dict[str, str]:
    """The environment of a user whose home is ``home``, with no cache folders set. No bytecode is written: the
    linked packages (see ``link_dependencies``) belong to the environment running the tests."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(
        HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


def copy_project(dest: Path) -> Path:
    """A copy of the source tree to install from: building writes into the tree, never into the repository."""
    shutil.copytree(REPO_ROOT, dest, ignore=COPY_IGNORE)
    return dest


def site_packages(venv: Path) -> Path:
    """``venv``'s site-packages, as its own interpreter names it (this one's default scheme may not fit)."""
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    return Path(subprocess.run([venv / "bin" / "python", "-I", "-c", code], capture_output=True, text=True,
                               check=True).stdout.strip())


def link_dependencies(dest: Path) -> Path:
    """A folder of links to this environment's installed packages, less numbacnn, its plug-ins and editable
    finders: installing numba, llvmlite and numpy anew would fetch and unpack a few hundred megabytes each time.
    .pth files are skipped, as Python reads them only in site-packages itself."""
    dest.mkdir()
    outer = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    for entry in (e for folder in sorted(outer) for e in Path(folder).iterdir()):
        name = entry.name.lower()
        skip = name.startswith(("numbacnn", "__editable__")) or name.endswith(".pth") or name == "__pycache__"
        if not skip and not (dest / entry.name).exists():
            (dest / entry.name).symlink_to(entry)
    return dest


def make_venv(root: Path, env: dict[str, str]) -> Path:
    """A new virtual environment at ``root/venv`` whose site-packages holds no package yet: pip and numbacnn's
    dependencies come from ``link_dependencies``, through a .pth file."""
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], env, cwd=root)
    (site_packages(venv) / "outer_dependencies.pth").write_text(f"{link_dependencies(root / 'deps')}\n")
    return venv


def pip_install(venv: Path, env: dict[str, str], *args) -> None:
    """``pip install *args`` in ``venv``, with --no-deps: pip must never touch the linked packages, which belong
    to the environment running the tests. The build still fetches setuptools from the package index, as a
    user's does: a README environment holds none recent enough to build numbacnn."""
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", *args], env, venv.parent)


def probe(venv: Path, env: dict[str, str]) -> dict:
    """What the numbacnn in ``venv`` says about itself (see PROBE)."""
    return json.loads(run([venv / "bin" / "python", "-c", PROBE], env, venv.parent).splitlines()[-1])


def train(venv: Path, env: dict[str, str], data: Path, model: Path) -> None:
    """A short ``numbacnn train`` with ``venv``'s command, which must save the model."""
    args = ["train", "-m", "tiny", "--epochs", "1", "--limit", "512", "--data-dir", data, "-o", model]
    output = run([venv / "bin" / "numbacnn", *args], env, venv.parent)
    assert "Test accuracy:" in output and model.is_file(), output
    model.unlink()


def compiled_kernels(folder: Path) -> set[Path]:
    """Numba's cache files (index and compiled code) anywhere under ``folder``."""
    return {p for pattern in ("*.nbi", "*.nbc") for p in folder.rglob(pattern)}


def tree(folder: Path) -> dict[str, tuple[int, float]]:
    """Every file and folder under ``folder`` with its size and modification time, to see any change."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime) for p in folder.rglob("*")}


def set_writable(folder: Path, writable: bool) -> None:
    """Adds or removes everyone's write permission on ``folder`` and everything in it."""
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            bits = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
            path.chmod(mode | stat.S_IWUSR if writable else mode & ~bits)


# -- the README's two installs in one environment ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.data
def test_plain_and_editable_installs_share_one_venv_in_either_order(tmp_path, datasets_dir):
    """``pip install .`` and train, then ``pip install -e .`` (which once failed with an ImportError), then
    ``pip install .`` again: each time the command works and nothing is left in site-packages."""
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    src = copy_project(tmp_path / "src")
    venv = make_venv(tmp_path, env)
    site = site_packages(venv)
    model = tmp_path / "m.npz"

    pip_install(venv, env, src)
    seen = probe(venv, env)
    kernels = home / ".cache" / "numbacnn" / "numba" / seen["version"]
    assert (seen["file"], seen["kernels"]) == (str(site / "numbacnn" / "__init__.py"), str(kernels))
    train(venv, env, datasets_dir, model)
    first = compiled_kernels(kernels)
    assert first, f"no compiled kernels in {kernels}"
    assert not compiled_kernels(site)

    pip_install(venv, env, "-e", src)
    assert not (site / "numbacnn").exists(), "the plain install left a numbacnn folder that hides the editable one"
    assert probe(venv, env)["file"] == str(src / "numbacnn" / "__init__.py")
    summary = run([venv / "bin" / "numbacnn", "summary"], env, tmp_path)
    assert "conv2d(32)" in summary and "failed to load" not in summary, summary
    train(venv, env, datasets_dir, model)
    assert compiled_kernels(kernels) > first  # the editable sources are other files, compiled anew
    assert not compiled_kernels(site) and not compiled_kernels(src)

    # The other order: editable first, then the plain install over it.
    pip_install(venv, env, src)
    assert probe(venv, env)["file"] == str(site / "numbacnn" / "__init__.py")
    train(venv, env, datasets_dir, model)
    assert not compiled_kernels(site) and not compiled_kernels(src)


# -- a package folder the user cannot write to -----------------------------------------------------------


def bound_by_file_modes(args: list) -> list:
    """``args`` run so that file modes bind them. Root ignores modes through its capabilities: it runs them
    without any (still as root, so it can read the interpreter wherever root installed it)."""
    if os.geteuid() != 0:
        return args
    if shutil.which("setpriv") is None:
        reason = "running as root, and setpriv (util-linux) is missing to drop root's capabilities"
        pytest.fail(reason) if os.environ.get("CI") else pytest.skip(reason)
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *args]


@pytest.fixture
def read_only():
    """Removes write permission from the folders it is given, and gives it back afterwards so that the
    temporary folders can be removed."""
    folders = []

    def make(folder: Path) -> None:
        folders.append(folder)
        set_writable(folder, False)

    yield make
    for folder in folders:
        set_writable(folder, True)


@pytest.mark.slow
def test_read_only_install_trains_and_caches_kernels_in_the_user_folder(tmp_path, read_only):
    """A package folder the user cannot write to, as in a system-wide install: training works, the kernels
    are cached in the user's folder, and the package folder is left exactly as pip wrote it."""
    home = tmp_path / "home"
    home.mkdir()
    env = user_env(home)
    venv = make_venv(tmp_path, env)
    pip_install(venv, env, copy_project(tmp_path / "src"))
    package = site_packages(venv) / "numbacnn"
    read_only(package)
    before = tree(package)

    output = run(bound_by_file_modes([venv / "bin" / "python", "-c", READ_ONLY_RUN]), env, home)
    seen = json.loads(output.splitlines()[-1])
    assert seen["probe"] == "denied", "the package folder was writable: this test would prove nothing"
    assert seen["file"] == str(package / "__init__.py")
    kernels = Path(seen["kernels"])
    assert kernels.parent == home / ".cache" / "numbacnn" / "numba"
    assert compiled_kernels(kernels), f"no compiled kernels in {kernels}"
    assert tree(package) == before


# -- numbacnn.cache: which folder ------------------------------------------------------------------------


@pytest.fixture
def no_cache_env(monkeypatch, tmp_path):
    """No cache folder set, and a home of the test's own."""
    for name in ("NUMBA_CACHE_DIR", "NUMBACNN_CACHE_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()  # a home that exists: numbacnn never makes a missing one
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


def test_kernels_go_to_the_home_cache_by_default(no_cache_env):
    assert cache.kernel_cache_dir("1.2.3") == no_cache_env / "home" / ".cache" / "numbacnn" / "numba" / "1.2.3"


def test_xdg_cache_home_moves_the_kernels(no_cache_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(no_cache_env / "xdg"))
    assert cache.kernel_cache_dir("1.2.3") == no_cache_env / "xdg" / "numbacnn" / "numba" / "1.2.3"


def test_numbacnn_cache_dir_wins_over_xdg(no_cache_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(no_cache_env / "xdg"))
    monkeypatch.setenv("NUMBACNN_CACHE_DIR", str(no_cache_env / "mine"))
    assert cache.kernel_cache_dir("1.2.3") == no_cache_env / "mine" / "numba" / "1.2.3"


def test_numba_cache_dir_wins_over_all(no_cache_env, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(no_cache_env / "xdg"))
    monkeypatch.setenv("NUMBACNN_CACHE_DIR", str(no_cache_env / "mine"))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(no_cache_env / "numba"))
    assert cache.kernel_cache_dir("1.2.3") == no_cache_env / "numba"  # as given: no version added


def test_each_version_has_its_own_folder(no_cache_env):
    assert cache.kernel_cache_dir("1.0").parent == cache.kernel_cache_dir("2.0").parent
    assert cache.kernel_cache_dir("1.0") != cache.kernel_cache_dir("2.0")


@pytest.fixture
def unwritable_cache(no_cache_env, monkeypatch):
    """A cache folder that cannot be made (a file is in the way, which stops root too), and a temporary
    directory of the test's own."""
    blocker = no_cache_env / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("NUMBACNN_CACHE_DIR", str(blocker))
    temp = no_cache_env / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("USER", "someone")
    return temp


def test_unwritable_cache_falls_back_to_a_private_temp_folder(unwritable_cache):
    folder = cache.kernel_cache_dir("1.2.3")
    assert folder == unwritable_cache / "numbacnn-someone" / "numba" / "1.2.3"
    assert stat.S_IMODE((unwritable_cache / "numbacnn-someone").stat().st_mode) & 0o077 == 0


def test_temp_fallback_others_may_write_to_is_not_used(unwritable_cache):
    # Numba unpickles what it finds in its cache: a folder open to others could run their code.
    shared = unwritable_cache / "numbacnn-someone"
    shared.mkdir()
    shared.chmod(0o777)
    folder = cache.kernel_cache_dir("1.2.3")
    assert folder.parent.parent.parent == unwritable_cache and shared not in folder.parents
    assert stat.S_IMODE(folder.parent.parent.stat().st_mode) == 0o700


def test_use_kernel_cache_points_numba_there(no_cache_env, monkeypatch):
    # Restored afterwards: the rest of the session keeps its own folder.
    monkeypatch.setattr(numba.core.config, "CACHE_DIR", numba.core.config.CACHE_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(no_cache_env / "xdg"))
    folder = cache.use_kernel_cache("1.2.3")
    assert folder == no_cache_env / "xdg" / "numbacnn" / "numba" / "1.2.3"
    assert os.environ["NUMBA_CACHE_DIR"] == numba.core.config.CACHE_DIR == str(folder)
