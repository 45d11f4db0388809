"""`fastvid bench KIND`: one module per benchmark kind, each with add_arguments(p) and run(args)."""

from __future__ import annotations

import importlib

# kind -> (module, help)
BENCHMARKS = {
    "loader": ("fastvid.benchmarks.loader", "clips/s, data-wait, CPU%% and GPU util of the loaders vs a torchvision-style baseline"),
    "events": ("fastvid.benchmarks.events", "events/s of the event representations, single and batched, per device"),
    "events-io": ("fastvid.benchmarks.events_io", "events/s from event shards to device tensors"),
    "events-shards": ("fastvid.benchmarks.events_shards", "event windows -> stacked histograms: DAT files, every shard layout, precomputed, tonic; one run"),
    "events-read": ("fastvid.benchmarks.events_read", "events/s of reading a Prophesee DAT file vs a plain numpy reader"),
    "crop": ("fastvid.benchmarks.crop", "clips/s of the fused multi-scale crop+resize+normalize"),
    "train": ("fastvid.benchmarks.train", "training clips/s and data-wait per model vs synthetic on-device input"),
    "all": ("fastvid.benchmarks.all", "run every benchmark that fits the device; one JSON and a PNG chart"),
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # one benchmark's missing dependency must not break the others
            p.set_defaults(_bench_run=_unavailable(name, exc))
            continue
        mod.add_arguments(p)
        p.set_defaults(_bench_run=mod.run)


def _unavailable(name, exc):
    def run(args):
        raise RuntimeError(f"benchmark {name!r} is unavailable: {exc}")

    return run


def run(args):
    return args._bench_run(args)
