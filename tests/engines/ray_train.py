"""Ray Train TorchTrainer, 2 CPU workers on a local Ray: the loader state rides in ray.train.Checkpoint; the
first attempt fails right after its checkpoint at step 5 of 10, Ray restarts the workers, they resume from it."""

import json
import sys
import tempfile
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchTrainer

path, out = sys.argv[1], sys.argv[2]


def train_loop(config: dict) -> None:
    import torch  # noqa: F401  (the workers' torch.distributed group is what shard="auto" reads first)

    from npyfeed import Loader

    context = ray.train.get_context()
    rank = context.get_world_rank()
    loader = Loader((config["path"] + "/x.npy", config["path"] + "/y.npy"), 10, shuffle=True, seed=1, shard="auto")
    assert (loader.shard.index, loader.shard.count) == (rank, context.get_world_size()), loader.shard
    checkpoint = ray.train.get_checkpoint()
    attempt = "resumed" if checkpoint else "first"
    if checkpoint:
        with checkpoint.as_directory() as d, open(Path(d) / "loader.json") as f:
            loader.set_state(json.load(f))
    with open(Path(config["out"]) / f"{attempt}-rank{rank}.jsonl", "a") as log:
        for step, (_, y) in enumerate(loader, 1):
            log.write(json.dumps(y.tolist()) + "\n")
            log.flush()
            if step % 5 == 0:
                with tempfile.TemporaryDirectory() as d:
                    with open(Path(d) / "loader.json", "w") as f:
                        json.dump(loader.get_state(), f)
                    ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(d))
                if attempt == "first" and step == 5:
                    raise RuntimeError("simulated worker failure")


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
trainer = TorchTrainer(
    train_loop,
    train_loop_config={"path": path, "out": out},
    scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
    run_config=ray.train.RunConfig(
        storage_path=str(Path(out) / "ray"), failure_config=ray.train.FailureConfig(max_failures=1)
    ),
)
result = trainer.fit()
print(json.dumps({"error": str(result.error) if result.error else None}))
ray.shutdown()
