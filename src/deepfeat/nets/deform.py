"""Deformable 2-D convolution (Dai et al. 2017, "v1": learned offsets, no modulation) in plain torch.

Definition (the semantics of ``torchvision.ops.deform_conv2d`` without a mask, one offset group):
for an input ``x`` (B, C, H, W), kernel ``w`` (C_out, C, kh, kw), stride (sh, sw), padding (ph, pw),
dilation (dh, dw) and offsets ``off`` (B, 2*kh*kw, H_out, W_out),

    out[b, o, p, q] = bias[o] + sum_{c, i, j} w[o, c, i, j] * X_b,c( p*sh - ph + i*dh + dy,  q*sw - pw + j*dw + dx )

with ``k = i*kw + j``, ``dy = off[b, 2k, p, q]`` (rows, the first spatial axis) and ``dx = off[b, 2k+1, p, q]``
(columns). ``X_b,c(y, x)`` is bilinear interpolation of the map ``x[b, c]`` at the real position (y, x) in pixel
units, with every pixel outside the map taken as zero (so a sample further than one pixel outside is 0, and
one within a pixel of the border blends with zeros). With all offsets zero this is exactly ``F.conv2d``.

The implementation is vectorised over batch, kernel taps and output positions: the four bilinear corners of
every sample are fetched with one ``torch.gather`` on the flattened map, giving the (B, C*kh*kw, L) column
matrix that is contracted with the flattened kernel in one matmul. Memory: 4 x B x C x kh*kw x L values for the
gathered corners (L = H_out*W_out); for the networks' conv3 (C=20, 5x5, L<=48) that is ~100k floats per clip.
Gradients w.r.t. input, offsets, weight and bias come from autograd (the floor of the sample position is
piecewise constant; the bilinear weights carry the offset gradient).

Two semantics (``models.deformable``) are offered:

* ``torchvision`` (:func:`deform_conv2d`, :class:`DeformConv2d`): the definition above, zeros outside the map,
  offset convolution zero-initialised (weights and bias), so an untrained layer is an ordinary convolution.
* ``reference`` (:func:`deform_conv2d_reference`, :class:`ReferenceDeformConv2d`): the forward semantics of the
  deformable layer the method's appendix names (the public ``DeformConv2d`` of pytorch-deform-conv-v2, its
  version with ``stride``, used with zero padding 0 and without modulation). For a square kernel of ks taps per
  axis (N = ks*ks), stride s, zero padding P (applied to the input first: H, W below are the padded sizes) and
  offsets ``off`` (B, 2N, h, w) from the offset convolution (k3 s p1 on the unpadded input):

      p_row[k, i, j] = 1 + s*i + a_k + off[:, k, i, j],     p_col[k, i, j] = 1 + s*j + b_k + off[:, N + k, i, j]

  with tap k = r*ks + c, a_k = t_r, b_k = t_c, t = floor(-(ks-1)/2) .. (ks-1)//2 (for ks = 5: -2 .. 2); so the
  regular grid is centred at 1 + s*i (not at s*i - P + (ks-1)/2 as above). Per axis, lo = floor(p) and
  hi = lo + 1 are clamped to [0, H-1] (rows) / [0, W-1] (columns) and so is p itself; with the row factors
  u_lo = 1 + (lo - p), u_hi = 1 - (hi - p) (columns v_lo, v_hi alike) the sample is

      u_lo v_lo X[lo_r, lo_c] + u_hi v_hi X[hi_r, hi_c] + u_lo v_hi X[lo_r, hi_c] + u_hi v_lo X[hi_r, lo_c].

  Inside the map this is bilinear interpolation. Where a coordinate is clamped (p < 0 or p >= H-1), lo = hi
  = p and both factors are 1: the edge pixel is taken with weight 2 per clamped axis (4 at a corner), not once
  as edge replication would. The samples are contracted with the kernel (no bias). The offset convolution
  has its weights set to zero and its bias left at PyTorch's default initialisation, so an untrained layer
  already samples off the grid by up to ~1/sqrt(9 C) pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair


def conv_out_size(n: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution/pooling along one axis: floor((n + 2p - d(k-1) - 1)/s) + 1."""
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
) -> torch.Tensor:
    """Deformable convolution of ``x`` (B, C, H, W) with ``weight`` (C_out, C, kh, kw) at ``offset`` shifts.

    ``offset`` is (B, 2*kh*kw, H_out, W_out) in pixels, (dy, dx) pairs per kernel tap in row-major tap order;
    see the module docstring for the exact definition. Returns (B, C_out, H_out, W_out).
    """
    if x.dim() != 4 or weight.dim() != 4 or offset.dim() != 4:
        raise ValueError(
            f"deform_conv2d: expected 4-D input, offset and weight, got {tuple(x.shape)}, "
            f"{tuple(offset.shape)}, {tuple(weight.shape)}"
        )
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    B, C, H, W = x.shape
    C_out, C_w, kh, kw = weight.shape
    if C_w != C:
        raise ValueError(f"deform_conv2d: weight expects {C_w} input channels, input has {C}")
    Ho, Wo = conv_out_size(H, kh, sh, ph, dh), conv_out_size(W, kw, sw, pw, dw)
    K, L = kh * kw, Ho * Wo
    if Ho < 1 or Wo < 1:
        raise ValueError(f"deform_conv2d: input {H}x{W} too small for kernel {kh}x{kw} (output {Ho}x{Wo})")
    if tuple(offset.shape) != (B, 2 * K, Ho, Wo):
        raise ValueError(f"deform_conv2d: offset must be {(B, 2 * K, Ho, Wo)}, got {tuple(offset.shape)}")

    dev, dt = x.device, x.dtype
    # Sampling grid without offsets: base[k, p, q] for rows and columns.
    ti = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dh  # (K,) row of each tap
    tj = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dw  # (K,) column of each tap
    by = (torch.arange(Ho, device=dev, dtype=dt) * sh - ph).view(1, Ho, 1) + ti.view(K, 1, 1)  # (K, Ho, 1)
    bx = (torch.arange(Wo, device=dev, dtype=dt) * sw - pw).view(1, 1, Wo) + tj.view(K, 1, 1)  # (K, 1, Wo)
    off = offset.view(B, K, 2, Ho, Wo)
    y = (by + off[:, :, 0]).reshape(B, K * L)  # sample rows, (B, K*L)
    xx = (bx + off[:, :, 1]).reshape(B, K * L)  # sample columns

    y0, x0 = torch.floor(y), torch.floor(xx)
    ly, lx = y - y0, xx - x0  # fractional parts in [0, 1): carry the gradient w.r.t. the offsets
    y0i, x0i = y0.long(), x0.long()
    idx, wts = [], []
    for cy, wy in ((y0i, 1 - ly), (y0i + 1, ly)):
        for cx, wx in ((x0i, 1 - lx), (x0i + 1, lx)):
            inside = (cy >= 0) & (cy < H) & (cx >= 0) & (cx < W)
            idx.append(cy.clamp(0, H - 1) * W + cx.clamp(0, W - 1))
            wts.append(wy * wx * inside.to(dt))
    idx = torch.stack(idx, 1).view(B, 1, 4 * K * L).expand(B, C, 4 * K * L)
    wts = torch.stack(wts, 1).view(B, 1, 4, K * L)
    corners = torch.gather(x.reshape(B, C, H * W), 2, idx).view(B, C, 4, K * L)
    cols = (corners * wts).sum(2).view(B, C * K, L)  # (B, C*K, L), channel-major then tap: matches weight
    out = torch.matmul(weight.reshape(C_out, C * K), cols)  # (B, C_out, L)
    if bias is not None:
        out = out + bias.view(1, C_out, 1)
    return out.view(B, C_out, Ho, Wo)


class DeformConv2d(nn.Module):
    """Deformable convolution whose offsets are predicted from its own input by an ordinary convolution.

    ``offset`` = nn.Conv2d(in_channels -> 2*kh*kw, offset_kernel, offset_stride, offset_padding, bias=True),
    which must produce the same output size as the main convolution; ``weight`` (out, in, kh, kw) is the main
    kernel, without bias by default (as in the method's Deformable network). The offset convolution starts at
    zero (weights and bias), the usual initialisation of deformable networks, so an untrained layer samples the
    regular grid and equals ``F.conv2d(x, weight, stride, padding, dilation)``; its weights are still trained
    (the gradient w.r.t. the offsets is not zero). The main kernel is initialised like ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        offset_kernel=3,
        offset_stride=None,
        offset_padding=1,
        bias: bool = False,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.offset = nn.Conv2d(
            in_channels,
            2 * kh * kw,
            offset_kernel,
            stride=self.stride if offset_stride is None else offset_stride,
            padding=offset_padding,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(H_out, W_out) of the main convolution; raises if the offset convolution disagrees."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        main = (conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw))
        o = self.offset
        offs = tuple(
            conv_out_size(n, o.kernel_size[a], o.stride[a], o.padding[a], o.dilation[a]) for a, n in enumerate((h, w))
        )
        if main != offs:
            raise ValueError(f"DeformConv2d: offset conv gives {offs} positions but the main conv {main} for {h}x{w}")
        return main

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset(x)
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}"
        )


def _reference_taps(ks: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) offset of every kernel tap k = r*ks + c of the reference layer, each (N,)."""
    t = torch.arange(-(ks - 1) // 2, (ks - 1) // 2 + 1, device=device).to(dtype)  # floor(-(ks-1)/2) .. (ks-1)//2
    return t.repeat_interleave(ks), t.repeat(ks)


def deform_conv2d_reference(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0
) -> torch.Tensor:
    """Deformable convolution with the ``reference`` semantics (module docstring): ``x`` (B, C, H, W), square
    ``weight`` (C_out, C, ks, ks), ``offset`` (B, 2*ks*ks, h, w) (rows of every tap first, then columns);
    returns (B, C_out, h, w). No bias."""
    if x.dim() != 4 or weight.dim() != 4 or offset.dim() != 4:
        raise ValueError(
            f"deform_conv2d_reference: expected 4-D input, offset and weight, got {tuple(x.shape)}, "
            f"{tuple(offset.shape)}, {tuple(weight.shape)}"
        )
    C_out, C_w, ks, ks2 = weight.shape
    B, C = x.shape[:2]
    if ks != ks2:
        raise ValueError(f"deform_conv2d_reference: the kernel must be square, got {ks}x{ks2}")
    if C_w != C:
        raise ValueError(f"deform_conv2d_reference: weight expects {C_w} input channels, input has {C}")
    N = ks * ks
    if offset.shape[0] != B or offset.shape[1] != 2 * N:
        raise ValueError(f"deform_conv2d_reference: offset must be (B={B}, {2 * N}, h, w), got {tuple(offset.shape)}")
    h, w = offset.shape[2:]
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    H, W = x.shape[2:]
    dev, dt = offset.device, offset.dtype
    tr, tc = _reference_taps(ks, dev, dt)
    rows = (1 + stride * torch.arange(h, device=dev)).to(dt).view(1, 1, h, 1) + tr.view(1, N, 1, 1)
    cols = (1 + stride * torch.arange(w, device=dev)).to(dt).view(1, 1, 1, w) + tc.view(1, N, 1, 1)
    idx, wts = [], []
    per_axis = []
    for base, off, n in ((rows, offset[:, :N], H), (cols, offset[:, N:], W)):
        p = base + off  # (B, N, h, w)
        lo = torch.floor(p.detach())
        hi, lo = (lo + 1).clamp(0, n - 1), lo.clamp(0, n - 1)
        p = p.clamp(0, n - 1)
        per_axis.append(((lo.long(), 1 + (lo - p)), (hi.long(), 1 - (hi - p))))
    (r_lo, r_hi), (c_lo, c_hi) = per_axis
    for (ri, ru), (ci, cv) in ((r_lo, c_lo), (r_hi, c_hi), (r_lo, c_hi), (r_hi, c_lo)):
        idx.append((ri * W + ci).reshape(B, N * h * w))
        wts.append((ru * cv).reshape(B, N * h * w))
    L = h * w
    idx = torch.stack(idx, 1).view(B, 1, 4 * N * L).expand(B, C, 4 * N * L)
    wts = torch.stack(wts, 1).view(B, 1, 4, N * L).to(x.dtype)
    corners = torch.gather(x.reshape(B, C, H * W), 2, idx).view(B, C, 4, N * L)
    cols_ = (corners * wts).sum(2).view(B, C * N, L)  # channel-major, then tap: matches the flattened kernel
    return torch.matmul(weight.reshape(C_out, C * N), cols_).view(B, C_out, h, w)


class ReferenceDeformConv2d(nn.Module):
    """The deformable layer with the ``reference`` semantics (module docstring), predicting its offsets from its
    own input.

    ``offset`` = nn.Conv2d(in_channels -> 2*ks*ks, kernel 3, stride ``stride``, padding 1), weights set to zero,
    bias at PyTorch's default initialisation; ``weight`` (out, in, ks, ks), initialised like ``nn.Conv2d``, no
    bias. Parameters are drawn in the reference's order (kernel, then the offset convolution), so the same torch
    seed gives the same initial weights as that layer. Parameter count: out*in*ks^2 + 2 ks^2 (9 in + 1), the same
    as :class:`DeformConv2d` with a k3 offset convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0):
        super().__init__()
        if not isinstance(kernel_size, int):
            raise ValueError(f"ReferenceDeformConv2d: kernel_size must be one int (square), got {kernel_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, int(stride), int(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.bias = None
        self.offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, 3, stride=self.stride, padding=1)
        nn.init.zeros_(self.offset.weight)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(h_out, w_out): the offset convolution's output size, which is the layer's."""
        return conv_out_size(h, 3, self.stride, 1), conv_out_size(w, 3, self.stride, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_conv2d_reference(x, self.offset(x), self.weight, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, semantics=reference"
        )


__all__ = ["DeformConv2d", "ReferenceDeformConv2d", "conv_out_size", "deform_conv2d", "deform_conv2d_reference"]
