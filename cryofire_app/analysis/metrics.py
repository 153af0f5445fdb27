"""Accuracy metrics against ground truth: rotation alignment and pose errors, state confusion, FSC.

Conventions (docs/design.md): rotations are cryoDRGN row-convention matrices, ``k_vol = k_img @ rot``; row 2 of ``rot``
is the viewing direction. Translations are in pixels of the image box ``D`` (not the odd Hartley lattice ``D + 1``).
Volumes are ``(z, y, x)`` arrays. Frequencies are in cycles/pixel; a resolution in Angstrom is ``px * apix``.

Global alignment of predicted rotations ``P_j`` onto ground truth ``G_j`` (method_spec §7): a reconstruction is only
defined up to a global rotation, and an ab initio one also up to its hand. For the hand ``H`` (identity, or
``F = diag(1, 1, -1)`` for a mirrored map) we look for an orthogonal ``A`` (det ``+1`` for ``H = I``, ``-1`` for
``H = F``) such that ``H P_j A ~= G_j``. ``F`` only negates the viewing direction, which never changes a central
slice (its ``k_z = 0``), so ``F P_j`` describes the same images as ``P_j``.

The metrics live in alignment.py (rotation and volume alignment), pose_errors.py (rotation and translation errors),
conformations.py (state confusion, rank correlation) and resolution.py (FSC); this module gathers them.
"""
from __future__ import annotations

from cryofire_app.analysis.alignment import (
    FLIP,
    RotationAlignment,
    align_rotations,
    align_volume_to_gt,
    rotate_volume,
)
from cryofire_app.analysis.conformations import confusion_by_thresholds, label_confusion, spearman
from cryofire_app.analysis.pose_errors import (
    global_translation_offset,
    inplane_error_deg,
    rotation_angle_error_deg,
    rotation_errors,
    translation_errors,
    view_direction_error_deg,
)
from cryofire_app.analysis.resolution import fsc, fsc_report, fsc_resolution_px

__all__ = [
    "FLIP", "RotationAlignment", "align_rotations", "align_volume_to_gt", "rotate_volume",
    "view_direction_error_deg", "rotation_angle_error_deg", "inplane_error_deg", "rotation_errors",
    "global_translation_offset", "translation_errors",
    "confusion_by_thresholds", "label_confusion", "spearman",
    "fsc", "fsc_resolution_px", "fsc_report",
]
