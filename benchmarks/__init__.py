"""The project's benchmarks: `python -m benchmarks` (or `nas bench`) runs every step benchmark and
prints one table of ratios measured in the same run; `python -m benchmarks startup` times the start-up
of every stage process of the main command. See benchmarks/__main__.py."""
