import pytest
import torch

from kubedistill.errors import ConfigError
from kubedistill.models.students import build_student, check_student_name, torchvision_names

# One of each classifier layout torchvision uses: fc, classifier[-1], heads.head, head, a conv classifier,
# auxiliary-logit models.
REPRESENTATIVE = {
    "resnet18": 512,
    "mobilenet_v3_small": 1024,
    "efficientnet_b0": 1280,
    "squeezenet1_1": 512,
    "googlenet": 1024,
    "vit_b_32": 768,
}


@pytest.mark.parametrize(("name", "dim"), sorted(REPRESENTATIVE.items()))
def test_student_gives_pooled_features(name, dim):
    torch.manual_seed(0)
    student = build_student(f"torchvision/{name}", image_size=(64, 64)).train()
    assert student.feature_dim == dim
    with torch.no_grad():
        features = student(torch.randn(4, 3, 64, 64))
    assert features.shape == (4, dim)
    assert torch.isfinite(features).all()
    # Different images give different features: the classifier is gone, not the backbone. (Train mode:
    # some random-init networks give near-constant outputs in eval mode with untouched BN statistics.)
    assert not torch.allclose(features[0], features[1])


def test_inception_v3_in_train_mode_returns_a_tensor():
    student = build_student("torchvision/inception_v3").train()
    features = student(torch.randn(2, 3, 96, 96))
    assert isinstance(features, torch.Tensor) and features.shape == (2, 2048)


@pytest.mark.slow
@pytest.mark.parametrize("name", torchvision_names())
def test_every_torchvision_classification_model(name):
    """Every name in torchvision.models.list_models(module=torchvision.models) builds a student."""
    size = 299 if name == "inception_v3" else 224
    if name.startswith("regnet"):  # regnet's constructor computes widths with tensors: no meta device
        student = build_student(f"torchvision/{name}")
        with torch.device("meta"):
            features = student.to("meta")(torch.empty(2, 3, size, size))
    else:
        with torch.device("meta"):
            student = build_student(f"torchvision/{name}")
            features = student(torch.empty(2, 3, size, size))
    assert features.shape == (2, student.feature_dim)


def test_timm_student():
    student = build_student("timm/resnet18").eval()
    assert student.feature_dim == 512
    assert student(torch.randn(1, 3, 64, 64)).shape == (1, 512)


def test_bad_names_are_explained():
    assert "must start with 'torchvision/' or 'timm/'" in check_student_name("resnet18")[0]
    assert "Did you mean torchvision/resnet50" in check_student_name("torchvision/resnet5")[0]
    assert "unknown timm model" in check_student_name("timm/not_a_model_xyz")[0]
    with pytest.raises(ConfigError, match="resnet18"):
        build_student("torchvision/resnet1")
