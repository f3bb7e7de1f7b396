"""A synthetic action benchmark made of real photographs, for pretraining to learn.

The shapes benchmark (:mod:`mar.data.synth`, kind ``"shapes"``) draws its backgrounds
with per-pixel noise, which leaves a masked autoencoder nothing to reconstruct. This one
moves a virtual camera over real photographs and moves a real-texture object (a disc or
ellipse cut from another photograph) over them, so a hidden patch is predictable from its
neighbours the way it is in natural video.

Every clip has the same ingredients: a background photograph, an object cut from a
different photograph, a camera pose (position, zoom, roll) and an object pose (position,
size). Each of the seven pose values follows a straight path ``centre + span * (t - 1/2)``
over the clip, with the same random centre and span in every class. The class decides
which one value moves and in which direction; every other value stays at a random point of
its own path. A single frame therefore shows the same photographs, camera pose and object
size in every class (the object's place on screen spreads a little wider in the camera
classes, where it moves with the picture), and each class is the time reversal of another
one (pan left / pan right, zoom in / zoom out, ...), so the set of frames of a clip does
not tell a class from its reverse either, only their order does. In the camera classes
the object is part of the scene and moves with it; in the object classes the camera is
still.

The photographs are those that scikit-image and scikit-learn ship inside their PyPI
wheels (nothing is downloaded at run time). Licences, as their docstrings and README give
them:

============================  =====================  =====================================
image                         package                licence
============================  =====================  =====================================
astronaut (Eileen Collins)    scikit-image           public domain (NASA)
coffee                        scikit-image           CC0 (Rachel Michetti)
chelsea (a cat)               scikit-image           CC0 (Stefan van der Walt)
rocket (DSCOVR launch)        scikit-image           public domain (SpaceX)
immunohistochemistry          scikit-image           no known copyright restrictions (CMMI)
camera (grey)                 scikit-image           CC0 (Lav Varshney)
brick (grey)                  scikit-image           CC0 (CC0Textures)
grass (grey)                  scikit-image           CC0 (linolafett, DeviantArt)
gravel (grey)                 scikit-image           CC0 (CC0Textures)
coins (grey)                  scikit-image           no known copyright restrictions
                                                     (Brooklyn Museum)
china.jpg                     scikit-learn           CC BY 2.0 (danielbuechele, Flickr)
flower.jpg                    scikit-learn           CC BY 2.0 (vultilion, Flickr)
============================  =====================  =====================================

The CC BY 2.0 images require attribution wherever a generated set is redistributed.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import numpy as np

CLASSES = (
    "camera panning left", "camera panning right", "camera tilting up",
    "camera tilting down", "camera zooming in", "camera zooming out",
    "picture turning clockwise", "picture turning anticlockwise",
    "object moving left", "object moving right", "object approaching", "object receding",
)
SKIMAGE_IMAGES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                  "camera", "brick", "grass", "gravel", "coins")
SKLEARN_IMAGES = ("china.jpg", "flower.jpg")
WORLD = 2.8  # a photograph's short side, in clip widths: room to pan, zoom out and roll

# pose value -> (centre range, span range) of its path; positions in clip widths, zoom
# and size as natural logs, roll in radians
PATHS = {
    "camera x": ((-0.12, 0.12), (0.35, 0.5)),
    "camera y": ((-0.12, 0.12), (0.35, 0.5)),
    "camera zoom": ((-0.1, 0.1), (0.45, 0.6)),  # log of the world width one clip shows
    "camera roll": ((-0.25, 0.25), (0.6, 0.9)),
    "object x": ((-0.15, 0.15), (0.45, 0.6)),
    "object y": ((-0.15, 0.15), (0.45, 0.6)),
    "object size": ((math.log(0.17) - 0.1, math.log(0.17) + 0.1), (0.6, 0.8)),  # log radius
}
# class -> (the pose value that moves, +1 if it grows over time)
MOTION = {
    "camera panning left": ("camera x", -1), "camera panning right": ("camera x", 1),
    "camera tilting up": ("camera y", -1), "camera tilting down": ("camera y", 1),
    "camera zooming in": ("camera zoom", -1), "camera zooming out": ("camera zoom", 1),
    # a growing roll turns the view anticlockwise over the scene, so the picture turns
    # clockwise on screen (image y points down; checked in tests/test_natural.py)
    "picture turning clockwise": ("camera roll", 1),
    "picture turning anticlockwise": ("camera roll", -1),
    "object moving left": ("object x", -1), "object moving right": ("object x", 1),
    "object approaching": ("object size", 1), "object receding": ("object size", -1),
}


def _load_photographs() -> list[np.ndarray]:
    """The pool, as uint8 (H, W, 3) arrays in a fixed order (grey ones repeated to RGB)."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_image
    except ImportError as err:
        raise ImportError(f"the natural benchmark needs scikit-image and scikit-learn, "
                          f"whose wheels ship its photographs (dependencies of mar: "
                          f"pip install scikit-image scikit-learn): {err}") from err
    images = [getattr(skimage.data, name)() for name in SKIMAGE_IMAGES]
    images += [load_sample_image(name) for name in SKLEARN_IMAGES]
    images = [np.repeat(im[..., None], 3, 2) if im.ndim == 2 else im for im in images]
    for im in images:
        im.setflags(write=False)  # cached and shared
    return images


@lru_cache(maxsize=1)
def photographs() -> tuple[np.ndarray, ...]:
    return tuple(_load_photographs())


@lru_cache(maxsize=1)
def pool_digest() -> str:
    """A short hash of the pool's pixels: a package release that changes an image changes
    it, so a cached set made from other pixels is rebuilt."""
    h = hashlib.sha256()
    for im in photographs():
        h.update(str(im.shape).encode())
        h.update(np.ascontiguousarray(im).tobytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=64)
def _world(index: int, size: int) -> np.ndarray:
    """Photograph ``index`` resized (antialiased) so that its short side is ``WORLD`` clip
    widths of ``size`` pixels: float32 (H, W, 3)."""
    from PIL import Image

    im = photographs()[index]
    scale = WORLD * size / min(im.shape[:2])
    shape = (max(round(im.shape[1] * scale), 2), max(round(im.shape[0] * scale), 2))
    world = np.asarray(Image.fromarray(im).resize(shape, Image.Resampling.LANCZOS),
                       dtype=np.float32)
    world.setflags(write=False)  # cached and shared between clips
    return world


def _sample(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``img`` (H, W, C) at pixel coordinates ``y``, ``x`` (any equal
    shape), mirrored at the borders: (..., C)."""
    h, w, c = img.shape
    y = (h - 1) - np.abs(np.mod(y, 2 * (h - 1)) - (h - 1))
    x = (w - 1) - np.abs(np.mod(x, 2 * (w - 1)) - (w - 1))
    y0 = np.minimum(y.astype(np.int64), h - 2)  # y >= 0: truncation is the floor
    x0 = np.minimum(x.astype(np.int64), w - 2)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    flat, i = img.reshape(-1, c), y0 * w + x0
    top = np.take(flat, i, 0) * (1 - fx) + np.take(flat, i + 1, 0) * fx
    bottom = np.take(flat, i + w, 0) * (1 - fx) + np.take(flat, i + w + 1, 0) * fx
    return top * (1 - fy) + bottom * fy


def _rotation(angle: float) -> np.ndarray:
    """2x2 rotation acting on (y, x) vectors."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def _camera(paths: dict, t: int) -> tuple[np.ndarray, float, float]:
    """Frame ``t``'s camera: scene position of the clip's middle as (y, x), zoom (scene
    clip widths per clip width) and roll (radians). The camera's x and y are measured
    along its own axes at its mean roll, so a pan moves the picture along the clip's
    rows whatever the roll, and a roll turns the picture about the clip's middle."""
    axes = _rotation(float(np.mean(paths["camera roll"])))
    origin = axes @ np.array([paths["camera y"][t], paths["camera x"][t]])
    return origin, math.exp(paths["camera zoom"][t]), paths["camera roll"][t]


def pose_paths(label: int, num_frames: int, rng: np.random.Generator) -> dict:
    """Each pose value over the clip, (T,) arrays: the class's value moves along its path,
    every other one rests at a random frame's point of its own."""
    moving, sign = MOTION[CLASSES[label]]
    phase = np.linspace(-0.5, 0.5, num_frames)
    paths = {}
    for name, ((c_lo, c_hi), (s_lo, s_hi)) in PATHS.items():
        centre, span = rng.uniform(c_lo, c_hi), rng.uniform(s_lo, s_hi)
        rest = phase[rng.integers(num_frames)]  # drawn for every value: same stream
        paths[name] = centre + span * (sign * phase if name == moving
                                       else np.full(num_frames, rest))
    return paths


def render(label: int, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of class ``label``: uint8 (T, size, size, 3)."""
    photos = photographs()
    back, obj = rng.choice(len(photos), 2, replace=False)
    background, texture = _world(int(back), size), _world(int(obj), size)
    flips = rng.integers(2, size=2)
    if flips[0]:
        background = np.ascontiguousarray(background[:, ::-1])
    if flips[1]:
        texture = np.ascontiguousarray(texture[:, ::-1])
    p = pose_paths(label, num_frames, rng)
    aspect = math.exp(rng.uniform(-0.3, 0.3))  # ellipses as well as discs
    spin = rng.uniform(-math.pi, math.pi)      # the object's orientation in the scene
    tex_centre = rng.uniform(0.3, 0.7, 2) * texture.shape[:2]
    tex_radius = rng.uniform(0.8, 1.2) * math.exp(PATHS["object size"][0][1]) * size
    gain, offset = rng.uniform(0.85, 1.15), rng.uniform(-12, 12)
    camera_moves = MOTION[CLASSES[label]][0].startswith("camera")
    anchor = rng.integers(num_frames)  # camera classes: the object sits in the scene
    # pixel centres of the clip in clip widths around its middle, as (y, x): (2, S, S)
    n = (np.mgrid[0:size, 0:size].astype(np.float64) + 0.5) / size - 0.5
    back_middle = np.array(background.shape[:2])[:, None, None] / 2 - 0.5
    frames = []
    for t in range(num_frames):
        origin, zoom, roll = _camera(p, t)
        scene = origin[:, None, None] + zoom * np.einsum("ij,jyx->iyx", _rotation(roll), n)
        # the object in the scene, placed where the camera of frame `ref` saw it at the
        # object's own pose: the same frame in the object classes, a fixed one otherwise
        ref = anchor if camera_moves else t
        ref_origin, ref_zoom, ref_roll = _camera(p, ref)
        seen = np.array([p["object y"][ref], p["object x"][ref]])
        where = ref_origin + ref_zoom * _rotation(ref_roll) @ seen
        radius = ref_zoom * math.exp(p["object size"][ref])
        # object coordinates: unit circle = its edge
        q = np.einsum("ji,jyx->iyx", _rotation(ref_roll + spin),
                      scene - where[:, None, None]) / radius
        q[0] *= aspect
        edge = 1.5 / (size * radius)  # a soft edge of about 1.5 pixels
        alpha = np.clip((1 - np.hypot(q[0], q[1])) / edge, 0, 1)
        frame = _sample(background, *(scene * size + back_middle))
        inside = alpha > 0  # the texture is read only under the object
        a = alpha[inside][:, None]
        fg = _sample(texture, *(q[:, inside] * tex_radius + tex_centre[:, None]))
        frame[inside] = (1 - a) * frame[inside] + a * fg
        frames.append(frame)
    clip = np.stack(frames) * gain + offset
    return np.clip(np.rint(clip), 0, 255).astype(np.uint8)
