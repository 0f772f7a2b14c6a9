"""The exported backbone: a plain state_dict that torchvision's (or timm's) own model loads with strict=True,
using the one-liner the export writes next to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

import kubedistill
from kubedistill.models.export import StudentMetadata, export_student
from kubedistill.models.students import build_student


def _load_as_the_json_says(exported: Path, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """Run the ``backbone.load`` line of student.json, in the export folder, with torch/torchvision/timm only."""
    import timm

    meta = json.loads(exported.with_suffix(".json").read_text())
    namespace = {"torch": torch, "torchvision": torchvision, "timm": timm}
    monkeypatch.chdir(exported.parent)
    exec(meta["backbone"]["load"], namespace)  # the documented line, verbatim
    return namespace["model"].eval()


def test_trained_backbone_loads_strictly_into_torchvision_and_gives_the_same_features(tmp_path, image_folder, monkeypatch):
    """The export of a run in the precision this CPU trains in (precision=auto): plain contiguous tensors that load
    strictly into torchvision's model. With native bf16 that run keeps the student channels-last, whose strides
    must not reach the file; without it the run is fp32."""
    out = tmp_path / "run"
    kubedistill.train(out=out, data=image_folder, model="torchvision/resnet18", epochs=1, max_steps=2,
                      method_args={"teacher": "dinov2/vits14", "teacher_weights": "none"}, batch_size=8,
                      transform_args={"image_size": [28, 28]}, num_workers=0, accelerator="cpu",
                      precision="auto")  # fmt: skip
    path = out / "exported" / "resnet18_backbone.pt"
    state = torch.load(path, weights_only=True)
    assert all(t.is_contiguous() for t in state.values())
    assert not any(k.startswith("fc.") for k in state)

    # The README's fine-tuning form: the full model with its own classifier, strict=False misses only fc.
    full = torchvision.models.resnet18(num_classes=10)
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert (sorted(missing), unexpected) == (["fc.bias", "fc.weight"], [])

    model = _load_as_the_json_says(out / "exported" / "student.pt", monkeypatch)
    student = kubedistill.load_student(out / "exported" / "student.pt")  # an absolute path: cwd is exported/
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(images), student(images), atol=1e-6)


@pytest.mark.parametrize("name", ["torchvision/mobilenet_v3_small", "torchvision/convnext_tiny",
                                  "torchvision/vgg11", "torchvision/googlenet", "timm/mobilenetv3_small_100"])  # fmt: skip
def test_every_cut_loads_with_its_one_liner(tmp_path, name, monkeypatch):
    """Each way a classifier is removed (an identity, a kept prefix, global pooling, two attributes, timm's conv
    head) is described by a line after which the library's own model loads the backbone strictly."""
    torch.manual_seed(0)
    student = build_student(name, image_size=(64, 64)).eval()
    metadata = StudentMetadata(name, student.feature_dim, (64, 64), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    written = export_student(student, metadata, tmp_path / "student.pt")
    assert [p.name for p in written] == ["student.pt", "student.json", f"{name.split('/')[1]}_backbone.pt"]
    model = _load_as_the_json_says(tmp_path / "student.pt", monkeypatch)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(images).flatten(1), student(images), atol=1e-5)
