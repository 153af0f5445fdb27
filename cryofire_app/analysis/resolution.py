"""Fourier shell correlation of two cubic ``(z, y, x)`` volumes and the resolutions it reaches (frequencies in
cycles/pixel; a resolution in Angstrom is ``px * apix``)."""
from __future__ import annotations

import numpy as np


def _check_pair(v1, v2) -> tuple[np.ndarray, np.ndarray]:
    v1 = np.asarray(v1, dtype=np.float64)
    v2 = np.asarray(v2, dtype=np.float64)
    if v1.shape != v2.shape or v1.ndim != 3 or len(set(v1.shape)) != 1:
        raise ValueError(f"FSC needs two cubic volumes of the same shape, got {v1.shape} and {v2.shape}")
    return v1, v2


def fsc(v1, v2) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two (D, D, D) volumes, shells as in cryoDRGN's ``fsc`` (method_spec §7).

    Shell ``i`` (1 <= i < D/2) holds the voxels whose integer distance from the centered-FFT origin lies in
    ``[i - 1, i)``; ``FSC_0 = 1``. Returns ``(freq, curve)``, ``freq[i] = i / D`` in cycles/pixel.
    """
    v1, v2 = _check_pair(v1, v2)
    D = v1.shape[0]
    f1 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v1)))
    f2 = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v2)))
    c = np.arange(D) - D // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    nshell = D // 2
    shell = np.floor(r).astype(np.int64) + 1  # r in [i-1, i) -> i
    shell[shell >= nshell] = 0  # outside: dropped (bin 0 is unused)
    cross = np.bincount(shell.ravel(), weights=(f1 * np.conj(f2)).real.ravel(), minlength=nshell)
    p1 = np.bincount(shell.ravel(), weights=(np.abs(f1) ** 2).ravel(), minlength=nshell)
    p2 = np.bincount(shell.ravel(), weights=(np.abs(f2) ** 2).ravel(), minlength=nshell)
    denom = np.sqrt(p1 * p2)
    curve = np.divide(cross, denom, out=np.zeros(nshell), where=denom > 0)
    curve[0] = 1.0
    freq = np.arange(nshell) / D
    return freq, curve


def fsc_resolution_px(freq: np.ndarray, curve: np.ndarray, threshold: float) -> float:
    """Resolution (pixels) at an FSC threshold: ``1 / f`` for the highest frequency ``f`` reached before the curve
    first drops below ``threshold`` (first crossing; a late spurious rise from noise is ignored).

    The search starts at shell 2: shell 1 holds only the DC voxel (the map's mean), which carries no resolution
    information and is zeroed by the decoder (method_spec §9.6), so its sign is arbitrary. If the curve never drops
    below the threshold, the last shell's frequency is used; if shell 2 is already below, ``inf``.
    """
    below = np.nonzero(curve[2:] < threshold)[0]
    if len(below) == 0:
        return float(1.0 / freq[-1])
    i = int(below[0]) + 2 - 1
    if i < 2:
        return float("inf")
    return float(1.0 / freq[i])


def fsc_report(v1, v2, apix: float | None = None) -> dict:
    """FSC curve and the 0.5 / 0.143 resolutions in pixels (and Angstrom when ``apix`` is known)."""
    freq, curve = fsc(v1, v2)
    out = {"freq_cyc_per_px": freq.tolist(), "fsc": curve.tolist()}
    for name, thr in (("0.5", 0.5), ("0.143", 0.143)):
        px = fsc_resolution_px(freq, curve, thr)
        out[f"res_{name}_px"] = px
        out[f"res_{name}_A"] = px * apix if apix else None
    return out
