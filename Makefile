# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out

.PHONY: demo test test-slow lint bench fixtures clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

demo: $(BIN)/.installed
	@mkdir -p $(OUT)
	$(BIN)/poolcli inspect fixtures/digits-cnn.safetensors
	$(BIN)/poolcli fit-pooling fixtures/digits-cnn.safetensors --site @down3 --data digits:train --alpha 1 -o $(OUT)/pool.safetensors --plot $(OUT)/maps.png
	$(BIN)/poolcli convert fixtures/digits-cnn.safetensors --swap @down3=learned:$(OUT)/pool.safetensors -o $(OUT)/learned.safetensors
	$(BIN)/poolcli finetune $(OUT)/learned.safetensors --data digits:train --val digits:test --epochs 10 --shift 2 -o $(OUT)/learned-ft.safetensors
	$(BIN)/poolcli evaluate fixtures/digits-cnn.safetensors $(OUT)/learned-ft.safetensors fixtures/digits-resnet.safetensors --data digits:test --metrics classification,retrieval,separability --plot $(OUT)/plots --json > $(OUT)/report.json
	$(BIN)/poolcli evaluate $(OUT)/learned-ft.safetensors --baseline fixtures/digits-cnn.safetensors --data digits:test --metrics robustness --max-per-class 10 --severities 1,3,5 --perturbations translate,rotate,gaussian_noise --plot $(OUT)/plots --json > $(OUT)/robustness.json
	@echo "demo: wrote $(OUT)/pool.safetensors, $(OUT)/maps.png, $(OUT)/learned-ft.safetensors, $(OUT)/report.json, $(OUT)/robustness.json, $(OUT)/plots/" >&2

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 -m "not slow" --durations=10

# the slow part (model zoo: ~65 timm/torchvision architectures through convert); .ci/run runs it after `make test`
test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 -m slow --durations=10

# ruff: lint and formatting at line length 120 (pyproject.toml); .ci/run runs it first
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(BIN)/.installed
	for f in benchmarks/*_bench.py; do $(BIN)/python $$f || exit 1; done

fixtures: $(BIN)/.installed
	$(BIN)/python scripts/make_fixtures.py

clean:
	rm -rf $(OUT) .pytest_cache
