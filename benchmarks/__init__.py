"""npyfeed's benchmark suite: baselines users have today vs npyfeed, measured in one run on the same files.

Run it with ``python -m benchmarks.run --help``; see ``benchmarks/README.md``.
"""
