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
"""

from __future__ import annotations

import math

import torch
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


__all__ = ["DeformConv2d", "conv_out_size", "deform_conv2d"]
