"""Deformable convolution: ordinary conv at zero offsets, shifted conv at integer offsets, exact bilinear
sampling with zeros outside the map (against a loop written from the definition), gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepfeat.nets.deform import DeformConv2d, conv_out_size, deform_conv2d

CASES = [  # kernel, stride, padding, dilation
    ((3, 3), 1, 0, 1),
    ((3, 3), 2, 1, 1),
    ((5, 5), 2, 2, 1),
    ((3, 2), (1, 2), (1, 0), (2, 1)),
]


def _out(x, w, s, p, d):
    s, p, d = (torch.nn.modules.utils._pair(v) for v in (s, p, d))
    return [conv_out_size(x.shape[2 + a], w.shape[2 + a], s[a], p[a], d[a]) for a in range(2)]


def reference(x, off, w, b, stride, padding, dilation):
    """Deformable convolution written out from its definition with Python loops (float64, tiny inputs only)."""
    (sh, sw), (ph, pw), (dh, dw) = (torch.nn.modules.utils._pair(v) for v in (stride, padding, dilation))
    B, C, H, W = x.shape
    n_out, _, kh, kw = w.shape
    Ho, Wo = off.shape[2:]

    def pixel(b_, c, i, j):
        return float(x[b_, c, i, j]) if 0 <= i < H and 0 <= j < W else 0.0

    def bilinear(b_, c, y, xx):
        y0, x0 = math.floor(y), math.floor(xx)
        ly, lx = y - y0, xx - x0
        return (
            (1 - ly) * (1 - lx) * pixel(b_, c, y0, x0)
            + (1 - ly) * lx * pixel(b_, c, y0, x0 + 1)
            + ly * (1 - lx) * pixel(b_, c, y0 + 1, x0)
            + ly * lx * pixel(b_, c, y0 + 1, x0 + 1)
        )

    out = torch.zeros(B, n_out, Ho, Wo, dtype=torch.float64)
    for b_ in range(B):
        for p in range(Ho):
            for q in range(Wo):
                for i in range(kh):
                    for j in range(kw):
                        k = i * kw + j
                        y = p * sh - ph + i * dh + float(off[b_, 2 * k, p, q])
                        xx = q * sw - pw + j * dw + float(off[b_, 2 * k + 1, p, q])
                        vals = torch.tensor([bilinear(b_, c, y, xx) for c in range(C)], dtype=torch.float64)
                        out[b_, :, p, q] += w[:, :, i, j].double() @ vals
    if b is not None:
        out += b.double().view(1, n_out, 1, 1)
    return out


@pytest.mark.parametrize("k,s,p,d", CASES)
def test_zero_offsets_equal_conv2d(k, s, p, d):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 11, 13, generator=g)
    w = torch.randn(4, 3, *k, generator=g)
    b = torch.randn(4, generator=g)
    ref = F.conv2d(x, w, b, s, p, d)
    off = torch.zeros(2, 2 * k[0] * k[1], *ref.shape[2:])
    got = deform_conv2d(x, off, w, b, s, p, d)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,s,p,d", CASES)
@pytest.mark.parametrize("dy,dx", [(1, 0), (0, -2), (2, 3), (-1, -1)])
def test_integer_offsets_equal_conv_of_shifted_input(k, s, p, d, dy, dx):
    """Every tap moved by the same integer (dy, dx) == conv2d of the input shifted by (-dy, -dx).

    The input is embedded in a zero margin wider than the shift (and the padding is taken from the margin), so
    shifting the canvas never moves content across its border: X_shift[h, w] = X[h + dy, w + dx].
    """
    g = torch.Generator().manual_seed(1)
    M = 4
    x = F.pad(torch.randn(2, 3, 9, 10, generator=g, dtype=torch.float64), (M, M, M, M))
    w = torch.randn(5, 3, *k, generator=g, dtype=torch.float64)
    ref_shape = _out(x, w, s, p, d)
    off = torch.zeros(2, k[0] * k[1], 2, *ref_shape, dtype=torch.float64)
    off[:, :, 0], off[:, :, 1] = dy, dx
    got = deform_conv2d(x, off.view(2, -1, *ref_shape), w, None, s, p, d)
    shifted = torch.roll(x, shifts=(-dy, -dx), dims=(2, 3))
    ref = F.conv2d(shifted, w, None, s, p, d)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p,d", CASES)
def test_fractional_offsets_match_definition(k, s, p, d):
    """Random per-tap, per-position offsets (some far outside the map) against the loop reference."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64)
    w = torch.randn(3, 2, *k, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    shape = _out(x, w, s, p, d)
    off = 3.0 * torch.randn(2, 2 * k[0] * k[1], *shape, generator=g, dtype=torch.float64)
    off[0, 0] = -20.0  # first tap of the first clip far outside: contributes exactly zero
    torch.testing.assert_close(
        deform_conv2d(x, off, w, b, s, p, d), reference(x, off, w, b, s, p, d), rtol=1e-12, atol=1e-12
    )


def test_samples_outside_the_map_are_zero():
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(3, 2, 3, 3)
    b = torch.randn(3)
    off = torch.full((1, 18, 3, 3), 50.0)
    torch.testing.assert_close(deform_conv2d(x, off, w, b), b.view(1, 3, 1, 1).expand(1, 3, 3, 3))
    # half a pixel beyond the last row blends the last row with zero: weight 1/2
    x1 = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    w1 = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    off1 = torch.zeros(1, 2, 3, 3, dtype=torch.float64)
    off1[0, 0, 2] = 0.5
    out = deform_conv2d(x1, off1, w1)
    assert out[0, 0, 2].tolist() == [0.5, 0.5, 0.5] and out[0, 0, :2].eq(1).all()


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    shape = (conv_out_size(5, 3, 2, 1), conv_out_size(6, 3, 2, 1))
    # fractional parts kept away from 0 and 1, where bilinear sampling has kinks
    base = torch.randint(-2, 3, (2, 18, *shape), generator=g).double()
    frac = 0.2 + 0.6 * torch.rand(2, 18, *shape, generator=g, dtype=torch.float64)
    off = (base + frac).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda *a: deform_conv2d(*a, stride=2, padding=1), (x, off, w, b), eps=1e-6, atol=1e-7
    )


def test_module_starts_as_a_regular_conv_and_learns_offsets():
    torch.manual_seed(0)
    m = DeformConv2d(20, 30, 5, stride=2, padding=2, offset_kernel=3, offset_stride=2, offset_padding=1)
    assert m.bias is None and m.offset.out_channels == 50
    assert sum(p.numel() for p in m.parameters()) == 30 * 20 * 25 + 50 * 20 * 9 + 50
    x = torch.randn(3, 20, 11, 11)
    y = m(x)
    assert y.shape == (3, 30, 6, 6) and m.output_size(11, 11) == (6, 6)
    torch.testing.assert_close(y, F.conv2d(x, m.weight, None, 2, 2), rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    assert m.offset.weight.grad.abs().sum() > 0  # zero-initialised offsets still receive a gradient


def test_bad_shapes_are_reported():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="offset must be"):
        deform_conv2d(x, torch.zeros(1, 16, 3, 3), w)
    with pytest.raises(ValueError, match="input channels"):
        deform_conv2d(torch.randn(1, 4, 5, 5), torch.zeros(1, 18, 3, 3), w)
    with pytest.raises(ValueError, match="offset conv gives"):
        DeformConv2d(2, 3, 3, stride=1, padding=1, offset_kernel=3, offset_stride=2, offset_padding=1).output_size(8, 8)
