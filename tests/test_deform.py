"""Deformable convolution, both semantics against loops written from their definitions.

torchvision: ordinary conv at zero offsets, shifted conv at integer offsets, exact bilinear sampling with zeros
outside the map, gradients. reference (the layer of the method's appendix): grid centred at 1 + s*i, clamped
corners and positions with the layer's corner weights, offset bias at PyTorch's default initialisation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepfeat.nets.deform import (
    DeformConv2d,
    ReferenceDeformConv2d,
    conv_out_size,
    deform_conv2d,
    deform_conv2d_reference,
)

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


# ----------------------------------------------------------------------------------------------------------
# The reference semantics (models.deformable: reference)
# ----------------------------------------------------------------------------------------------------------
def reference_layer_loop(x, off, w, stride, padding):
    """The reference layer written out from its definition with Python loops (float64, tiny inputs only).

    Zero padding first; tap k = r*ks + c sits at (first + r, first + c), first = floor(-(ks-1)/2); sample
    position (1 + s*i + tap row + off[k], 1 + s*j + tap column + off[N + k]); per axis lo = floor(p), hi = lo + 1,
    both and p clamped to the map, factors 1 + (lo - p) and 1 - (hi - p); corners (lo, lo), (hi, hi), (lo, hi),
    (hi, lo) weighted by the products of their axes' factors."""
    x = F.pad(x, (padding,) * 4).double()
    B, C, H, W = x.shape
    n_out, _, ks, _ = w.shape
    N = ks * ks
    h, wd = off.shape[2:]
    first = math.floor(-(ks - 1) / 2)

    def axis(pos, n):
        lo = math.floor(pos)
        hi = lo + 1
        lo, hi, pos = min(max(lo, 0), n - 1), min(max(hi, 0), n - 1), min(max(pos, 0.0), n - 1.0)
        return lo, hi, 1 + (lo - pos), 1 - (hi - pos)

    out = torch.zeros(B, n_out, h, wd, dtype=torch.float64)
    for b_ in range(B):
        for i in range(h):
            for j in range(wd):
                for k in range(N):
                    r, c = divmod(k, ks)
                    r0, r1, u0, u1 = axis(1 + stride * i + first + r + float(off[b_, k, i, j]), H)
                    c0, c1, v0, v1 = axis(1 + stride * j + first + c + float(off[b_, N + k, i, j]), W)
                    vals = (
                        u0 * v0 * x[b_, :, r0, c0]
                        + u1 * v1 * x[b_, :, r1, c1]
                        + u0 * v1 * x[b_, :, r0, c1]
                        + u1 * v0 * x[b_, :, r1, c0]
                    )
                    out[b_, :, i, j] += w[:, :, r, c].double() @ vals
    return out


REF_CASES = [  # kernel, stride, padding, input H x W
    (5, 2, 0, 11, 15),  # the method's conv3 (T = 176 gives 11 x 15 after pool2)
    (3, 1, 1, 6, 7),
    (4, 2, 0, 9, 8),  # even kernel: taps -2 .. 1
    (5, 1, 2, 7, 6),
]


@pytest.mark.parametrize("ks,s,p,H,W", REF_CASES)
def test_reference_semantics_match_the_definition(ks, s, p, H, W):
    """Random offsets (some far outside, some landing exactly on the last row/column) against the loop."""
    g = torch.Generator().manual_seed(10 + ks)
    x = torch.randn(2, 3, H, W, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, ks, ks, generator=g, dtype=torch.float64)
    h, wd = conv_out_size(H, 3, s, 1), conv_out_size(W, 3, s, 1)
    off = 2.5 * torch.randn(2, 2 * ks * ks, h, wd, generator=g, dtype=torch.float64)
    off[0, 0] = -30.0  # far above the map: clamped to row 0
    off[1, ks * ks] = 40.0  # far right: clamped to the last column
    off[1, 1] = torch.round(off[1, 1])  # integer positions, some on the border rows
    torch.testing.assert_close(
        deform_conv2d_reference(x, off, w, s, p), reference_layer_loop(x, off, w, s, p), rtol=1e-12, atol=1e-12
    )


def test_reference_grid_and_border_weights_by_hand():
    """ks 3, stride 1, all-ones map 4 x 4, zero offsets: tap rows of output i are i .. i+2; a row inside [0, 3)
    weighs 1, a clamped one (>= 3 = H-1) weighs 2, so output (i, j) of an all-ones kernel is R_i R_j with
    R = (3, 4, 5, 6); torchvision semantics (zeros outside, grid at i-1 .. i+1) give 4, 6, 6, 4 per axis."""
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    w = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    R = torch.tensor([3.0, 4.0, 5.0, 6.0], dtype=torch.float64)
    got = deform_conv2d_reference(x, torch.zeros(1, 18, 4, 4, dtype=torch.float64), w, 1, 0)
    torch.testing.assert_close(got[0, 0], torch.outer(R, R), rtol=0, atol=1e-12)
    T = torch.tensor([4.0, 6.0, 6.0, 4.0], dtype=torch.float64) / 2
    tv = deform_conv2d(x, torch.zeros(1, 18, 4, 4, dtype=torch.float64), w, None, 1, 1)
    torch.testing.assert_close(tv[0, 0], torch.outer(T, T), rtol=0, atol=1e-12)


def test_reference_gradcheck_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h, wd = conv_out_size(6, 3, 2, 1), conv_out_size(5, 3, 2, 1)
    # positions kept inside the map with fractional parts away from 0 and 1 (the kinks of floor and clamp)
    base = torch.randint(-1, 2, (1, 18, h, wd), generator=g).double()
    frac = 0.2 + 0.6 * torch.rand(1, 18, h, wd, generator=g, dtype=torch.float64)
    off = (base + frac - 1.0).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda *a: deform_conv2d_reference(*a, stride=2), (x, off, w), eps=1e-6, atol=1e-7, fast_mode=True
    )


def test_reference_module_parameters_initialisation_and_forward():
    torch.manual_seed(0)
    m = ReferenceDeformConv2d(20, 30, 5, stride=2, padding=0)
    assert m.bias is None and m.offset.out_channels == 50 and m.offset.stride == (2, 2) and m.offset.padding == (1, 1)
    assert sum(p.numel() for p in m.parameters()) == 30 * 20 * 25 + 50 * 20 * 9 + 50  # = DeformConv2d's
    assert m.offset.weight.abs().sum() == 0 and m.offset.bias.abs().max() > 0  # bias: PyTorch's default init
    assert m.offset.bias.abs().max() <= 1 / math.sqrt(20 * 9)
    # drawn in the layer's order: the kernel (a stride-ks conv without bias), then the offset convolution
    torch.manual_seed(0)
    kernel = torch.nn.Conv2d(20, 30, 5, stride=5, bias=False)
    offset = torch.nn.Conv2d(20, 50, 3, padding=1, stride=2)
    assert torch.equal(m.weight, kernel.weight) and torch.equal(m.offset.bias, offset.bias)
    x = torch.randn(3, 20, 11, 11)
    with torch.no_grad():
        y = m(x)
        off = m.offset(x)
    assert y.shape == (3, 30, 6, 6) and m.output_size(11, 11) == (6, 6)
    torch.testing.assert_close(y.double(), reference_layer_loop(x, off, m.weight.detach(), 2, 0), rtol=1e-4, atol=1e-4)
    m(x).square().sum().backward()
    assert m.offset.weight.grad.abs().sum() > 0 and m.weight.grad.abs().sum() > 0


def test_the_two_semantics_differ_at_zero_offsets():
    """The issue's measurement: the same kernel on the method's 20 x 11 x 11 pool2 maps at zero offsets differs
    by about 2x between the reference layer (grid at 1 + 2i, clamped) and torchvision's (grid of k5 s2 p2)."""
    torch.manual_seed(0)
    x = torch.randn(8, 20, 11, 11)
    w = torch.randn(30, 20, 5, 5)
    ref = deform_conv2d_reference(x, torch.zeros(8, 50, 6, 6), w, 2, 0)
    tv = deform_conv2d(x, torch.zeros(8, 50, 6, 6), w, None, 2, 2)
    assert 1.5 < float((ref - tv).norm() / tv.norm()) < 3.5


def test_reference_bad_shapes_are_reported():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with pytest.raises(ValueError, match="offset must be"):
        deform_conv2d_reference(x, torch.zeros(1, 16, 5, 5), w)
    with pytest.raises(ValueError, match="square"):
        deform_conv2d_reference(x, torch.zeros(1, 12, 5, 5), torch.randn(3, 2, 3, 2))
    with pytest.raises(ValueError, match="kernel_size must be one int"):
        ReferenceDeformConv2d(2, 3, (3, 3))
