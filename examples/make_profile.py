#!/usr/bin/env python3
"""Build a fleetml drift reference profile (`fleetml.profile`, version 1) from training data.

The container is documented in docs/drift.md; this script writes the same thing as the Rust
builder `fleetml_shared::drift::profile::Profile::build` (same bins, counts, sums and moments;
the KLL sketch is equivalent up to the sketch's randomness).

Requirements: `pip install -r firmware-tests/drift/requirements.txt` (datasketches, numpy).

Command line (CSV with a header row, or an .npz of named arrays):

    python examples/make_profile.py --csv train.csv \
        --column x0:numeric --column x1:numeric --column colour:categorical \
        --out profile.json

    python examples/make_profile.py --npz train.npz --column x0:numeric:0:input \
        --column label:categorical:0:label:output --channels pixels:image:1 --out profile.json

`--column NAME:KIND[:INDEX[:TENSOR[:SIDE]]]`: KIND is numeric or categorical; INDEX (the column
within the model tensor's rows) defaults to the column's position among the --column flags;
TENSOR defaults to `input`, SIDE to `input` (or `output`). An empty cell or NaN is a null.
`--channels NAME:TENSOR:AXIS` (npz only): per-channel moments of a whole tensor, e.g. images of
shape [N, C, H, W] with AXIS 1. `--metric NAME=METRIC` overrides a feature's metric
(numeric: wasserstein | psi | jensen_shannon | ks; categorical: jensen_shannon | chi_square).
`--labels NAME=0:red,1:green` names category codes.

From Python: `build_profile(columns, data)` with `columns` a list of dicts like
`{"name": "x0", "kind": "numeric", "index": 0, "tensor": "input", "side": "input"}` and `data` a
dict from column name to a 1-D numpy array (for channels: the whole tensor, with "axis").
"""

import argparse
import csv
import json
import math
import sys

import numpy as np
from datasketches import kll_floats_sketch

FORMAT = "fleetml.profile"
VERSION = 1


def equal_mass_edges(sorted_values, n_bins):
    """Inner edges at equal-mass quantiles, as the Rust builder: edge_i = sorted[ceil(i*n/n_bins) - 1]
    for i in 1..n_bins, keeping only strictly increasing finite values."""
    n = len(sorted_values)
    edges = []
    if n == 0:
        return edges
    for i in range(1, n_bins):
        rank = max(-(-(i * n) // n_bins), 1)
        edge = float(sorted_values[rank - 1])
        if math.isfinite(edge) and (not edges or edge > edges[-1]):
            edges.append(edge)
    return edges


def moments_of(values):
    if len(values) == 0:
        return {"count": 0, "mean": 0.0, "variance": 0.0, "min": 0.0, "max": 0.0}
    values = values.astype(np.float64)
    return {
        "count": int(len(values)),
        "mean": float(values.mean()),
        "variance": float(values.var()),  # population variance (ddof = 0)
        "min": float(values.min()),
        "max": float(values.max()),
    }


def numeric_feature(values, kll_k, n_bins):
    # Devices see float32 and count NaN and +-inf as nulls: so does the reference.
    values = np.asarray(values, dtype=np.float64).astype(np.float32)
    finite = values[np.isfinite(values)]
    nulls = int(len(values) - len(finite))
    sketch = kll_floats_sketch(kll_k)
    if len(finite):
        sketch.update(finite)
    as_f64 = np.sort(finite.astype(np.float64))
    edges = equal_mass_edges(as_f64, n_bins)
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), as_f64, side="left")  # edges strictly below
    counts = np.bincount(bins, minlength=len(edges) + 1)
    sums = np.zeros(len(edges) + 1, dtype=np.float64)
    np.add.at(sums, bins, as_f64)  # unbuffered, in order: the same sums as the Rust builder's loop
    return {
        "kll": sketch.serialize().hex(),
        "bin_edges": edges,
        "bin_counts": [int(count) for count in counts],
        "bin_sums": [float(total) for total in sums],
        "moments": moments_of(finite),
        "nulls": nulls,
    }


def categorical_feature(values, labels=None):
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    if np.any(present != np.trunc(present)):
        raise ValueError("categorical values must be integral codes")
    codes, counts = np.unique(present.astype(np.int64), return_counts=True)
    if len(codes) == 0:
        raise ValueError("a categorical column needs at least one non-null value")
    feature = {
        "vocabulary": [int(code) for code in codes],
        "counts": [int(count) for count in counts],
        "nulls": int(len(values) - len(present)),
    }
    if labels:
        feature["labels"] = [labels.get(int(code), str(int(code))) for code in codes]
    return feature


def channels_feature(tensor, axis):
    tensor = np.asarray(tensor, dtype=np.float64)
    moved = np.moveaxis(tensor, axis, 0).reshape(tensor.shape[axis], -1)
    return {"axis": axis, "moments": [moments_of(channel[~np.isnan(channel)]) for channel in moved]}


def build_profile(columns, data, kll_k=200, n_bins=20, window=None, thresholds=None):
    features = []
    rows = 0
    for position, column in enumerate(columns):
        name, kind = column["name"], column["kind"]
        feature = {"name": name, "side": column.get("side", "input"), "tensor": column.get("tensor", "input"), "kind": kind}
        values = data[name]
        if kind == "numeric":
            feature["index"] = int(column.get("index", position))
            feature.update(numeric_feature(values, kll_k, n_bins))
            rows = max(rows, len(values))
        elif kind == "categorical":
            feature["index"] = int(column.get("index", position))
            feature.update(categorical_feature(values, column.get("labels")))
            rows = max(rows, len(values))
        elif kind == "channels":
            feature.update(channels_feature(values, int(column["axis"])))
        else:
            raise ValueError(f"column {name}: unknown kind {kind}")
        if column.get("metric"):
            feature["metric"] = column["metric"]
        features.append(feature)
    profile = {"format": FORMAT, "version": VERSION, "rows": int(rows), "kll_k": kll_k}
    if window:
        profile["window"] = window
    if thresholds:
        profile["thresholds"] = thresholds
    profile["features"] = features
    return profile


def read_csv(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    columns = {}
    for name in reader.fieldnames or []:
        columns[name] = np.array([float(row[name]) if row[name] not in ("", None) else math.nan for row in rows])
    return columns


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv")
    source.add_argument("--npz")
    parser.add_argument("--column", action="append", default=[])
    parser.add_argument("--channels", action="append", default=[])
    parser.add_argument("--metric", action="append", default=[])
    parser.add_argument("--labels", action="append", default=[])
    parser.add_argument("--kll-k", type=int, default=200)
    parser.add_argument("--bins", type=int, default=20)
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    data = read_csv(args.csv) if args.csv else dict(np.load(args.npz))
    metrics = dict(item.split("=", 1) for item in args.metric)
    labels = {}
    for item in args.labels:
        name, pairs = item.split("=", 1)
        labels[name] = {int(code): label for code, label in (pair.split(":", 1) for pair in pairs.split(","))}
    columns = []
    for position, spec in enumerate(args.column):
        parts = spec.split(":")
        column = {"name": parts[0], "kind": parts[1], "index": int(parts[2]) if len(parts) > 2 and parts[2] else position}
        column["tensor"] = parts[3] if len(parts) > 3 else "input"
        column["side"] = parts[4] if len(parts) > 4 else "input"
        column["metric"] = metrics.get(parts[0])
        column["labels"] = labels.get(parts[0])
        columns.append(column)
    for spec in args.channels:
        name, tensor, axis = spec.split(":")
        columns.append({"name": name, "kind": "channels", "tensor": tensor, "axis": int(axis), "metric": None})
    profile = build_profile(columns, data, kll_k=args.kll_k, n_bins=args.bins)
    text = json.dumps(profile, indent=1, allow_nan=False)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv[1:])
