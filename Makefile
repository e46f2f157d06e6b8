# cryopipe: `make demo` runs the whole workflow on the embedded demo; `make test` runs the test suite;
# `make profiles` (once per user) lets `snakemake --profile slurm` (or local) find this checkout's profiles.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all

# Snakemake 9 looks for `--profile NAME` in the current folder, then in its user configuration folder, then the
# site one (platformdirs: $XDG_CONFIG_HOME/snakemake, else ~/.config/snakemake on Linux). Asked of the Python that
# runs snakemake when it can answer; the Linux rule otherwise.
PROFILES_PY = import platformdirs; print(platformdirs.user_config_dir("snakemake", "snakemake"))
SNAKEMAKE_PROFILES ?= $(shell for py in $(BIN)/python "$$(command -v snakemake | xargs -r dirname)/python" $(PYTHON); do \
	"$$py" -c '$(PROFILES_PY)' 2>/dev/null && exit; done; echo "$${XDG_CONFIG_HOME:-$$HOME/.config}/snakemake")
PROFILE_PREFIX ?=

.PHONY: demo test lint gpu-test clean profiles

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES)

# Test files run on TEST_WORKERS processes (pytest-xdist; a file's tests stay together, sharing its fixtures).
TEST_WORKERS ?= 2

test: $(BIN)/.installed
	$(BIN)/ruff check .
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

gpu-test: $(BIN)/.installed
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -m gpu

lint: $(BIN)/.installed
	$(BIN)/ruff check .

# Links (not copies: edits to profiles/ apply at once) named local and slurm, or $(PROFILE_PREFIX)local/slurm.
# Never replaces a profile of yours: a name already taken by something else stops it with a message.
profiles:
	@mkdir -p "$(SNAKEMAKE_PROFILES)"
	@status=0; for name in local slurm; do \
		link="$(SNAKEMAKE_PROFILES)/$(PROFILE_PREFIX)$$name"; target="$(CURDIR)/profiles/$$name"; \
		if [ -e "$$link" ] || [ -L "$$link" ]; then \
			if [ "$$(readlink "$$link")" = "$$target" ]; then echo "$$link -> $$target (already there)"; continue; fi; \
			echo "make profiles: $$link exists and is not this checkout's profile; remove it, or run" \
				"make profiles PROFILE_PREFIX=cryopipe- (then: snakemake --profile cryopipe-$$name)" >&2; status=2; continue; \
		fi; \
		ln -s "$$target" "$$link" && echo "$$link -> $$target"; \
	done; exit $$status

clean:
	rm -rf results .snakemake
