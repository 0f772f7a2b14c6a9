"""What the Kubeflow pipeline's components call: one function per step, the run context, artifact helpers.

Components (top-level ``components/``) stay a few lines each: they build a ``PipelineContext`` from the
pipeline's parameters, call one function of ``kubedistill.pipeline.steps`` and copy its result into KFP
artifacts with ``kubedistill.pipeline.artifacts``. Every decision (where outputs go, the MLflow parent run,
the gate, what metadata a model carries) is made here, where it is unit-tested.
"""

from __future__ import annotations

from kubedistill.pipeline.context import PipelineContext

__all__ = ["PipelineContext"]
