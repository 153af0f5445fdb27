"""Per-particle pose errors against ground truth (rotations in degrees, translations in pixels of the box D).

Rotations are cryoDRGN row-convention matrices (row 2 = viewing direction); the error functions take both stacks in
the same frame, :func:`rotation_errors` aligns them first (:func:`~cryofire_app.analysis.alignment.align_rotations`).
"""
from __future__ import annotations

import numpy as np

from cryofire_app.analysis.alignment import RotationAlignment, align_rotations


def view_direction_error_deg(rot_a, rot_b) -> np.ndarray:
    """Angle (degrees) between the viewing directions (row 2) of two rotation stacks."""
    a = np.asarray(rot_a, dtype=np.float64)[:, 2]
    b = np.asarray(rot_b, dtype=np.float64)[:, 2]
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip((a * b).sum(1), -1.0, 1.0)))


def rotation_angle_error_deg(rot_a, rot_b) -> np.ndarray:
    """Geodesic angle (degrees) of ``rot_a^T rot_b`` per particle (full 3D rotation error)."""
    a = np.asarray(rot_a, dtype=np.float64)
    b = np.asarray(rot_b, dtype=np.float64)
    tr = np.einsum("nij,nij->n", a, b)
    return np.degrees(np.arccos(np.clip((tr - 1.0) / 2.0, -1.0, 1.0)))


def inplane_error_deg(rot_pred, rot_gt) -> np.ndarray:
    """In-plane angle error (degrees, in [0, 180]).

    The predicted frame is first turned by the smallest rotation that puts its viewing direction on the ground-truth
    one; the error is then the angle between the two image x axes (row 0) about that direction. When the viewing
    directions agree this equals the difference of the first extrinsic ZXZ Euler angle of ``rot^T`` (the
    cryoFIRE definition) and, unlike the Euler form, it stays well defined near the poles.
    """
    p = np.asarray(rot_pred, dtype=np.float64)
    g = np.asarray(rot_gt, dtype=np.float64)
    vp = p[:, 2] / np.linalg.norm(p[:, 2], axis=1, keepdims=True)
    vg = g[:, 2] / np.linalg.norm(g[:, 2], axis=1, keepdims=True)
    xp, xg = p[:, 0], g[:, 0]
    axis = np.cross(vp, vg)
    s = np.linalg.norm(axis, axis=1)
    c = np.clip((vp * vg).sum(1), -1.0, 1.0)
    # Rodrigues rotation of xp about `axis` by the angle between vp and vg
    k = np.divide(axis, s[:, None], out=np.zeros_like(axis), where=s[:, None] > 1e-12)
    xr = xp * c[:, None] + np.cross(k, xp) * s[:, None] + k * (k * xp).sum(1, keepdims=True) * (1 - c[:, None])
    anti = (s <= 1e-12) & (c < 0)  # opposite view directions: any perpendicular axis; use the x axis of gt
    if np.any(anti):
        kk = xg[anti] / np.linalg.norm(xg[anti], axis=1, keepdims=True)
        x0 = xp[anti]
        xr[anti] = -x0 + 2 * kk * (kk * x0).sum(1, keepdims=True)
    xr = xr - vg * (xr * vg).sum(1, keepdims=True)
    xg2 = xg - vg * (xg * vg).sum(1, keepdims=True)
    sin = (np.cross(xr, xg2) * vg).sum(1)
    cos = (xr * xg2).sum(1)
    return np.abs(np.degrees(np.arctan2(sin, cos)))


def rotation_errors(pred_rot, gt_rot, alignment: RotationAlignment | None = None, **align_kw) -> dict:
    """Align (unless an alignment is given) and summarise the rotation errors in degrees."""
    if alignment is None:
        alignment = align_rotations(pred_rot, gt_rot, **align_kw)
    al = alignment.apply(pred_rot)
    gt = np.asarray(gt_rot, dtype=np.float64)
    view = view_direction_error_deg(al, gt)
    full = rotation_angle_error_deg(al, gt)
    inpl = inplane_error_deg(al, gt)
    return {
        "alignment": alignment.to_dict(),
        "rot_view_median_deg": float(np.median(view)),
        "rot_view_mean_deg": float(np.mean(view)),
        "rot_full_median_deg": float(np.median(full)),
        "rot_full_mean_deg": float(np.mean(full)),
        "rot_inplane_median_deg": float(np.median(inpl)),
        "rot_inplane_mean_deg": float(np.mean(inpl)),
        "n": int(len(gt)),
    }


def global_translation_offset(err_px: np.ndarray, gt_rot: np.ndarray) -> np.ndarray:
    """Least-squares 3D origin offset ``u`` (pixels, volume frame) explaining ``err_j ~= (G_j u)_{xy}``."""
    Gxy = np.asarray(gt_rot, dtype=np.float64)[:, :2, :]  # (N, 2, 3): image x/y axes in the volume frame
    u, *_ = np.linalg.lstsq(Gxy.reshape(-1, 3), np.asarray(err_px, dtype=np.float64).reshape(-1), rcond=None)
    return u


def translation_errors(pred_px, gt_px, gt_rot=None, correct_global: bool = False) -> dict:
    """Translation errors in pixels of the image box D (both inputs in pixels, (tx, ty) = (columns, rows)).

    ``correct_global`` removes the least-squares global 3D origin offset (needs ``gt_rot``): a map reconstructed a few
    voxels off-centre shifts every predicted translation by the projection of that offset.
    """
    pred = np.asarray(pred_px, dtype=np.float64)
    gt = np.asarray(gt_px, dtype=np.float64)
    if pred.shape != gt.shape or pred.ndim != 2 or pred.shape[1] != 2:
        raise ValueError(f"translations must both be (N, 2); got {pred.shape} and {gt.shape}")
    err = pred - gt
    out: dict = {}
    if correct_global:
        if gt_rot is None:
            raise ValueError("correct_global needs the ground-truth rotations")
        u = global_translation_offset(err, gt_rot)
        err = err - np.einsum("nij,j->ni", np.asarray(gt_rot, dtype=np.float64)[:, :2, :], u)
        out["global_offset_px"] = u.tolist()
    sq = (err ** 2).sum(1)
    out.update({
        "trans_median_px": float(np.median(np.sqrt(sq))),
        "trans_medse_px2": float(np.median(sq)),
        "trans_mse_px2": float(np.mean(sq)),
        "trans_mean_px": float(np.mean(np.sqrt(sq))),
    })
    return out
