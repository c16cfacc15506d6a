"""Two CPU processes (`torchrun --nproc_per_node 2`, gloo): the CLIP loss with negatives gathered across processes
equals the single-process loss of the same global batch, with the same gradients after DDP averaging; the DINO
center is averaged over processes; and a 2-process `train.py` run follows the 1-process run on the same global
batch.

This file is also the script the processes run (`python -m torch.distributed.run ... test_train_distributed.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, DIM, K = 8, 6, 5


def _global_inputs():
    generator = torch.Generator().manual_seed(123)
    image = torch.nn.functional.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=generator), dim=-1)
    # Teacher logits, view-major: 2 global views x GLOBAL_BATCH samples.
    teacher = torch.randn(2, GLOBAL_BATCH, K, generator=generator)
    return image, text, torch.tensor(11.0), teacher


def _worker(out_dir: str) -> None:
    """Run by each process: its shard of the global batch through ClipLoss and DINOLoss.update_center."""
    from accelerate import PartialState

    from modeling_rsmclip.training.losses import ClipLoss, DINOLoss

    state = PartialState(cpu=True)  # picks up torchrun's environment: gloo on CPUs
    rank, world = state.process_index, state.num_processes
    assert world == 2 and torch.distributed.get_backend() == "gloo"
    image, text, scale, teacher = _global_inputs()
    shard = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    results = {}
    for local_loss in (False, True):
        local_image = image[shard].clone().requires_grad_(True)
        local_text = text[shard].clone().requires_grad_(True)
        local_scale = scale.clone().requires_grad_(True)
        loss = ClipLoss(local_loss=local_loss)(local_image, local_text, local_scale)
        loss.backward()
        # What DDP does with parameter gradients: average them over processes.
        scale_grad = local_scale.grad.clone()
        torch.distributed.all_reduce(scale_grad)
        results[f"local_loss={local_loss}"] = {
            "loss": loss.item(),
            "image_grad": local_image.grad.tolist(),
            "text_grad": local_text.grad.tolist(),
            "scale_grad_mean": (scale_grad / world).item(),
        }
    dino = DINOLoss(K, num_global_views=2)
    dino.update_center(teacher[:, shard].reshape(-1, K))
    results["center"] = dino.center[0].tolist()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    # Leave together: a rank that exits while gloo still runs its threads in the other aborts the run.
    torch.distributed.barrier()
    state.destroy_process_group()


def _torchrun(args: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *args,
    ]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def test_gathered_negatives_loss_equals_the_single_process_loss(tmp_path):
    from modeling_rsmclip.training.losses import ClipLoss

    _torchrun([str(Path(__file__).resolve()), "--worker", str(tmp_path)], tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    image, text, scale, teacher = _global_inputs()
    image.requires_grad_(True)
    text.requires_grad_(True)
    scale.requires_grad_(True)
    single = ClipLoss()(image, text, scale)
    single.backward()
    for r, result in enumerate(ranks):
        shard = slice(r * 4, (r + 1) * 4)
        full = result["local_loss=False"]
        # Every process computes the loss of the whole global batch.
        assert full["loss"] == pytest.approx(single.item(), rel=1e-6)
        for variant in ("local_loss=False", "local_loss=True"):
            got = result[variant]
            # The all-gather backward sums every process' gradient of its shard: world_size x the global
            # gradient, which DDP's averaging brings back to the single-process gradient.
            torch.testing.assert_close(
                torch.tensor(got["image_grad"]) / 2, image.grad[shard], atol=1e-6, rtol=1e-5
            )
            torch.testing.assert_close(
                torch.tensor(got["text_grad"]) / 2, text.grad[shard], atol=1e-6, rtol=1e-5
            )
            assert got["scale_grad_mean"] == pytest.approx(scale.grad.item(), rel=1e-5, abs=1e-7)
    # With local_loss the two processes' losses average to the global loss.
    local = [result["local_loss=True"]["loss"] for result in ranks]
    assert sum(local) / 2 == pytest.approx(single.item(), rel=1e-6)
    # The DINO center is the EMA of the teacher mean over all processes.
    expected_center = 0.1 * teacher.reshape(-1, K).mean(dim=0)
    for result in ranks:
        torch.testing.assert_close(torch.tensor(result["center"]), expected_center, atol=1e-6, rtol=1e-6)


def test_two_process_training_matches_one_process_on_the_same_global_batch(tmp_path):
    from _train_fixtures import reset_accelerate, save_tiny_processor, save_ucm_dataset, tiny_config

    from modeling_rsmclip.training.loop import train

    torch.set_num_threads(1)
    data = save_ucm_dataset(tmp_path / "data", {"train": 32, "validation": 8})
    processor = save_tiny_processor(tmp_path)
    common = {
        "preset": "tiny",
        "tokenizer_name_or_path": str(processor),
        "dataset": str(data),
        "max_steps": 3,
        "num_local_crops": 2,
        "dataloader_num_workers": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 1,
        "logging_steps": 1,
        "report_to": "none",
        "save_steps": 0,
        "validation_split": "none",
        "seed": 7,
    }
    # Two processes x 4 pairs ...
    args = [str(REPO / "train.py"), "--output-dir", str(tmp_path / "two")]
    for key, value in common.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    _torchrun(args + ["--per-device-train-batch-size", "4"], tmp_path)
    # ... against one process x 8 pairs.
    reset_accelerate()
    one = train(
        tiny_config(
            data,
            processor,
            tmp_path / "one",
            per_device_train_batch_size=8,
            **{k: v for k, v in common.items() if k != "validation_split"},
            validation_split=None,
        )
    )
    reset_accelerate()
    two = json.loads((tmp_path / "two" / "train_results.json").read_text())
    assert two["samples_seen"] == one.log_history[-1]["step"] * 8
    one_logs = {h["step"]: h for h in one.log_history}
    for entry in two["log_history"]:
        reference = one_logs[entry["step"]]
        for key in ("loss", "loss_clip", "loss_distillation"):
            assert entry[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-5), (entry["step"], key)
    from _train_fixtures import state_dict_from

    weights_one = state_dict_from(tmp_path / "one" / "model.safetensors")
    weights_two = state_dict_from(tmp_path / "two" / "model.safetensors")
    for key, value in weights_one.items():
        torch.testing.assert_close(weights_two[key], value, rtol=1e-3, atol=1e-4, msg=key)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        raise SystemExit("usage: torchrun --nproc_per_node 2 test_train_distributed.py --worker OUT_DIR")
