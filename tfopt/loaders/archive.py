"""A zip archive (a Keras `.keras` file) checked from its directory before anything reads a
member: member count, paths, and the bytes it declares it would unpack to.

zipfile reads no member past its declared size, so the declared sizes bound what loading
can unpack; a zip bomb (a 2 MB file declaring 2 GiB of zeros) is refused without inflating
one byte of it.
"""
from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from tfopt.errors import InputError

MAX_MEMBERS = 10_000  # a .keras holds three; assets add a few
# what an archive may unpack to unless --max-unpacked-bytes says otherwise: trained weights
# barely compress, so a real model unpacks to about its own size; zeros compress 1000:1
AUTO_RATIO = 100
AUTO_SLACK = 256 << 20


def unpacked_limit(path: Path, max_unpacked_bytes: int | None) -> int:
    return max_unpacked_bytes if max_unpacked_bytes is not None else \
        AUTO_RATIO * path.stat().st_size + AUTO_SLACK


def check_archive(path: Path, max_unpacked_bytes: int | None = None) -> None:
    """Refuse (exit 2, naming the limit) an archive that is not a zip, holds more than
    MAX_MEMBERS members or a path leaving its directory, or declares more than the limit."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a readable zip archive ({exc}); a .keras file is "
                         "written by model.save('model.keras')") from exc
    if len(members) > MAX_MEMBERS:
        raise InputError(f"{path} holds {len(members)} archive members, over the limit of "
                         f"{MAX_MEMBERS}; a .keras file holds a handful")
    for member in members:
        name = PurePosixPath(member.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or ":" in member.filename:
            raise InputError(f"{path} holds the member '{member.filename}', whose path leaves "
                             "the archive; tfopt does not open such files")
    declared = sum(m.file_size for m in members)
    limit = unpacked_limit(path, max_unpacked_bytes)
    if declared > limit:
        packed = max(1, sum(m.compress_size for m in members))
        raise InputError(
            f"{path} would unpack to {declared:,} bytes ({declared / packed:,.0f}x its "
            f"compressed size), over the limit of {limit:,} bytes; if you trust the file, "
            f"pass --max-unpacked-bytes {declared}")
