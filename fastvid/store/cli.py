"""`fastvid shard KIND SRC OUT`: turn a dataset of some kind into a shard set.

Each kind registers its sub-command (fastvid.store.kinds.ShardCommand: `videos` from fastvid.video,
`events` from fastvid.events); this module only builds the sub-command table.
"""

from __future__ import annotations

from fastvid.store import kinds


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="shard_kind", metavar="KIND", required=True)
    for name, command in kinds.shard_commands().items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_shard_run=command.run)


def run(args) -> int:
    return args._shard_run(args)
