"""A small dataset with three kinds of damage, for the bad-sample policy tests.

4 shards x 6 clips (keys shapes-000000 .. shapes-000023, shard k holding 6k .. 6k+5):
* shard-000001.tar is cut in the middle of its 4th clip's latent: clips 9, 10, 11 are lost,
  reported once (unreadable_shard, naming shapes-000009);
* in shard-000002.tar, clip 13's latent.pth is garbage (undecodable) and clip 15 has no
  caption (missing_part).
"""

import io
import tarfile
from pathlib import Path

from litegen.config.schema import SyntheticDataConfig, VideoEncoderConfig
from litegen.data.generate import generate_synthetic_dataset
from litegen.encoders import build_video_encoder

GOOD_KEYS = sorted(f"shapes-{i:06d}" for i in range(24) if i not in (9, 10, 11, 13, 15))
SKIPS = {("shard-000001.tar", "shapes-000009", "unreadable_shard"),
         ("shard-000002.tar", "shapes-000013", "undecodable"),
         ("shard-000002.tar", "shapes-000015", "missing_part")}


def make_corrupt_dataset(folder: Path) -> str:
    cfg = SyntheticDataConfig(num_clips=24, clips_per_shard=6, shapes=[[4, 16, 16]])
    generate_synthetic_dataset(cfg, folder, build_video_encoder(VideoEncoderConfig()))
    _truncate_inside(folder / "shard-000001.tar", "shapes-000009.latent.pth")
    _rewrite(folder / "shard-000002.tar", garbage="shapes-000013.latent.pth", drop="shapes-000015.txt")
    return str(folder / "shard-*.tar")


def _truncate_inside(path: Path, member_name: str) -> None:
    with tarfile.open(path) as tar:
        member = tar.getmember(member_name)
    data = path.read_bytes()
    path.write_bytes(data[:member.offset_data + member.size // 2])


def _rewrite(path: Path, garbage: str, drop: str) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for member, data in members:
            if member.name == drop:
                continue
            if member.name == garbage:
                data = b"\x00not a torch file" * 10
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
