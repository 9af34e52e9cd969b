"""Knowledge distillation: PaddleSlim's losses, a hook-based Distiller, DML and YOLOv3 distillation."""

from .distiller import Distiller
from .dml import DML, dml_loss
from .losses import FSPLoss, L2Loss, SoftLabelLoss, fsp_loss, fsp_matrix, l2_loss, soft_label_loss
from .yolo import split_head, yolo_distill_loss

__all__ = [
    "Distiller", "DML", "dml_loss", "FSPLoss", "L2Loss", "SoftLabelLoss", "fsp_loss", "fsp_matrix", "l2_loss",
    "soft_label_loss", "split_head", "yolo_distill_loss",
]
