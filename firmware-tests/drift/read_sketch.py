#!/usr/bin/env python3
"""Read sketches written by fleetml's Rust drift layer with Apache DataSketches for Python and
print what it sees as JSON (used by shared/tests/python_interop.rs and the drift bench).

    python read_sketch.py kll FILE RANK...        -> {"n": .., "k": .., "min": .., "max": .., "quantiles": [..]}
    python read_sketch.py frequent FILE           -> {"total_weight": .., "items": [[item, estimate], ..]}
    python read_sketch.py rank-error FILE K       -> {"max_rank_error": ..} of a k-sketch of the float32 values in FILE
"""

import json
import sys

import numpy as np
from datasketches import PyLongsSerDe, frequent_items_error_type, frequent_items_sketch, kll_floats_sketch


def main(argv):
    command, path = argv[0], argv[1]
    if command == "kll":
        with open(path, "rb") as handle:
            sketch = kll_floats_sketch.deserialize(handle.read())
        ranks = [float(rank) for rank in argv[2:]]
        quantiles = [float(sketch.get_quantile(rank, True)) for rank in ranks]
        print(json.dumps({"n": sketch.n, "k": sketch.k, "min": float(sketch.get_min_value()), "max": float(sketch.get_max_value()), "quantiles": quantiles}))
    elif command == "frequent":
        with open(path, "rb") as handle:
            sketch = frequent_items_sketch.deserialize(handle.read(), PyLongsSerDe())
        rows = sketch.get_frequent_items(frequent_items_error_type.NO_FALSE_NEGATIVES)
        print(json.dumps({"total_weight": sketch.total_weight, "items": [[int(row[0]), int(row[1])] for row in rows]}))
    elif command == "rank-error":
        values = np.fromfile(path, dtype="<f4")
        sketch = kll_floats_sketch(int(argv[2]))
        sketch.update(values)
        ordered = np.sort(values)
        n = len(ordered)
        # Compare each retained quantile's claimed rank with its true rank, as the Rust bench does.
        probes = np.linspace(0.0, 1.0, 1001)[1:-1]
        quantiles = np.array([sketch.get_quantile(float(rank), True) for rank in probes], dtype=np.float32)
        true_ranks = np.searchsorted(ordered, quantiles, side="right") / n
        print(json.dumps({"max_rank_error": float(np.max(np.abs(true_ranks - probes))), "bytes": len(sketch.serialize())}))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
