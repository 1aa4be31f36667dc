# The README's two commands:
#   make demo   set up .venv, install, train on Fashion-MNIST for ~10 min on a CPU, report accuracy
#   make test   set up if needed, run the test suite
VENV   ?= .venv
PYTHON ?= python3
# torch/torchvision to install first; on other machines: make setup TORCH="torch torchvision"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PY      = $(VENV)/bin/python
FMNIST  = /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Fashion-MNIST from Debian's package (no internet needed); skipped where apt is absent.
data:
	@if [ ! -d $(FMNIST) ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist || \
		echo "warning: could not install dataset-fashion-mnist; pass --data DIR to googlenet train"; \
	fi

DEMO = runs/demo

# A second `make demo` does not fail on the existing run: a finished one is reported (delete it to
# train again), a stopped one (Ctrl-C, kill) is continued from its last checkpoint.
demo: setup data
	@if [ -f $(DEMO)/model.safetensors ]; then \
		echo "$(DEMO) already holds a trained model: $(DEMO)/model.safetensors (plots and metrics.csv beside it)"; \
		echo "evaluate it with: $(VENV)/bin/googlenet eval $(DEMO)/model.safetensors --limit-test 1000"; \
		echo "train again with: rm -rf $(DEMO) && make demo"; \
	elif [ -f $(DEMO)/last.pt ]; then \
		echo "continuing the stopped run in $(DEMO)"; \
		$(VENV)/bin/googlenet train --resume $(DEMO); \
	else \
		$(VENV)/bin/googlenet train --model googlenet_cifar_fast --budget 10m --batch-size 32 --lr 0.05 --out $(DEMO); \
	fi

test: setup data
	$(PY) -m pytest

bench: setup
	$(VENV)/bin/googlenet bench --device cpu

clean:
	rm -rf $(VENV) runs .pytest_cache
