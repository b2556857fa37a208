"""The wheel installs one import package, `scalewatch`, and nothing bare at the top level."""
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # Build from a copy of what the package is made of, so no stale build/ of the checkout leaks in.
    src = tmp_path_factory.mktemp("src")
    for name in ("monitor", "callbacks", "dashboards"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # --no-isolation: build with the setuptools already in the venv (no download)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                   check=True, capture_output=True, text=True, cwd=str(out))
    wheels = list(out.glob("scalewatch-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_holds_only_the_scalewatch_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"scalewatch", next(t for t in top if t.endswith(".dist-info"))}
    for sub in ("monitor", "callbacks", "dashboards"):
        assert f"scalewatch/{sub}/__init__.py" in names
        assert not any(n.startswith(f"{sub}/") for n in names)
    assert "scalewatch/monitor/attention_bias.py" in names
    assert not any(n.startswith(("tests/", "examples/", "scalewatch/tests")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "scalewatch = scalewatch.dashboards.cli:main" in entry_points


def test_wheel_installs_and_imports(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, text=True)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") == ["scalewatch"]
    code = ("import scalewatch.monitor as m, scalewatch.callbacks as c, scalewatch.dashboards as d;"
            "print(m.__file__); print(c.ScaleMonitor.__name__, m.AttentionBiasGenerator.__name__)")
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env,
                         cwd=str(tmp_path)).stdout
    assert out.splitlines()[0].startswith(str(target))
    assert "ScaleMonitor AttentionBiasGenerator" in out


def test_editable_install_imports_from_the_checkout():
    import scalewatch.monitor

    assert Path(scalewatch.monitor.__file__).resolve().parent == ROOT / "monitor"
    # no bare top-level module leaks from the checkout into other working directories
    out = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('monitor'), u.find_spec('callbacks'))"],
                         capture_output=True, text=True, cwd="/", check=True).stdout
    assert out.strip() == "None None"


def test_layering_dashboards_never_import_callbacks():
    def imports(py):
        return set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", py.read_text(), flags=re.M))

    for py in (ROOT / "dashboards").glob("*.py"):
        assert not any(m.startswith("scalewatch.callbacks") for m in imports(py)), py
    for py in (ROOT / "monitor").glob("*.py"):
        bad = {m for m in imports(py) if m.split(".")[0] in ("pytorch_lightning", "lightning", "matplotlib", "wandb")
               or m.startswith(("scalewatch.dashboards", "scalewatch.callbacks"))}
        assert not bad, (py, bad)


def test_the_command_line_starts_without_torch_or_matplotlib():
    # `scalewatch report/watch` only read JSON lines: they must not pay torch's ~1 s import
    code = "import sys, scalewatch.dashboards.cli; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plain_install_needs_no_trainer_and_each_framework_is_an_extra(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = re.findall(r"^Requires-Dist: (.+)$", meta, flags=re.M)

    def name(req: str) -> str:
        return re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower()

    assert sorted(name(r) for r in requires if "extra ==" not in r) == ["crc32c", "matplotlib", "rich", "tensorboard",
                                                                              "torch"]
    extras = {}
    for r in requires:
        if "extra ==" in r:
            extras.setdefault(re.search(r'extra == "([^"]+)"', r).group(1), set()).add(name(r))
    assert extras["lightning"] == {"lightning"} and extras["pytorch-lightning"] == {"pytorch-lightning"}
    assert {"transformers", "mmengine", "wandb", "notify"} <= set(extras)


def test_the_engine_knows_no_trainer():
    # ScaleWatcher and everything it imports must work in a plain loop with no framework installed
    for name in ("watcher.py", "watch_settings.py", "logger_sinks.py", "alert_sinks.py", "history_recorder.py"):
        text = (ROOT / "callbacks" / name).read_text()
        found = set(re.findall(r"^\s*(?:from|import)\s+([\w.]+)", text, flags=re.M))
        bad = {m for m in found if m.split(".")[0] in ("pytorch_lightning", "lightning", "transformers", "mmengine")}
        assert not bad, (name, bad)
