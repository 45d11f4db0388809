"""The `fastvid` command line: one sub-command per job, each defined in the module that does it.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`; modules are
imported only when their command runs, so `fastvid --help` stays fast and GPU-free.
Exit statuses are the same for every command (EXIT_CODES, shown in `fastvid --help`).
"""

from __future__ import annotations

import argparse
import sys


def _command(name: str):
    """The module of command `name` (explicit imports, only the chosen command's: a broken optional
    module cannot break the rest, and `fastvid --help` stays fast and GPU-free)."""
    if name == "shard":
        from fastvid.store import cli as module
    elif name == "manifest":
        from fastvid.store import merge as module
    elif name == "inspect":
        from fastvid.store import inspect as module
    elif name == "train":
        from fastvid.video import train_cli as module
    elif name == "train-events":
        from fastvid.events.detect import train_cli as module
    elif name == "eval-events":
        from fastvid.events.detect import eval_cli as module
    elif name == "bench":
        from fastvid.benchmarks import cli as module
    elif name == "quickstart":
        from fastvid import quickstart as module
    elif name == "profile":
        from fastvid import profile as module
    elif name == "env":
        from fastvid import envreport as module
    elif name == "doctor":
        from fastvid import doctor as module
    else:
        raise KeyError(name)
    return module


# name -> one-line help. "shard" and "bench" have sub-commands of their own.
COMMANDS = {
    "shard": "turn a video or event dataset into WebDataset tar shards",
    "manifest": "merge the partial manifests of a multi-node shard job",
    "inspect": "summarize (and --verify) a shard set",
    "train": "train a video classifier (torchvision reference flags; torchrun ready)",
    "train-events": "train a recurrent event-camera detector with TBPTT (torchrun ready)",
    "eval-events": "Prophesee COCO mAP of saved event-camera detections",
    "bench": "measure loaders, kernels and training throughput",
    "quickstart": "generate a small dataset, shard it, train and evaluate, end to end",
    "profile": "sample GPU utilization/memory/clocks of a command (CSV + PNG)",
    "env": "which loader backends and GPU libraries are usable here, and how to add the missing ones",
    "doctor": "time each loader stage and the model step on a shard set; name the bottleneck and its knob",
}


EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = 0, 1, 2, 130, 141
EXIT_CODES = """exit status:
  0    success
  1    failure (bad input, missing file, training error): one line on stderr names what is wrong
  2    usage error (unknown flag, invalid choice, missing argument)
  75   training preempted (SIGTERM): checkpointed, rerun with --resume
  130  interrupted (Ctrl-C)
  141  stdout was closed early (e.g. `fastvid inspect DIR --json | head`): quiet, like other Unix tools"""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastvid", description="fastvid: fast video and event-camera data loading and training",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    from fastvid import __version__

    parser.add_argument("--version", action="version", version=f"fastvid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Only the chosen command's module is imported (so a broken optional module cannot break the rest).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            mod = _command(name)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_OK if not argv else EXIT_USAGE
    try:
        rc = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return rc
    except BrokenPipeError:
        return _closed_pipe()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        # One clear line for user errors (OSError: missing files, but also an output path that is a file,
        # permissions, a full disk: its message names the path); set FASTVID_DEBUG=1 for the traceback.
        import os

        if os.environ.get("FASTVID_DEBUG"):
            raise
        print(f"fastvid {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _closed_pipe() -> int:
    """The reader of stdout went away (`| head`): stop quietly. Later writes, including Python's
    flush at exit, go to /dev/null so no 'Broken pipe' message follows."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (e.g. captured in tests)
        pass
    return EXIT_CLOSED_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
