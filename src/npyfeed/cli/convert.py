"""``npyfeed convert SOURCE... DEST``: rewrite data in the layout that reads fastest (see
:mod:`npyfeed.write.convert`)."""

from __future__ import annotations

import argparse
import sys

from npyfeed.errors import NpyfeedError
from npyfeed.storage.urls import redact

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    from npyfeed.write.convert import convert

    if len(args.paths) < 2:
        print("npyfeed convert: give a SOURCE and a DEST", file=sys.stderr)
        return 2
    *sources, dest = args.paths
    try:
        result = convert(
            sources[0] if len(sources) == 1 else sources,
            dest,
            dtype=args.dtype,
            casting=args.casting,
            shard_bytes=args.shard_size,
            memory_bytes=args.memory,
            progress=not args.no_progress and sys.stderr.isatty(),
            max_header_size=args.max_header_size,
            storage_options=dict(args.storage_option) or None,
        )
    except NpyfeedError as e:
        print(redact(f"npyfeed convert: {e}"), file=sys.stderr)
        return 1
    except OSError as e:
        print(redact(f"npyfeed convert: {e.filename or ''}: {e.strerror or e}"), file=sys.stderr)
        return 1
    files = result.outputs[0] if len(result.outputs) == 1 else f"{len(result.outputs)} shards {result.outputs[0]}..."
    rate = result.bytes_read / max(result.seconds, 1e-9) / 1e6
    print(
        f"wrote {files}: {result.rows:,} rows of {result.dtype} ({result.kind}), {result.bytes_written:,} data "
        f"bytes in {result.seconds:.2f} s ({rate:,.0f} MB/s read)"
    )
    return 0
