# Two commands on a fresh machine:  `make demo` (FedSM on the synthetic demo federation)  and  `make test`.
PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
# CPU machines: torch==2.13.0 installs the CPU build from a local wheel here; elsewhere use
# TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" (CPU) or plain "torch" (CUDA).
TORCH_SPEC  ?= torch==2.13.0
DEMO_ROUNDS ?= 10
DEMO_SIZE   ?= 64
CLIENTS     := client_I2CVB,client_MSD,client_NCI_ISBI_3T
DATA        := data_preparation
WORK        := workspaces

SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: venv demo demo-fedavg demo-data test test-unit test-deploy test-bench clean

# the venv holds the medfl package installed in editable mode (pyproject.toml; its dependencies: requirements.txt)
venv: $(BIN)/nvflare
$(BIN)/nvflare: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[test,tracking]"
	touch $@

# the demo data, and the site policy of the simulator's default workspace (./simulator_workspace), so that the
# README's `nvflare simulator jobs/... -c ... -t 3` may build medfl's classes
demo-data: $(DATA)/datalist_2D/client_All.json simulator_workspace/local/resources.json
simulator_workspace/local/resources.json: | venv
	$(BIN)/python -m medfl site-policy simulator_workspace
$(DATA)/datalist_2D/client_All.json: | venv
	$(BIN)/python $(DATA)/make_demo_prostate.py --output_dir $(DATA)/raw/demo_prostate
	$(BIN)/python $(DATA)/prepare_prostate_2d.py --source saml --input_dir $(DATA)/raw/demo_prostate \
		--output_dir $(DATA) --size $(DEMO_SIZE)

# Run a job of jobs/ as shipped on the demo federation, except for the number of rounds (DEMO_ROUNDS), the image
# size (DEMO_SIZE) and one torch thread per client; then test it (the selector's accuracy and routing for FedSM)
# and plot its curves.
define run_demo
	@echo "$(1): the job as shipped (jobs/$(1)) except num_rounds=$(DEMO_ROUNDS), image_size=$(DEMO_SIZE), num_threads=1"
	$(BIN)/python tools/job_variant.py jobs/$(1) $(WORK)/jobs/$(1) --server num_rounds=$(DEMO_ROUNDS) \
		--train num_threads=1 image_size=$(DEMO_SIZE)
	rm -rf $(WORK)/$(1)
	$(BIN)/python -m medfl site-policy $(WORK)/$(1)
	DATASET_ROOT=$(CURDIR)/$(DATA) PATH=$(CURDIR)/$(BIN):$$PATH \
		nvflare simulator $(WORK)/jobs/$(1) -w $(WORK)/$(1) -c $(CLIENTS) -t 3 2>&1 | tee $(WORK)/$(1).log \
		| grep --line-buffered -E "round [0-9]+/[0-9]+ (started|finished)|validation of received|new best|ERROR"
	$(BIN)/python result_stat/prostate_2d_test_only.py --models_dir $(WORK)/$(1)/server/simulate_job/app_server \
		--data_root $(DATA)/dataset_2D --datalist $(DATA)/datalist_2D
	$(BIN)/python result_stat/plot_tensorboard_events.py --workspace $(WORK)/$(1) --output results/$(1)_val.png
endef

demo: demo-data
	$(call run_demo,fedsm_prostate)

demo-fedavg: demo-data
	$(call run_demo,fedavg_prostate)

# unit tests and the jobs end to end in the simulator, in TEST_WORKERS pytest processes (pytest-xdist): a simulator
# run keeps 2 cores only ~60 % busy (start-up waits), so 2 workers took 1334 s here against 2514 s in one (that one
# sharing the machine with benchmarks)
TEST_WORKERS ?= 2
test: venv
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not deploy and not bench"

test-unit: venv
	$(BIN)/python -m pytest -q -m "not deploy and not bench and not e2e"

# the jobs in POC / provisioned deployments on loopback (CI runs this after `make test`), each on its own free ports,
# in DEPLOY_WORKERS pytest processes: the deployments mostly wait (7.5 min of CPU in 21 min with 2 workers, 1254 s
# against 2272 s in one beside benchmarks); 4 workers overloaded 2 cores (`nvflare poc start` ran past 300 s, 4 of
# 17 failed)
DEPLOY_WORKERS ?= 2
test-deploy: venv
	$(BIN)/python -m pytest -q -n $(DEPLOY_WORKERS) -m deploy

# the benchmark and comparison commands at a tiny budget (CI runs this too)
test-bench: venv
	$(BIN)/python -m pytest -q -m bench

clean:
	rm -rf $(WORK) results $(DATA)/dataset_2D $(DATA)/datalist_2D $(DATA)/raw
