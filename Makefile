# make demo : run the main job (toy-world demo) | make test : unit tests + every notebook in CI mode
# Both create .venv on first use and reuse it until pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint notebooks clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deop-lite demo

test: $(STAMP)
	$(BIN)/ruff check deop_lite tests conftest.py
	DEOP_CI=1 MPLBACKEND=Agg $(BIN)/pytest -n logical --dist loadscope

# The notebooks' source is notebooks/scripts/*.py (jupytext percent scripts, paired with the .ipynb files by
# jupytext.toml): edit either side. This syncs each pair, re-executes every notebook in full (non-CI) mode,
# stores its outputs with widget state stripped, and syncs the scripts again.
notebooks: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.ipynb
	for nb in notebooks/*.ipynb; do \
		$(BIN)/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=3600 $$nb || exit 1; \
		$(BIN)/python tools/strip_widget_state.py $$nb; \
	done
	$(BIN)/jupytext --sync notebooks/*.ipynb

clean:
	rm -rf $(VENV) outputs .pytest_cache
