"""The pipeline's KFP v2 components, one per step. Each is a few lines that call ``kubedistill.pipeline``.

They run in the components image (``kubedistill.pipeline.images.COMPONENTS_IMAGE``): kfp and kubedistill are
installed there, nothing is pip-installed at run time (clusters may be offline), and every import is inside the
function because KFP ships only the function's source.
"""

from components.distill import distill
from components.finalize import finalize_run
from components.probe import linear_probe
from components.register import register_model
from components.validate import validate_dataset

__all__ = ["distill", "finalize_run", "linear_probe", "register_model", "validate_dataset"]
