"""``--data shapes``: a generated data set on which pruning decisions matter (issue 12, item 4).

``--data synthetic`` is separable by almost any width (a nearest-class-mean classifier on raw pixels
gets it right); here a class is one of 20 shapes in one colour family, drawn at a random position,
scale, rotation and colour over a random tinted gradient, behind which lie small distractor shapes
of any kind and colour, plus pixel noise. Class ``c`` is colour family ``c % F`` and shape ``c // F``,
with ``F = max(5, ceil(classes / 20))`` families (fewer if there are fewer classes) whose hues are
spread evenly around the colour wheel: 100 classes = 5 families of 72 degrees (each family's hues
within +-22 degrees of its centre) x 20 shapes; 10 classes = 5 families x 2 shapes. The colour is
the easy cue, the shape under rotation, scale and clutter the hard one that takes capacity and
epochs. Shapes are told apart up to rotation and mirroring (a flip is part of the training
augmentation), and the first ones are the most distinct.

Rendering is vectorised in torch on the CPU: each object is a signed distance function of the pixel
grid in the shape's own frame, antialiased over one pixel; images are drawn in chunks, all random
draws coming from one generator, so a (classes, n, seed) triple always gives the same images.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from distill.data import TensorSplit
from pruning.errors import UserError

Sdf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

N_SHAPES = 20
FAMILIES = 5                # colour families, at least (more when classes > 20 x 5)
CLUTTER = 4                 # distractors per image, drawn behind the class object
SCALE = (7.0, 12.0)         # the class object's radius in pixels at 32 px
CLUTTER_SCALE = (2.5, 5.0)  # the distractors' radius
NOISE = 0.04                # std of the per-pixel Gaussian noise (images in [0, 1])
CHUNK = 4096                # images rendered at once (bounds memory; part of what a seed gives)


def _circle(x, y, r=1.0):
    return torch.hypot(x, y) - r


def _box(x, y, a: float, b: float):
    qx, qy = x.abs() - a, y.abs() - b
    return torch.hypot(qx.clamp(min=0), qy.clamp(min=0)) + torch.maximum(qx, qy).clamp(max=0)


def _star(n: int, inner: float) -> Sdf:
    """A star polygon with ``n`` outer vertices at radius 1 and ``n`` inner ones at ``inner``; with
    ``inner = cos(pi/n)`` it is the regular n-gon. Folded into one half-wedge [0, pi/n], the boundary
    is the segment from the outer to the inner vertex: distance to its line (exact inside, close outside)."""
    wedge = 2 * math.pi / n
    ax, ay = 1.0, 0.0
    bx, by = inner * math.cos(math.pi / n), inner * math.sin(math.pi / n)
    nx, ny = by - ay, ax - bx  # outward normal of A->B
    norm = math.hypot(nx, ny)
    nx, ny = nx / norm, ny / norm

    def sdf(x, y):
        r = torch.hypot(x, y)
        t = (torch.remainder(torch.atan2(y, x) + wedge / 2, wedge) - wedge / 2).abs()
        return (r * torch.cos(t) - ax) * nx + (r * torch.sin(t) - ay) * ny

    return sdf


def _flower(petals: int, depth: float) -> Sdf:
    return lambda x, y: torch.hypot(x, y) - 0.7 * (1 + depth * torch.cos(petals * torch.atan2(y, x)))


def _outline(sdf: Sdf, width: float) -> Sdf:
    return lambda x, y: sdf(x, y).abs() - width


_TRIANGLE, _SQUARE = _star(3, 0.5), _star(4, math.cos(math.pi / 4))

# The 20 shapes, most distinct first; each fits in about the unit disk.
SHAPES: list[Sdf] = [
    lambda x, y: _circle(x, y, 0.9),
    _TRIANGLE,
    _SQUARE,
    _star(5, 0.45),
    lambda x, y: torch.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95)),                       # cross
    _outline(lambda x, y: _circle(x, y, 0.75), 0.2),                                                # ring
    lambda x, y: torch.maximum(_circle(x, y, 0.9), -_circle(x - 0.4, y, 0.75)),                     # crescent
    lambda x, y: _box(x, y, 0.95, 0.3),                                                             # bar
    lambda x, y: torch.maximum(_circle(x, y + 0.4), -(y + 0.4)),                                    # half disk
    lambda x, y: torch.minimum(torch.minimum(_circle(x - 0.55, y, 0.4), _circle(x + 0.55, y, 0.4)),
                               _box(x, y, 0.55, 0.1)),                                               # dumbbell
    _star(5, math.cos(math.pi / 5)),                                                                # pentagon
    _star(6, math.cos(math.pi / 6)),                                                                # hexagon
    _star(4, 0.4),
    _star(6, 0.55),
    _flower(3, 0.35),
    _flower(5, 0.3),
    _outline(_SQUARE, 0.15),
    _outline(_TRIANGLE, 0.15),
    lambda x, y: (torch.hypot(x / 0.95, y / 0.5) - 1) * 0.5,                                        # ellipse
    lambda x, y: torch.maximum(_circle(x, y, 0.9), torch.hypot(x, y) * torch.sin(0.6 - torch.atan2(y, x).abs())),
]
assert len(SHAPES) == N_SHAPES


def shapes_splits(num_classes: int, n_train: int, n_test: int) -> tuple[TensorSplit, TensorSplit]:
    """``--data shapes``: train and test sets drawn with the seeds of ``--data synthetic``'s."""
    return shapes_split(num_classes, n_train, seed=1234), shapes_split(num_classes, n_test, seed=4321)


def shapes_split(num_classes: int, n: int, seed: int, size: int = 32) -> TensorSplit:
    """``n`` images (uint8, N x 3 x size x size) of ``num_classes`` balanced classes, a function of the seed."""
    if num_classes < 2:
        raise UserError(f"--synthetic-classes {num_classes}: need at least 2 classes")
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    families = min(num_classes, max(FAMILIES, math.ceil(num_classes / N_SHAPES)))
    chunks = [_render(labels[i:i + CHUNK], families, size, gen) for i in range(0, n, CHUNK)]
    return TensorSplit(torch.cat(chunks) if chunks else torch.zeros(0, 3, size, size, dtype=torch.uint8), labels)


def _render(labels: torch.Tensor, families: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 images of ``labels``: background, distractors, then the class object, then noise."""
    m, scale = len(labels), size / 32
    images = _background(m, size, gen)
    for _ in range(CLUTTER):
        kinds = torch.randint(0, N_SHAPES, (m,), generator=gen)
        colour = _hsv_to_rgb(_uniform(m, 0, 1, gen), _uniform(m, 0.3, 1, gen), _uniform(m, 0.3, 1, gen))
        images = _draw(images, kinds, colour, _uniform(m, *CLUTTER_SCALE, gen) * scale, gen)
    # The family's hue, jittered within +-30% of the spacing between family centres.
    hue = ((labels % families).float() + _uniform(m, -0.3, 0.3, gen)) / families
    colour = _hsv_to_rgb(hue.remainder(1), _uniform(m, 0.6, 1, gen), _uniform(m, 0.6, 1, gen))
    images = _draw(images, labels // families, colour, _uniform(m, *SCALE, gen) * scale, gen, margin=0.6)
    images += NOISE * torch.randn(images.shape, generator=gen)
    return images.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _background(m: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """A weakly tinted colour of any brightness with a linear gradient in a random direction."""
    base = _hsv_to_rgb(_uniform(m, 0, 1, gen), _uniform(m, 0, 0.35, gen), _uniform(m, 0.1, 0.9, gen))
    angle, slope = _uniform(m, 0, 2 * math.pi, gen), _uniform(m, -0.4, 0.4, gen)
    ramp = torch.linspace(-0.5, 0.5, size)
    grad = torch.cos(angle)[:, None, None] * ramp[None, None, :] + torch.sin(angle)[:, None, None] * ramp[None, :, None]
    return (base[:, :, None, None] + (slope[:, None, None] * grad)[:, None]).clamp(0, 1)


def _draw(images: torch.Tensor, kinds: torch.Tensor, colour: torch.Tensor, radius: torch.Tensor,
          gen: torch.Generator, margin: float = 0.0) -> torch.Tensor:
    """Alpha-blend one object per image: shape ``kinds[i]`` of ``radius[i]`` px, random centre and angle.

    ``margin`` keeps the centre that fraction of a radius inside the frame (the class object stays visible).
    """
    m, _, h, w = images.shape
    cx = radius * margin + _uniform(m, 0, 1, gen) * (w - 2 * radius * margin)
    cy = radius * margin + _uniform(m, 0, 1, gen) * (h - 2 * radius * margin)
    angle = _uniform(m, 0, 2 * math.pi, gen)
    alpha = torch.zeros(m, h, w)
    for kind, sdf in enumerate(SHAPES):
        sel = (kinds == kind).nonzero().squeeze(1)
        if len(sel):
            alpha[sel] = _coverage(sdf, cx[sel], cy[sel], angle[sel], radius[sel], h, w)
    return images.lerp_(colour[:, :, None, None], alpha[:, None])


def _coverage(sdf: Sdf, cx, cy, angle, radius, h: int, w: int) -> torch.Tensor:
    """Fraction of each pixel inside the shape: its signed distance in pixels, ramped over one pixel."""
    dx = torch.arange(w) + 0.5 - cx[:, None, None]   # m x 1 x w
    dy = torch.arange(h)[:, None] + 0.5 - cy[:, None, None]   # m x h x 1
    cos, sin, r = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None], radius[:, None, None]
    x, y = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
    return (0.5 - sdf(x, y) * r).clamp(0, 1)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """m x 3 RGB in [0, 1] from hue, saturation and value in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h[:, None] * 6).remainder(6)
    return v[:, None] - v[:, None] * s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def _uniform(m: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(m, generator=gen)
