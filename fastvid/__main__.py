"""`python -m fastvid` entry point (what torchrun launches)."""

from fastvid.cli import main
from fastvid.train.distributed import exit_process

exit_process(main())
