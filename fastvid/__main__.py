"""`python -m fastvid` entry point."""

from fastvid.cli import main

raise SystemExit(main())
