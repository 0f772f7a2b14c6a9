"""The container images of the pipeline: the one place that names them (components and job specs read these).

``KUBEDISTILL_IMAGE_REGISTRY`` (set when compiling) points the images at another registry; the tag is the
package version, so a compiled pipeline and the images built from the same commit belong together.
"""

from __future__ import annotations

import os

from kubedistill import __version__

DEFAULT_REGISTRY = "ghcr.io/kubedistill"
REGISTRY = (os.environ.get("KUBEDISTILL_IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
TAG = __version__

# The KFP components' image: python3, the exact kfp version the pipeline is compiled with, kubedistill (CPU).
COMPONENTS_IMAGE = f"{REGISTRY}/kubedistill-components:{TAG}"
# The training image of PyTorchJob / TrainJob pods: CUDA torch, kubedistill, torchrun on PATH.
TRAINER_IMAGE = f"{REGISTRY}/kubedistill-trainer:{TAG}"
