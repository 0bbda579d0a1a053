# The two commands of the README. Both create .venv from the pinned requirements on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Records: $ECG_DATA, else ../shared/data beside the project, else a small download into data/.
ECG_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(abspath data/cpsc2018-subset))
export ECG_DATA
DEMO_OUT ?= runs/demo
DEMO_ROUNDS ?= 10
# Where the fallback download comes from (empty: PhysioNet); tests point it at 127.0.0.1.
DEMO_BASE_URL ?=
# One client per site on the shared multi-hospital records; a downloaded single-site subset is split IID.
# The demo trains on a per-site sample (at most DEMO_PER_SITE records of each site) to stay within minutes.
DEMO_PER_SITE ?= 200
DEMO_FED_FLAGS ?= $(if $(wildcard ../shared/data),--partition site,--partition iid --clients 3) --max-per-site $(DEMO_PER_SITE)

.PHONY: demo test venv apt-test clean model

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# System packages the tests need (xvfb, xauth, libmtdev1, Mesa): installed by .ci/apt-test.sh when any is
# missing, and always with FORCE=1 (.ci/run passes it: CI runs the install commands on every run).
FORCE ?=
apt-test:
	@FORCE="$(FORCE)" bash .ci/apt-test.sh

demo: venv
	@if [ ! -d "$(ECG_DATA)" ]; then \
	  echo "No records at $(ECG_DATA): downloading a small CPSC2018 subset from PhysioNet"; \
	  $(PY) -m cpsc2018.download --source cpsc2018 --limit 300 --dest "$(ECG_DATA)" $(if $(DEMO_BASE_URL),--base-url "$(DEMO_BASE_URL)") || exit 2; \
	fi
	@echo "== 1/4 what is in $(ECG_DATA)"
	$(PY) -m cpsc2018.inspect --data "$(ECG_DATA)" --json "$(DEMO_OUT)/inspect.json" --preprocess
	@echo "== 2/4 federated training (Flower simulation): one client per hospital site, on a sample of at most $(DEMO_PER_SITE) records per site (DEMO_PER_SITE=0 for all)"
	$(PY) -m federated.train --mode federated $(DEMO_FED_FLAGS) --rounds $(DEMO_ROUNDS) --data "$(ECG_DATA)" --out "$(DEMO_OUT)/federated"
	@echo "== 3/4 int8 ONNX export, calibrated on training records, gated on validation records"
	$(PY) -m export --checkpoint "$(DEMO_OUT)/federated/best.pt" --calibration-data "$(ECG_DATA)" --out "$(DEMO_OUT)/export"
	@echo "== 4/4 classify a held-out record with the int8 model, as the phone app does"
	$(PY) -m mobile_app.classify --model "$(DEMO_OUT)/export/model.int8.onnx" --held-out "$(ECG_DATA)"

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test: venv apt-test
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The pipeline shipped in mobile_app/assets, rebuilt from $(ECG_DATA) with fixed seeds and pinned versions:
# resnet1d18 trained with the recipe benchmarks/compare_models.py chose on the folds' validation parts
# (two windows per record per epoch, weight EMA, augmentation, early stopping), exported to int8 and
# gated on its validation records; then gradient boosting on the numpy expert features, fused with the
# network (weight and thresholds chosen on the same validation records) by `python -m export.pipeline`,
# whose report is scored through the app's own code; then the reduced-lead network (python -m export.leads).
# About 30-40 min on 2 CPU cores.
SHIP_MODEL ?= resnet1d18
SHIP_FLAGS ?= --epochs 16 --patience 4 --windows-per-record 2 --ema 0.998 --augment
SHIP_SEED ?= 1
SHIP_OUT ?= runs/ship
# Reduced lead sets (issue 21): the shipped network fine-tuned with random lead sets (any subset: 6, 4 and
# 3 leads, dead leads) and for lead I and for I+II alone (single-lead devices, and two-lead ones such as
# the six-lead cards that derive III, aVR, aVL, aVF from I and II: there a dedicated network beat the
# any-subset one by more than the spread between folds), the recipe benchmarks/leads.py cross-validated;
# no weight averaging (EMA kept a third of the 12-lead weights after 5 epochs: -0.10 AUROC on one lead).
SHIP_LEADS_FLAGS ?= --epochs 5 --patience 3 --lr 3e-4 --windows-per-record 2 --ema 0 --augment
SHIP_LEAD_SETS ?= 1 2
model: venv
	$(PY) -m federated.train --mode central --model $(SHIP_MODEL) $(SHIP_FLAGS) --seed $(SHIP_SEED) --data "$(ECG_DATA)" --out $(SHIP_OUT) --resume
	$(PY) -m export --checkpoint $(SHIP_OUT)/best.pt --calibration-data "$(ECG_DATA)" --out $(SHIP_OUT)/export
	$(PY) -m export.pipeline --checkpoint $(SHIP_OUT)/best.pt --network $(SHIP_OUT)/export/model.int8.onnx --data "$(ECG_DATA)" --out $(SHIP_OUT)/pipeline
	$(PY) -m federated.train --mode central --model $(SHIP_MODEL) --init $(SHIP_OUT)/best.pt --lead-masking $(SHIP_LEADS_FLAGS) --seed $(SHIP_SEED) --data "$(ECG_DATA)" --out $(SHIP_OUT)_leads --resume
	for s in $(SHIP_LEAD_SETS); do $(PY) -m federated.train --mode central --model $(SHIP_MODEL) --init $(SHIP_OUT)/best.pt --leads $$s $(SHIP_LEADS_FLAGS) --seed $(SHIP_SEED) --data "$(ECG_DATA)" --out $(SHIP_OUT)_lead$$s --resume || exit 1; done
	for r in $(SHIP_OUT)_leads $(foreach s,$(SHIP_LEAD_SETS),$(SHIP_OUT)_lead$(s)); do $(PY) -m export --checkpoint $$r/best.pt --calibration-data "$(ECG_DATA)" --out $$r/export || exit 1; done
	$(PY) -m export.leads --pipeline $(SHIP_OUT)/pipeline --leads-network $(SHIP_OUT)_leads/export/model.int8.onnx $(foreach s,$(SHIP_LEAD_SETS),--leads-network $(SHIP_OUT)_lead$(s)/export/model.int8.onnx) --data "$(ECG_DATA)"
	cp $(SHIP_OUT)/pipeline/model.int8.onnx $(SHIP_OUT)/pipeline/features.onnx $(SHIP_OUT)/pipeline/model.leads*.int8.onnx mobile_app/assets/
	cp $(SHIP_OUT)/pipeline/leads_report.md mobile_app/assets/leads_report.md
	cp $(SHIP_OUT)/pipeline/report.md mobile_app/assets/model_report.md
	cp $(SHIP_OUT)/export/report.md mobile_app/assets/network_export_report.md

clean:
	rm -rf $(VENV) runs .pytest_cache
