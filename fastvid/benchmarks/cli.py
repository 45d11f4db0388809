"""`fastvid bench KIND`: one module per benchmark kind, each with add_arguments(p) and run(args)."""

from __future__ import annotations



def _loader():
    from fastvid.benchmarks import loader

    return loader


def _events():
    from fastvid.benchmarks import events

    return events


def _events_io():
    from fastvid.benchmarks import events_io

    return events_io


def _events_shards():
    from fastvid.benchmarks import events_shards

    return events_shards


def _events_read():
    from fastvid.benchmarks import events_read

    return events_read


def _crop():
    from fastvid.benchmarks import crop

    return crop


def _train():
    from fastvid.benchmarks import train

    return train


def _remote():
    from fastvid.benchmarks import remote

    return remote


def _all():
    from fastvid.benchmarks import all as all_benchmarks

    return all_benchmarks


# kind -> (module loader, help): each module has add_arguments(p), run(args) and (but `all`) run_benchmark(...)
BENCHMARKS = {
    "loader": (_loader, "clips/s, data-wait, CPU%% and GPU util of the loaders vs a torchvision-style baseline"),
    "events": (_events, "events/s of the event representations, single and batched, per device"),
    "events-io": (_events_io, "events/s from event shards to device tensors"),
    "events-shards": (_events_shards, "event windows -> stacked histograms: DAT files, every shard layout, precomputed, tonic; one run"),
    "events-read": (_events_read, "events/s of reading a Prophesee DAT file vs a plain numpy reader"),
    "crop": (_crop, "clips/s of the fused multi-scale crop+resize+normalize"),
    "train": (_train, "training clips/s and data-wait per model vs synthetic on-device input"),
    "remote": (_remote, "time to the first batch and bytes per rank when training from a remote (HTTP) set, per set size"),
    "all": (_all, "run every benchmark that fits the device; one JSON and a PNG chart"),
}


def add_arguments(parser):
    sub = parser.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    for name, (load, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            mod = load()
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
