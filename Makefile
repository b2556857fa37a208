# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.scalewatch-installed
# the CPU wheel on disk; installed first so nothing pulls a CUDA build
TORCH  := torch==2.13.0
# Both Lightning packages, every front door's framework and every service, so the suite covers them all.
EXTRAS := wandb,notify,mlflow,trackers,lightning,pytorch-lightning,transformers,mmengine,ignite,examples,dev
# torch pinned again here: open_clip pulls torchvision, whose newest release would replace it
# with the newest CUDA build; the pin makes pip pick the torchvision made for this torch.
PINS   := $(TORCH) lightning==2.6.6 pytorch-lightning==2.6.6

export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export PYTHONUNBUFFERED := 1

.PHONY: demo test bench install clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Re-running with nothing changed installs nothing: the stamp is newer than its inputs.
# The registry's torchvision (for open_clip and timm) is a CUDA build whose C++ ops cannot load
# next to the CPU torch; the hook in .ci/venv lets its Python parts import (see that file).
COMPAT := .ci/venv/torchvision_cpu_compat.py .ci/venv/torchvision_cpu_compat.pth

$(STAMP): $(PY) setup.cfg pyproject.toml Makefile $(COMPAT)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]" $(PINS)
	$(PY) -c "import shutil, sys, sysconfig; [shutil.copy(f, sysconfig.get_paths()['purelib']) for f in sys.argv[1:]]" $(COMPAT)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest

# Interleaved A/B overhead, check-step scaling, memory and attention benchmarks (several
# minutes each; attention=True's three models took 7 min at --rounds 6, the default is 12);
# prints the tables, writes JSON and Markdown to benchmarks/results/ (git-ignored).
bench: $(STAMP)
	$(PY) -m benchmarks.run --out benchmarks/results

clean:
	rm -rf $(VENV) demo_runs lightning_logs .pytest_cache
