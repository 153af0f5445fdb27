"""Centered Fourier and Hartley transforms, the symmetrized odd Hartley lattice, Fourier resizing, real-space window.

Conventions (docs/design.md):
- Transforms act on the last 2 (2D) or 3 (3D) axes; leading axes are batch.
- Centered FFT: ``F = fftshift(fftn(ifftshift(x)))``. The DC term sits at index ``n // 2`` of each axis, and
  index ``p`` of an axis of length ``n`` is the frequency ``(p - n // 2) / n`` cycles/pixel.
- Hartley: ``H = Re F - Im F``, i.e. ``H(k) = sum_r x(r) cas(2 pi k.r)``, ``cas = cos + sin``, with ``r`` measured from
  the centre pixel ``n // 2``. The inverse is the same operation divided by the number of transformed elements.
- Arrays are ``[..., row, col] = [..., y, x]`` (2D) and ``[..., z, y, x]`` (3D).
"""
from __future__ import annotations

import torch

_DIMS2 = (-2, -1)
_DIMS3 = (-3, -2, -1)


def _fftn_center(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def _ifftn_center(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(x, dim=dims), dim=dims), dim=dims)


def _htn_center(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    # Re F - Im F before the final shift: the same values, with one complex array alive at a time, not two
    f = torch.fft.fftn(torch.fft.ifftshift(x, dim=dims), dim=dims)
    h = f.real - f.imag
    del f
    return torch.fft.fftshift(h, dim=dims)


def _n_elements(x: torch.Tensor, dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= x.shape[d]
    return n


def fft2_center(x: torch.Tensor) -> torch.Tensor:
    """Centered 2D FFT over the last two axes (complex output, DC at ``[D//2, D//2]``)."""
    return _fftn_center(x, _DIMS2)


def ifft2_center(f: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft2_center` (complex output; take ``.real`` for real images)."""
    return _ifftn_center(f, _DIMS2)


def fft3_center(x: torch.Tensor) -> torch.Tensor:
    """Centered 3D FFT over the last three axes (z, y, x)."""
    return _fftn_center(x, _DIMS3)


def ifft3_center(f: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fft3_center`."""
    return _ifftn_center(f, _DIMS3)


def ht2_center(x: torch.Tensor) -> torch.Tensor:
    """Centered 2D Hartley transform ``Re F - Im F`` of real images ``(..., D, D)``; no normalisation."""
    return _htn_center(x, _DIMS2)


def iht2_center(h: torch.Tensor) -> torch.Tensor:
    """Inverse centered 2D Hartley transform: ``ht2_center(h) / (D*D)``."""
    return _htn_center(h, _DIMS2) / _n_elements(h, _DIMS2)


def ht3_center(x: torch.Tensor) -> torch.Tensor:
    """Centered 3D Hartley transform of real volumes ``(..., D, D, D)`` (axes z, y, x); no normalisation."""
    return _htn_center(x, _DIMS3)


def iht3_center(h: torch.Tensor) -> torch.Tensor:
    """Inverse centered 3D Hartley transform: ``ht3_center(h) / D**3``."""
    return _htn_center(h, _DIMS3) / _n_elements(h, _DIMS3)


def _complex_of(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


#: lattices of at most this many points are transformed whole (a few tens of MB, and faster than slab by slab)
SLAB_ABOVE = 160 ** 3


def iht3_center_crop(h: torch.Tensor, d: int, slab: int | None = None) -> torch.Tensor:
    """``center_crop_pad(iht3_center(h), d, 3)`` of one cubic volume ``(n, n, n)``, ``d <= n``. Above
    :data:`SLAB_ABOVE` points (or with ``slab`` given) the inverse transform is made one axis at a time, ``slab``
    (default 16) planes at a time, and each axis keeps only the ``d`` positions the crop keeps, so besides ``h`` it
    holds about one ``(d, n, n)`` complex array instead of several ``(n, n, n)`` ones (at n = 256: ~70 MB instead of
    ~400 MB)."""
    n = h.shape[-1]
    if h.shape != (n, n, n) or not 0 < d <= n:
        raise ValueError(f"iht3_center_crop needs one cubic volume and 0 < d <= n, got {tuple(h.shape)}, d={d}")
    if slab is None and n ** 3 <= SLAB_ABOVE:
        return _crop_pad_center(iht3_center(h), d, 3)
    slab = slab or 16
    keep = torch.arange(n // 2 - d // 2, n // 2 - d // 2 + d, device=h.device)

    def along(x: torch.Tensor, dim: int, over: int) -> torch.Tensor:
        # the centred 1D transform along ``dim`` at the kept positions, ``slab`` planes of axis ``over`` at a time
        shape = list(x.shape)
        shape[dim] = d
        out = torch.empty(shape, dtype=_complex_of(h.dtype), device=h.device)
        for s in range(0, x.shape[over], slab):
            part = x.narrow(over, s, min(slab, x.shape[over] - s))
            out.narrow(over, s, part.shape[over]).copy_(_fftn_center(part, (dim,)).index_select(dim, keep))
        return out

    f = along(along(along(h, 0, 2), 1, 0), 2, 0)
    return (f.real - f.imag) / float(n) ** 3


def symmetrized_ht3_padded(core: torch.Tensor, n: int, slab: int | None = None) -> torch.Tensor:
    """``symmetrize_ht3(ht3_center(center_crop_pad(core, n, 3)))`` of one cubic volume ``core (d, d, d)``, ``d <= n``,
    ``n`` even. Above :data:`SLAB_ABOVE` points (or with ``slab`` given) the transform is made one axis at a time,
    ``slab`` (default 16) planes at a time, so the padding zeros are never transformed and besides the ``(n+1)^3``
    result it holds one ``(n, n, d)`` complex array (at n = 256, d = 128: ~70 MB of temporaries instead of ~400 MB)."""
    d = core.shape[-1]
    if core.shape != (d, d, d) or not 0 < d <= n or n % 2:
        raise ValueError(f"symmetrized_ht3_padded needs one cubic volume, d <= n and n even, got "
                         f"{tuple(core.shape)}, n={n}")
    if slab is None and n ** 3 <= SLAB_ABOVE:
        return symmetrize_ht3(_htn_center(_crop_pad_center(core, n, 3), _DIMS3))
    slab = slab or 16
    s0 = n // 2 - d // 2

    def padded_fft(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:   # centred transform, x zero-padded
        shape = list(x.shape)
        for k in dims:
            shape[k] = n
        p = torch.zeros(shape, dtype=x.dtype, device=x.device)
        sub = p
        for k in dims:
            sub = sub.narrow(k, s0, d)
        sub.copy_(x)
        return _fftn_center(p, dims)

    f = torch.empty(n, n, d, dtype=_complex_of(core.dtype), device=core.device)   # transformed along z and y, x not yet
    for c in range(0, d, slab):
        f[:, :, c:c + slab] = padded_fft(core[:, :, c:c + slab], (0, 1))
    out = torch.zeros(n + 1, n + 1, n + 1, dtype=core.dtype, device=core.device)
    for z in range(0, n, slab):
        g = padded_fft(f[z:z + slab], (2,))
        out[z:z + g.shape[0], :n, :n] = g.real - g.imag
        del g
    out[n, :, :] = out[0, :, :]
    out[:, n, :] = out[:, 0, :]
    out[:, :, n] = out[:, :, 0]
    return out


def symmetrize_ht(h: torch.Tensor) -> torch.Tensor:
    """Embed centered 2D HTs ``(..., D, D)`` (D even) in the odd ``(..., D+1, D+1)`` lattice (method_spec 1.4).

    The -Nyquist row/column (index 0) is copied to the new last row/column (+Nyquist) and the corner gets ``[0, 0]``.
    Afterwards frequencies span [-1/2, 1/2] symmetrically, DC is at ``[D//2, D//2]`` and reversing the flattened
    lattice index maps k -> -k exactly.
    """
    d = h.shape[-1]
    if h.shape[-2] != d or d % 2:
        raise ValueError(f"symmetrize_ht needs square even images, got {tuple(h.shape[-2:])}")
    out = h.new_zeros(*h.shape[:-2], d + 1, d + 1)
    out[..., :d, :d] = h
    out[..., d, :d] = h[..., 0, :]
    out[..., :d, d] = h[..., :, 0]
    out[..., d, d] = h[..., 0, 0]
    return out


def symmetrize_ht3(h: torch.Tensor) -> torch.Tensor:
    """3D analogue of :func:`symmetrize_ht`: ``(..., D, D, D)`` -> ``(..., D+1, D+1, D+1)``.

    Index 0 of every axis (-Nyquist) is copied to the new last index (+Nyquist), so the lattice is symmetric.
    """
    d = h.shape[-1]
    if h.shape[-3:] != (d, d, d) or d % 2:
        raise ValueError(f"symmetrize_ht3 needs cubic even volumes, got {tuple(h.shape[-3:])}")
    out = h.new_zeros(*h.shape[:-3], d + 1, d + 1, d + 1)
    out[..., :d, :d, :d] = h
    out[..., d, :, :] = out[..., 0, :, :]
    out[..., :, d, :] = out[..., :, 0, :]
    out[..., :, :, d] = out[..., :, :, 0]
    return out


def _crop_pad_center(x: torch.Tensor, n_new: int, ndim: int) -> torch.Tensor:
    """Centered crop or zero-pad of the last ``ndim`` axes to ``n_new`` keeping index ``n//2`` at ``n_new//2``."""
    n = x.shape[-1]
    if n_new == n:
        return x
    out = x.new_zeros(*x.shape[:-ndim], *([n_new] * ndim))
    if n_new < n:
        s = n // 2 - n_new // 2
        src = tuple(slice(s, s + n_new) for _ in range(ndim))
        return x[(Ellipsis, *src)].clone()
    s = n_new // 2 - n // 2
    dst = tuple(slice(s, s + n) for _ in range(ndim))
    out[(Ellipsis, *dst)] = x
    return out


def center_crop_pad(x: torch.Tensor, n_new: int, ndim: int = 2) -> torch.Tensor:
    """Real-space centered crop or zero pad of the last ``ndim`` (2 or 3) axes; the centre pixel ``n//2`` stays the
    centre."""
    return _crop_pad_center(x, n_new, ndim)


def fourier_resize(x: torch.Tensor, d_new: int, ndim: int | None = None) -> torch.Tensor:
    """Resize images ``(..., D, D)`` or volumes ``(..., D, D, D)`` to box ``d_new`` by Fourier crop (down) / zero pad
    (up).

    The centered Hartley transform is cropped or padded around DC, so the pixel size becomes ``apix * D / d_new``.
    Intensities are rescaled so the real-space **mean value is preserved** (a constant map stays the same constant).
    ``ndim`` (2 or 3) defaults to 3 when the last three axes are equal, else 2. Odd input boxes are allowed.
    """
    if ndim is None:
        ndim = 3 if x.dim() >= 3 and x.shape[-3] == x.shape[-2] == x.shape[-1] else 2
    if ndim not in (2, 3):
        raise ValueError("ndim must be 2 or 3")
    n = x.shape[-1]
    if any(x.shape[-i] != n for i in range(1, ndim + 1)):
        raise ValueError(f"fourier_resize needs square/cubic input, got {tuple(x.shape[-ndim:])}")
    if d_new == n:
        return x.clone()
    dims = _DIMS2 if ndim == 2 else _DIMS3
    h = _htn_center(x, dims)
    h = _crop_pad_center(h, d_new, ndim)
    # inverse HT divides by d_new**ndim; the DC term is sum(x) = mean * n**ndim, so this leaves the mean unchanged.
    return _htn_center(h, dims) / (n ** ndim)


def window_mask(d: int, r_in: float = 0.85, r_out: float = 0.99, *, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Soft circular real-space window ``(d, d)``: 1 inside radius ``r_in``, linear fall-off to 0 at ``r_out``.

    Radii are fractions of the half box: pixel ``j`` has coordinate ``-1 + 2 j / d`` (centre pixel ``d//2`` -> 0),
    so ``r = 1`` at the box edge along the axes (method_spec 1.2).
    """
    u = -1 + 2 * torch.arange(d, dtype=torch.float64, device=device) / d
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    r = torch.sqrt(xx ** 2 + yy ** 2)
    w = torch.clamp(1 - (r - r_in) / (r_out - r_in), 0.0, 1.0)
    return w.to(dtype)
