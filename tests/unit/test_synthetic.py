"""Synthetic clips say what they show (colours, shape, motion), and video files round-trip them."""

import re

import numpy as np
import pytest

from litegen.data.synthetic import COLOURS, render_clip
from litegen.data.video_io import read_video, tile_clips, upscale_nearest, write_video

SIZES = [(8, 32, 32), (8, 32, 48), (8, 48, 32), (12, 32, 32), (6, 24, 40)]
CAPTION = re.compile(r"^an? (?:(?P<colour>\w+) )?(?P<shape>circle|square|triangle) "
                     r"(?:changing from (?P<start>\w+) to (?P<end>\w+) )?(?P<motion>(?:moving|bouncing) [\w ]+?) "
                     r"on an? (?P<background>\w+) background$")


def parse(caption: str) -> dict:
    match = CAPTION.match(caption)
    assert match, caption
    fields = match.groupdict()
    fields["start"] = fields["start"] or fields["colour"]
    fields["end"] = fields["end"] or fields["colour"]
    return fields


def clips(count: int = 40):
    for i in range(count):
        frames, height, width = SIZES[i % len(SIZES)]
        video, caption, attrs = render_clip(np.random.default_rng([7, i]), frames, height, width)
        yield video, parse(caption), attrs


def shape_mask(frame: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Pixels closer to the shape colour than to the background."""
    pix = frame.astype(np.float32)
    return ((pix - fg) ** 2).sum(-1) < ((pix - bg) ** 2).sum(-1)


def test_render_is_deterministic_and_seed_dependent():
    a = render_clip(np.random.default_rng(3), 8, 32, 32)
    b = render_clip(np.random.default_rng(3), 8, 32, 32)
    c = render_clip(np.random.default_rng(4), 8, 32, 32)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("frames,height,width", SIZES)
def test_shapes_and_dtype(frames, height, width):
    video, caption, _ = render_clip(np.random.default_rng(0), frames, height, width)
    assert video.shape == (frames, height, width, 3) and video.dtype == np.uint8
    parse(caption)


def test_dominant_colours_match_caption():
    for video, cap, _ in clips():
        for frame, colour in ((video[0], cap["start"]), (video[-1], cap["end"])):
            values, counts = np.unique(frame.reshape(-1, 3), axis=0, return_counts=True)
            top_two = {tuple(int(v) for v in values[i]) for i in np.argsort(-counts)[:2]}
            assert top_two == {COLOURS[cap["background"]], COLOURS[colour]}, cap


def test_shape_matches_caption():
    # Fill of the bounding box: triangle 1/2, circle pi/4, square 1.
    bands = {"triangle": (0.35, 0.65), "circle": (0.68, 0.88), "square": (0.9, 1.01)}
    for video, cap, _ in clips():
        fg, bg = (np.asarray(COLOURS[cap[k]], np.float32) for k in ("start", "background"))
        mask = shape_mask(video[0], fg, bg)
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1))
        low, high = bands[cap["shape"]]
        assert low < fill < high, (cap, fill)


def centroid_path(video: np.ndarray, cap: dict) -> np.ndarray:
    """Shape centroid (x, y) per frame, following the shape's colour through a colour change."""
    bg = np.asarray(COLOURS[cap["background"]], np.float32)
    start, end = (np.asarray(COLOURS[cap[k]], np.float32) for k in ("start", "end"))
    path = []
    for t, frame in enumerate(video):
        w = t / max(len(video) - 1, 1)
        fg = start * (1 - w) + end * w
        # Coverage of each pixel, so anti-aliased edges count fractionally and the centroid is smooth.
        alpha = np.clip(((frame - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg)), 0.0, 1.0)
        ys, xs = np.indices(alpha.shape)
        path.append(((xs * alpha).sum() / alpha.sum(), (ys * alpha).sum() / alpha.sum()))
    return np.asarray(path)


def test_motion_matches_caption():
    for video, cap, _ in clips():
        step = np.diff(centroid_path(video, cap), axis=0)  # [T-1, (dx, dy)]
        words = cap["motion"].split()
        if words[0] == "bouncing":
            axis = 0 if "left" in words else 1
            assert np.abs(step[:, 1 - axis]).max() < 0.1, cap  # the other axis stays put
            signs = np.sign(step[np.abs(step[:, axis]) > 0.2, axis])
            assert (signs > 0).any() and (signs < 0).any(), cap  # it turned around at a wall
            continue
        want = (("right" in words) - ("left" in words), ("down" in words) - ("up" in words))
        for axis, direction in enumerate(want):
            if direction == 0:
                assert np.abs(step[:, axis]).max() < 0.1, cap
            else:
                assert (np.sign(step[:, axis]) == direction).all(), cap


def test_vocabulary_is_covered():
    caps = [cap for _, cap, _ in clips(300)]
    assert {c["shape"] for c in caps} == {"circle", "square", "triangle"}
    assert {c["background"] for c in caps} == set(COLOURS)
    assert any(c["start"] != c["end"] for c in caps)
    assert {c["motion"].split()[0] for c in caps} == {"moving", "bouncing"}


def test_gif_round_trip_is_exact(tmp_path):
    video, _, _ = render_clip(np.random.default_rng(1), 8, 32, 48)
    write_video(tmp_path / "clip.gif", video, fps=8)
    back, fps = read_video(tmp_path / "clip.gif")
    assert back.shape == video.shape and fps == pytest.approx(8, rel=0.05)
    assert np.array_equal(back, video)


def test_gif_with_many_colours_is_close(tmp_path):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(4, 24, 24, 3), dtype=np.uint8)
    write_video(tmp_path / "noise.gif", video, fps=10)
    back, _ = read_video(tmp_path / "noise.gif")
    assert back.shape == video.shape
    assert np.abs(back.astype(int) - video).mean() < 40


@pytest.mark.parametrize("height,width", [(32, 48), (33, 47)])
def test_mp4_round_trip_is_close(tmp_path, height, width):
    video, _, _ = render_clip(np.random.default_rng(2), 8, height, width)
    write_video(tmp_path / "clip.mp4", video, fps=8)
    back, fps = read_video(tmp_path / "clip.mp4")
    # Odd sizes are padded to even (yuv420p); the clip sits in the top-left corner.
    assert back.shape == (8, height + height % 2, width + width % 2, 3) and fps == pytest.approx(8)
    assert np.abs(back[:, :height, :width].astype(int) - video).mean() < 8


def test_tile_and_upscale():
    a, b, c = (np.full((4, 8, 8, 3), v, np.uint8) for v in (10, 20, 30))
    grid = tile_clips([a, b, c], cols=2, gap_px=2)
    assert grid.shape == (4, 18, 18, 3)
    assert grid[0, 0, 0, 0] == 10 and grid[0, 0, 10, 0] == 20 and grid[0, 10, 0, 0] == 30
    assert grid[0, 10, 10, 0] == 0  # the empty cell
    big = upscale_nearest(a[:, :2, :2], 3)
    assert big.shape == (4, 6, 6, 3) and (big == 10).all()
    with pytest.raises(ValueError, match="equal length"):
        tile_clips([a, a[:2]], cols=2)


def test_position_jitter_zero_makes_the_caption_fix_the_path():
    from litegen.data.synthetic import motion_path

    a = motion_path(np.random.default_rng(1), "moving right", 8, 32, 48, 8.0, position_jitter=0.0)
    b = motion_path(np.random.default_rng(2), "moving right", 8, 32, 48, 8.0, position_jitter=0.0)
    assert np.array_equal(a, b)
    assert a[0, 0] < 24 < a[-1, 0] and np.allclose(a[:, 1], 16.0)  # left to right, centred row
    c = motion_path(np.random.default_rng(1), "moving right", 8, 32, 48, 8.0, position_jitter=1.0)
    d = motion_path(np.random.default_rng(2), "moving right", 8, 32, 48, 8.0, position_jitter=1.0)
    assert not np.array_equal(c, d)
    for path in (a, c, d):  # the whole shape stays inside the frame
        assert path[:, 0].min() >= 8.0 and path[:, 0].max() <= 40.0
