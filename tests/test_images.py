"""The Dockerfiles (no docker daemon runs here: they are linted and read, not built): hadolint clean, non-root,
no credentials, the torch of the Makefile, and the kfp version the compiled pipeline records."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from kubedistill.pipeline import images

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"trainer": ROOT / "images" / "trainer" / "Dockerfile", "components": ROOT / "images" / "components" / "Dockerfile"}
HADOLINT = Path(sys.executable).with_name("hadolint")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_is_clean(name):
    done = subprocess.run([str(HADOLINT), str(DOCKERFILES[name])], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_non_root_no_credentials_labels(name):
    text = DOCKERFILES[name].read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert not re.search(r"(?i)^(ENV|ARG)\s+\S*(TOKEN|PASSWORD|SECRET|CREDENTIALS|KEY)\S*", text, re.M)
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in text and ".json" not in text
    for label in ("org.opencontainers.image.source", "org.opencontainers.image.version"):
        assert label in text
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)  # the one pinned base, images/base-image


def test_the_base_image_is_pinned_by_digest():
    base = (ROOT / "images" / "base-image").read_text().strip()
    assert re.fullmatch(r"[a-z0-9./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base


def test_the_trainer_installs_the_makefiles_torch_and_runs_torchrun():
    makefile = (ROOT / "Makefile").read_text()
    torch_spec = re.search(r"^TORCH_SPEC \?= (.+)$", makefile, re.M).group(1).split()
    text = DOCKERFILES["trainer"].read_text()
    assert all(spec in text for spec in torch_spec)
    assert 'ENTRYPOINT ["torchrun"]' in text


def test_the_components_image_installs_the_kfp_the_pipeline_was_compiled_with():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["pipelines"]
    (kfp_pin,) = [e for e in extras if e.startswith("kfp")]
    pinned = re.fullmatch(r"kfp\[kubernetes\]==(\S+)", kfp_pin).group(1)
    compiled = yaml.safe_load_all((ROOT / "pipelines" / "distillation_pipeline.yaml").read_text())
    assert next(compiled)["sdkVersion"] == f"kfp-{pinned}"
    assert "whl[pipelines]" in DOCKERFILES["components"].read_text()  # the extra that pins it


def test_image_names_live_in_one_place():
    for path in [*DOCKERFILES.values(), ROOT / "Makefile", *ROOT.glob("components/*.py"), *ROOT.glob("src/kubedistill/kube/*.py")]:
        assert "ghcr.io/" not in path.read_text(), f"{path} names an image registry itself"
    assert images.TRAINER_IMAGE.endswith(f"/kubedistill-trainer:{images.TAG}")


def test_make_images_says_clearly_that_there_is_no_docker():
    done = subprocess.run(["make", "-s", "images", "DOCKER=/bin/false"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "no docker daemon here" in done.stderr
