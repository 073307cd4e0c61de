"""``s3://BUCKET[/PREFIX]``: parsed without boto3, so settings are checked before anything imports it."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where an object store lives: a bucket and a key prefix."""

    bucket: str
    prefix: str
    """Empty, or ends with ``/``."""

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``ValueError`` (one sentence with the fix) for anything but ``s3://BUCKET[/PREFIX]``."""
        if not url.startswith("s3://"):
            raise ValueError(f"{url!r} is not an s3:// URL; write s3://BUCKET or s3://BUCKET/PREFIX")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not _BUCKET_RE.match(bucket):
            raise ValueError(f"{url!r} names no valid bucket; write s3://BUCKET or s3://BUCKET/PREFIX")
        prefix = prefix.strip("/")
        if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
            raise ValueError(f"{url!r}: the prefix may not contain empty, '.' or '..' segments")
        if "?" in url or "#" in url:
            raise ValueError(f"{url!r}: an s3:// URL takes no query or fragment; write s3://BUCKET[/PREFIX]")
        return cls(bucket, f"{prefix}/" if prefix else "")
