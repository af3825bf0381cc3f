"""Every loader the suite measures, in table order. Builders are named, not imported, so listing them is free."""

from __future__ import annotations

from benchmarks.spec import Runner

__all__ = ["CAP_RUNNERS", "RUNNERS"]

_TF = ("tensorflow",)
_KERAS = ("tensorflow", "keras")


def _runners(*runners: Runner) -> dict[str, Runner]:
    return {r.name: r for r in runners}


RUNNERS = _runners(
    # A reference, not a baseline: what one thread gets from a memmap with no framework in between.
    Runner("memmap-gather", "numpy memmap gather (1 thread, no framework)",
           "benchmarks.baselines_numpy:memmap_gather", (), baseline=False),
    Runner("recipe", "tf from_generator recipe", "benchmarks.baselines_tf:recipe", _TF, baseline=True),
    Runner("fixedlen", "tf FixedLengthRecordDataset", "benchmarks.baselines_tf:fixed_length", _TF,
           baseline=True, sequential_only=True),
    Runner("index-shuffle", "tf range.shuffle.map(numpy_function)", "benchmarks.baselines_tf:index_shuffle",
           _TF, baseline=True),
    Runner("pydataset", "keras PyDataset (2 threads)", "benchmarks.baselines_keras:pydataset_threads", _KERAS,
           baseline=True),
    Runner("pydataset-mp", "keras PyDataset (2 processes)", "benchmarks.baselines_keras:pydataset_processes",
           _KERAS, baseline=True),
    Runner("torch", "torch DataLoader (2 workers)", "benchmarks.baselines_torch:dataloader", ("torch",),
           baseline=True),
    Runner("npyfeed", "npyfeed Loader (numpy)", "benchmarks.npyfeed_runners:numpy_path", ("npyfeed",),
           baseline=False),
    Runner("npyfeed-tf", "npyfeed to_tf_dataset()", "benchmarks.npyfeed_runners:tf_path", ("npyfeed", *_TF),
           baseline=False),
)  # fmt: skip

# Inside the memory cap: the recipe users start from (with TF, and its bare memmap data path), against npyfeed.
CAP_RUNNERS = ("recipe", "memmap-gather", "npyfeed", "npyfeed-tf")
