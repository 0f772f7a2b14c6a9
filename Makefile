# kubedistill — run `make help` for the targets. Every target that needs Python sets up .venv itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, pinned, so that pip never resolves a multi-GB build of its own choosing.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# Meta's reference DINOv2 code, used only by the teacher parity test; its metadata pins torch 2.0 and
# xformers, so it is installed without dependencies (the model code needs only torch).
DINOV2_REF ?= dinov2==0.0.1.dev2
SETUP_STAMP := $(VENV)/.stamp-setup
# The benchmark venv for LightlyTrain (make bench-speed): the newest release that works with TORCH_SPEC.
LIGHTLY_VENV ?= benchmarks/.venv-lightly
LIGHTLY_SPEC ?= lightly-train==0.18.0
LIGHTLY_STAMP := $(LIGHTLY_VENV)/.stamp-lightly
PYTEST_ARGS ?=
# CPU=avx2 runs tests, the demo and the benchmarks as on a CPU with AVX2 only (no AVX-512, no native bf16): oneDNN
# and ATen kernels are capped at AVX2, so bf16 is emulated and precision=auto picks fp32. Empty: the CPU as it is.
# torch.compile's kernels go to a cache of their own then: inductor's cache does not tell the two apart, and a
# kernel cached under the cap aborted the process when loaded without it (measured, torch 2.14.1).
CPU ?=
AVX2_ENV := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 TORCHINDUCTOR_CACHE_DIR=$${TMPDIR:-/tmp}/torchinductor_$$(id -un)_avx2
RUN_ENV := $(if $(filter avx2,$(CPU)),$(AVX2_ENV),$(if $(CPU),$(error CPU=$(CPU): only CPU=avx2 or empty),))

.DEFAULT_GOAL := help
.PHONY: help setup test test-slow lint compile demo wheel images push submit schedule bench-train bench-probe bench-quality bench-speed bench-logging clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

setup: $(SETUP_STAMP) ## Create/update .venv with the project and its test extras (quick when nothing changed)

$(SETUP_STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[pipelines,test,gpu]'
	$(PY) -m pip install -q --no-deps $(DINOV2_REF)
	@touch $@

test: setup ## Run the test suite (slow tests excluded; CPU=avx2: as on a CPU without AVX-512 or native bf16)
	$(RUN_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-slow: setup ## Run only the slow tests
	$(RUN_ENV) $(PY) -m pytest -m slow $(PYTEST_ARGS)

lint: setup ## Lint with the pinned ruff
	$(VENV)/bin/ruff check src tests benchmarks components pipelines

compile: setup ## Compile the pipeline to pipelines/distillation_pipeline.yaml (committed; a test checks drift); REGISTRY=... (or KUBEDISTILL_IMAGE_REGISTRY) names both images' registry
	KUBEDISTILL_IMAGE_REGISTRY=$(or $(REGISTRY),$(KUBEDISTILL_IMAGE_REGISTRY)) $(PY) -m pipelines.distillation_pipeline

demo: setup ## Run the compiled pipeline end to end with kfp.local, a local MLflow and a known teacher (~5 min)
	$(RUN_ENV) $(PY) -m pipelines.demo $(DEMO_ARGS)

# Image names and tags come from kubedistill/pipeline/images.py (REGISTRY overrides the registry, as
# KUBEDISTILL_IMAGE_REGISTRY does for `make compile`); the base image is pinned by digest in images/base-image.
DOCKER ?= docker
REGISTRY ?=
IMAGES_PY = KUBEDISTILL_IMAGE_REGISTRY=$(REGISTRY) $(PY) -c "from kubedistill.pipeline import images as i; print(i.$(1))"
VERSION_PY = $(PY) -c "import kubedistill; print(kubedistill.__version__)"

wheel: setup ## Build dist/kubedistill-<version>-py3-none-any.whl (what both images install)
	rm -f dist/kubedistill-*.whl
	$(PY) -m pip wheel -q --no-deps -w dist .

images: setup ## Build the trainer and components images (needs a docker daemon; says so when there is none)
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images: no docker daemon here ('$(DOCKER) info' failed). Build the images where docker runs (a workstation, CI), then make push REGISTRY=..." >&2; exit 1; }
	$(MAKE) wheel
	$(DOCKER) build -f images/trainer/Dockerfile --build-arg BASE_IMAGE=$$(cat images/base-image) \
		--build-arg VERSION=$$($(VERSION_PY)) -t $$($(call IMAGES_PY,TRAINER_IMAGE)) .
	$(DOCKER) build -f images/components/Dockerfile --build-arg BASE_IMAGE=$$(cat images/base-image) \
		--build-arg VERSION=$$($(VERSION_PY)) -t $$($(call IMAGES_PY,COMPONENTS_IMAGE)) .

push: images ## Push both images: make push REGISTRY=europe-docker.pkg.dev/PROJECT/REPO (then compile with it)
	@test -n "$(REGISTRY)" || { echo "make push: give REGISTRY=<registry/path> (and compile the pipeline with KUBEDISTILL_IMAGE_REGISTRY set to it)" >&2; exit 2; }
	$(DOCKER) push $$($(call IMAGES_PY,TRAINER_IMAGE))
	$(DOCKER) push $$($(call IMAGES_PY,COMPONENTS_IMAGE))

submit: setup ## Run the pipeline on $$KFP_ENDPOINT and wait; exit 0 only if it SUCCEEDED (SUBMIT_ARGS="--params-file ... --namespace ...")
	$(PY) -m pipelines.submit $(SUBMIT_ARGS)

schedule: setup ## Upload the pipeline as a new version and (re)create the nightly run (SCHEDULE_ARGS="--cron ... --namespace ...")
	$(PY) -m pipelines.schedule $(SCHEDULE_ARGS)

bench-train: setup ## Training throughput and peak memory, fp32 vs bf16 teacher (see BENCHMARKS.md)
	$(RUN_ENV) $(PY) benchmarks/train_speed.py

bench-probe: setup ## Linear probe + kNN speed and accuracy vs scikit-learn, 10k features (see BENCHMARKS.md)
	$(RUN_ENV) $(PY) benchmarks/probe_speed.py

bench-quality: setup ## Quality: random vs distilled student vs teacher, linear probe on rendered digits (~15 min)
	$(RUN_ENV) $(PY) benchmarks/quality/benchmark.py $(BENCH_QUALITY_ARGS)

bench-speed: setup $(LIGHTLY_STAMP) ## Speed: kubedistill vs LightlyTrain distillationv1 in one run (~15 min)
	$(RUN_ENV) $(PY) benchmarks/speed_vs_lightly.py $(BENCH_SPEED_ARGS)

bench-logging: setup ## MLflow logging: per-step cost, healthy vs 2 s server, synchronous vs queued (~2 min)
	$(PY) benchmarks/mlflow_logging.py $(BENCH_LOGGING_ARGS)

# LightlyTrain in its own venv (its dependencies must not leak into .venv), torch pinned the same way.
$(LIGHTLY_STAMP): Makefile
	@test -x $(LIGHTLY_VENV)/bin/python || $(PYTHON) -m venv $(LIGHTLY_VENV)
	$(LIGHTLY_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(LIGHTLY_VENV)/bin/python -m pip install -q $(LIGHTLY_SPEC)
	$(LIGHTLY_VENV)/bin/python -m pip check
	@touch $@

clean: ## Remove build outputs and the demo's output (keeps .venv)
	rm -rf out build dist src/*.egg-info .pytest_cache .ruff_cache
