"""method="distillation": label-free knowledge distillation as LightlyTrain's distillationv1 does it."""

from kubedistill.methods.distillation.args import AdamWArgs, DistillationArgs, LARSArgs
from kubedistill.methods.distillation.loss import distillation_loss
from kubedistill.methods.distillation.method import Distillation, mixup
from kubedistill.methods.distillation.queue import TeacherQueue, auto_queue_size

__all__ = [
    "AdamWArgs",
    "Distillation",
    "DistillationArgs",
    "LARSArgs",
    "TeacherQueue",
    "auto_queue_size",
    "distillation_loss",
    "mixup",
]
