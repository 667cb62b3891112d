"""MoCo across processes: shuffle-BN's un-shuffle gives every rank its own samples back in order (two gloo ranks on
the CPU), and an FR stage run with `epochs: 0` writes the seeded, untrained network as a loadable model."""
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from synthface_nb.core import load_checkpoint
from synthface_nb.distributed import shuffle_across_ranks, unshuffle_across_ranks
from synthface_nb.fr_models import load_fr_model
from synthface_nb.fr_stages import train_fr_run
from synthface_nb.testing import write_color_folder


def _shuffle_rank(rank: int, init_file: str, out_dir: str):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        x = torch.arange(8.0).view(4, 2) + 100 * rank            # rank r's samples: rows 100 r + ...
        shuffled, undo = shuffle_across_ranks(x, torch.Generator().manual_seed(rank))   # rank 0's draw must win
        processed = unshuffle_across_ranks(shuffled * 3 + 1, undo)
        torch.save({"x": x, "shuffled": shuffled, "processed": processed, "undo": undo}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_unshuffle_restores_order_across_two_ranks(tmp_path):
    mp.spawn(_shuffle_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):
        assert torch.equal(r["processed"], r["x"] * 3 + 1)
    assert torch.equal(r0["undo"], r1["undo"])                   # one permutation, broadcast from rank 0
    both = torch.cat([r0["shuffled"], r1["shuffled"]])
    assert sorted(both[:, 0].tolist()) == sorted(torch.cat([r0["x"], r1["x"]])[:, 0].tolist())   # every sample once
    assert not torch.equal(both, torch.cat([r0["x"], r1["x"]]))   # and actually shuffled (fixed seed: a fixed outcome)


def test_untrained_stage_run(tmp_path):
    data = write_color_folder(tmp_path / "data", n_identities=3, per_identity=4, size=32)
    run = {"data": str(data), "overrides": {"device": "cpu", "network": "iresnet18", "width": 0.125, "input_size": 32,
                                            "embedding_size": 16, "batch_size": 4, "num_workers": 0, "num_threads": 1,
                                            "epochs": 0, "eval_at_end": True}}   # as the untrained entry of params.yaml
    from synthface_nb.data import ImageFolderDataset
    from synthface_nb.verification_bin import write_benchmark_bin
    write_benchmark_bin(ImageFolderDataset(data), tmp_path / "bench" / "colours.bin", n_pairs=20, seed=0)
    summary = train_fr_run("untrained", run, tmp_path / "fr", benchmarks=tmp_path / "bench", progress=False)
    assert (summary["steps"], summary["finished"], summary["first_loss"]) == (0, True, None)
    # the untrained network is still measured, and its live plots exist (dvc.yaml declares them for every FR run)
    assert set(summary["verification"]) == {"colours"} and 0 <= summary["verification"]["colours"] <= 1
    assert (tmp_path / "fr" / "live" / "plots" / "metrics").is_dir()
    fr = load_fr_model(tmp_path / "fr" / "model.pt")
    assert fr.embed(torch.zeros(2, 3, 112, 112)).shape == (2, 16)
    assert load_checkpoint(tmp_path / "fr" / "checkpoint.pt", kind="fr_train")["step"] == 0
