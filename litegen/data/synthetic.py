"""Procedural captioned clips: one shape moving or bouncing on a plain background.

The default training data of the tiny DiT, so the visual vocabulary is deliberately small (3 shapes,
8 colours, 10 motions, plain backgrounds, constant speed) and every caption is exactly true.
"""

from typing import Any

import numpy as np

# Named colours far apart in RGB so they survive 32 px rendering and a lossy round trip.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 50, 190),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square", "triangle")
# name -> (unit velocity x, unit velocity y, bounces); image y grows downwards.
MOTIONS: dict[str, tuple[int, int, bool]] = {
    "moving left": (-1, 0, False),
    "moving right": (1, 0, False),
    "moving up": (0, -1, False),
    "moving down": (0, 1, False),
    "moving diagonally up and left": (-1, -1, False),
    "moving diagonally up and right": (1, -1, False),
    "moving diagonally down and left": (-1, 1, False),
    "moving diagonally down and right": (1, 1, False),
    "bouncing left and right": (1, 0, True),
    "bouncing up and down": (0, 1, True),
}
RADIUS_FRACTION = 0.25  # of the short side: a 32 px clip gets an 8 px radius, recognisable
SQUARE_HALF_SIDE = 0.85  # of the radius, so a square's area is close to the circle's
MOVE_TRAVEL = 0.8  # of the free range: a straight move crosses most of the frame, never a wall
BOUNCE_TRAVEL = 1.6  # of the free range: > 1, so a bounce always happens, and 0.6+ after it
COLOUR_CHANGE_PROB = 0.25


def render_clip(rng: np.random.Generator, frames: int, height: int, width: int,
                position_jitter: float = 0.0) -> tuple[np.ndarray, str, dict]:
    """A random clip as (uint8 [frames, height, width, 3], caption, attrs); deterministic in rng.

    position_jitter in [0, 1] randomises where the path starts (0: the caption alone fixes the
    clip; 1: anywhere the motion fits).
    """
    if frames < 1 or height < 4 or width < 4:
        raise ValueError(f"clip must be at least 1x4x4 (frames x height x width), got {frames}x{height}x{width}")
    attrs = sample_attrs(rng, frames, height, width, position_jitter)
    return draw_clip(attrs, frames, height, width), caption_for(attrs), attrs


def sample_attrs(rng: np.random.Generator, frames: int, height: int, width: int,
                 position_jitter: float = 0.0) -> dict[str, Any]:
    """Pick shape, colours, background and motion path; the only function that draws from rng."""
    names = list(COLOURS)
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = names[rng.integers(len(names))]
    colour_end = colour
    if rng.random() < COLOUR_CHANGE_PROB:
        colour_end = _pick_other(rng, names, {colour})
    background = _pick_other(rng, names, {colour, colour_end})
    motion = list(MOTIONS)[rng.integers(len(MOTIONS))]
    radius_px = RADIUS_FRACTION * min(height, width)
    path = motion_path(rng, motion, frames, height, width, radius_px, position_jitter)
    return {"shape": shape, "colour": colour, "colour_end": colour_end, "background": background,
            "motion": motion, "radius_px": radius_px, "path_px": np.round(path, 3).tolist()}


def _pick_other(rng: np.random.Generator, names: list[str], taken: set[str]) -> str:
    free = [n for n in names if n not in taken]
    return free[rng.integers(len(free))]


def motion_path(rng: np.random.Generator, motion: str, frames: int, height: int, width: int,
                radius_px: float, position_jitter: float = 0.0) -> np.ndarray:
    """Shape centres [frames, 2] (x, y) in pixels, constant speed, reflected at the borders.

    Without jitter a path is centred in its free range: a still axis sits in the middle, a
    straight move travels symmetrically about the centre, a bounce starts mid-frame moving
    towards +x/+y. Jitter moves the start by up to that fraction of the slack on either side.
    """
    vx, vy, bounces = MOTIONS[motion]
    steps = max(frames - 1, 1)
    axes = []
    for unit, size in ((vx, width), (vy, height)):
        lo, hi = radius_px, size - radius_px  # keeps the whole shape inside the frame
        span = hi - lo
        # Draw every random number whatever the jitter, so clips differ only where jitter acts.
        offset, flip = rng.uniform(-1.0, 1.0), rng.random() < 0.5
        travel = 0.0 if unit == 0 else (BOUNCE_TRAVEL if bounces else MOVE_TRAVEL) * span
        slack = span / 2 if unit == 0 or bounces else (span - travel) / 2
        start = (lo + hi) / 2 + position_jitter * offset * slack
        if unit != 0 and not bounces:
            start -= unit * travel / 2  # the move is centred on the start's slot
        sign = -1.0 if (bounces and position_jitter > 0 and flip) else float(unit or 1)
        axes.append(reflect(start + sign * travel / steps * np.arange(frames), lo, hi))
    return np.stack(axes, axis=1)


def reflect(pos: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] as a ball bouncing elastically off both walls would be."""
    span = hi - lo
    if span <= 0:
        return np.full_like(pos, lo)
    u = np.mod(pos - lo, 2 * span)
    return lo + np.where(u <= span, u, 2 * span - u)


def draw_clip(attrs: dict[str, Any], frames: int, height: int, width: int) -> np.ndarray:
    """Render attrs to uint8 [frames, height, width, 3]; edges anti-aliased over one pixel."""
    path = np.asarray(attrs["path_px"], dtype=np.float32)
    # Pixel centres sit at +0.5; [T, 1, W] and [T, H, 1] broadcast to [T, H, W].
    dx = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :] - path[:, 0, None, None]
    dy = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None] - path[:, 1, None, None]
    sdf = shape_sdf(attrs["shape"], dx, dy, attrs["radius_px"])
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
    fg = colour_ramp(attrs["colour"], attrs["colour_end"], frames)[:, None, None, :]
    bg = np.asarray(COLOURS[attrs["background"]], dtype=np.float32)
    return np.rint(bg * (1.0 - alpha) + fg * alpha).astype(np.uint8)


def shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, radius_px: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) from offsets to the shape centre."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - radius_px
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - SQUARE_HALF_SIDE * radius_px
    if shape == "triangle":
        # Apex at the top, base at the bottom of the radius box: max of three edge half-planes.
        base = dy - radius_px
        left = (-2.0 * dx - (dy + radius_px)) / np.sqrt(5.0)
        right = (2.0 * dx - (dy + radius_px)) / np.sqrt(5.0)
        return np.maximum(base, np.maximum(left, right))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def colour_ramp(start: str, end: str, frames: int) -> np.ndarray:
    """Per-frame RGB float [frames, 3], linear from start (first frame) to end (last frame)."""
    w = np.linspace(0.0, 1.0, frames, dtype=np.float32)[:, None] if frames > 1 else np.zeros((1, 1), np.float32)
    a, b = (np.asarray(COLOURS[c], dtype=np.float32) for c in (start, end))
    return a * (1.0 - w) + b * w


def caption_for(attrs: dict[str, Any]) -> str:
    """'a red circle moving left on a blue background' or 'a triangle changing from yellow to ...'."""
    tail = f"{attrs['motion']} on {_article(attrs['background'])} {attrs['background']} background"
    if attrs["colour_end"] != attrs["colour"]:
        return f"a {attrs['shape']} changing from {attrs['colour']} to {attrs['colour_end']} {tail}"
    return f"{_article(attrs['colour'])} {attrs['colour']} {attrs['shape']} {tail}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"
