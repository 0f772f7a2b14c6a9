"""Distributed training on Kubernetes: one job-spec builder per backend, behind one small interface.

- ``pytorchjob``: Training Operator v1's PyTorchJob (``kubeflow.org/v1``; maintenance releases only since 2026).
- ``trainjob``: Kubeflow Trainer v2's TrainJob (``trainer.kubeflow.org/v1alpha1``, written for Trainer v2.3:
  its pod settings go in ``spec.runtimePatches``, a field that was called ``podSpecOverrides`` and then
  ``podTemplateOverrides`` in earlier minor releases).

Both run the same bare ``torchrun -m kubedistill train key=value ...`` in every pod: the operator sets
PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT and PET_NPROC_PER_NODE, which torchrun reads.
The pod settings both share (GPUs, node selector and tolerations, /dev/shm, Istio off, Kueue queue, service
account, MLflow environment) are built once, in ``kube.pod``; the owner (the KFP run's Argo Workflow) is
resolved by ``kube.owner``, node 0's log followed by ``kube.logs``, and the job by ``kube.launcher``.
"""
