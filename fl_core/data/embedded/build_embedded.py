"""Rebuild the embedded real-writer files from ../shared/data/femnist_digits.

    .venv/bin/python fl_core/data/embedded/build_embedded.py [SOURCE_DIR [OUT_DIR]]

Reads the TFF-layout float32 pair, stores the same writers in the same layout with
uint8 pixels (exactly k/255 → k, lossless), gzip level 6 (level 9 saves 3% at five times
the time), one chunk per dataset, and the HDF5 1.10+ object format (its compact headers
are what make 439 writers fit in ~4 MB).
The output is byte-for-byte deterministic; the script prints the sha256 of each file for
`EMBEDDED_FILES` in `fl_core/data/embedded.py`, and fails if the pair exceeds the
size budget instead of silently dropping writers.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

from fl_core.data.embedded import EMBEDDED_DIR, EMBEDDED_FILES  # noqa: E402
from fl_core.data.tff_h5 import Split, read_split  # noqa: E402

SOURCE = REPO / ".." / "shared" / "data" / "femnist_digits"
BUDGET_BYTES = 8_000_000


def write_split(split: Split, path: Path) -> None:
    tmp = path.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w", libver="latest") as f:
        examples = f.create_group("examples")
        for k, w in enumerate(split.writer_ids):
            rows = slice(int(split.offsets[k]), int(split.offsets[k + 1]))
            g = examples.create_group(w)
            g.create_dataset("label", data=split.labels[rows].astype(np.int32))
            px = split.pixels[rows]
            g.create_dataset(
                "pixels", data=px, chunks=px.shape if len(px) else None,
                compression="gzip" if len(px) else None, compression_opts=6 if len(px) else None,
            )
    tmp.replace(path)


def main(source: Path = SOURCE, out_dir: Path = EMBEDDED_DIR) -> int:
    total = 0
    for split_name, out_name in zip(("train", "test"), EMBEDDED_FILES):
        split = read_split(source / f"fed_emnist_digitsonly_{split_name}.h5")
        out = out_dir / out_name
        write_split(split, out)
        size = out.stat().st_size
        total += size
        sha = hashlib.sha256(out.read_bytes()).hexdigest()
        per_writer = np.split(split.labels, split.offsets[1:-1])
        sevens = sum(int((labels == 7).any()) for labels in per_writer)
        print(f"{out.name}: {len(split.writer_ids)} writers, {len(split.labels)} images, "
              f"{sevens} writers with a 7, {size:,} bytes, sha256 {sha}")
    print(f"total {total:,} bytes (budget {BUDGET_BYTES:,})")
    if total > BUDGET_BYTES:
        print("over budget: select fewer writers (most train images first, keeping ≥150 writers "
              "and ≥60 with a train 7)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:3]]
    sys.exit(main(*args))
