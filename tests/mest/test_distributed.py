"""Data-parallel training (mest.distributed): shards, the cross-rank checks in a real 2-process gloo
group, and whole runs under torchrun (2 local processes, 127.0.0.1) against one process."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import psutil
import pytest
import torch
from torch import nn

from devices.loopback import free_port
from mest.checkpoint import load_checkpoint
from mest.config import TrainConfig
from mest.data import shard, train_batches
from mest.distributed import GlobalBatchNorm2d, World, mask_digest
from mest.errors import ConfigError, DistributedError
from mest.trainer import METRICS_NAME, RANKING_NAME, Trainer, epoch_generator

REPO = Path(__file__).resolve().parents[2]

# -- one process: shards and start-up checks ------------------------------------------------------


def test_the_shards_of_every_batch_make_the_single_process_epoch(small_digits):
    kept = torch.arange(len(small_digits.train))[::3]  # 86 examples: batches of 32, 32, 22
    single = list(train_batches(small_digits, kept, 32, epoch_generator(0, 5)))
    for ranks in (2, 3):
        parts = [list(train_batches(small_digits, kept, 32, epoch_generator(0, 5), r, ranks)) for r in range(ranks)]
        for step, whole in enumerate(single):
            pieces = [p[step] for p in parts]
            assert all(piece.examples == len(whole.indices) for piece in pieces)
            for got, want in zip(zip(*pieces), whole[:3]):
                assert torch.equal(torch.cat(got), want)  # indices, augmented images, labels


def test_shard_splits_like_tensor_split():
    for count in (0, 1, 5, 64, 65):
        for ranks in (1, 2, 3, 7):
            expected = torch.tensor_split(torch.arange(count), ranks)
            assert [torch.arange(count)[shard(count, r, ranks)].tolist() for r in range(ranks)] == \
                [e.tolist() for e in expected]


def test_world_from_the_torchrun_environment():
    assert World.from_env({}) == World()
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RESTART_COUNT": "1",
           "TORCHELASTIC_MAX_RESTARTS": "3"}
    assert World.from_env(env) == World(1, 2, 1, 1, 3, launched=True)
    with pytest.raises(ConfigError, match="RANK 2 is not a rank of WORLD_SIZE 2"):
        World.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_start_up_refusals():
    world = World(0, 2, launched=True)
    with pytest.raises(ConfigError, match="backend 'compiled' is not supported under torchrun yet"):
        world.check_config("compiled", 64)
    with pytest.raises(ConfigError, match="batch_size 63 .* not divisible by the 2 ranks"):
        world.check_config("tvm", 63)
    world.check_config("torch-mask", 64)
    with pytest.raises(ConfigError, match="ends with a batch of 1, fewer than the 2 ranks"):
        world.check_epochs(64, [1437, 129])
    world.check_epochs(64, [1437, 130])


def test_a_parameter_that_changes_shape_is_refused():
    model = nn.Linear(3, 2)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    World().check_shapes(model, shapes)
    model.weight.data = torch.zeros(5, 3)
    with pytest.raises(DistributedError, match=r"weight changed shape from \(2, 3\) to \(5, 3\)"):
        World().check_shapes(model, shapes)


def test_the_mask_digest_sees_one_flipped_position():
    masks = {"a.weight": torch.rand(4, 3, 3, 3) < 0.3, "b.weight": torch.rand(8, 4, 3, 3) < 0.3}
    same = {k: v.clone() for k, v in masks.items()}
    assert mask_digest(masks) == mask_digest(same)
    same["b.weight"][7, 3, 2, 2] ^= True
    assert mask_digest(masks) != mask_digest(same)


# -- two processes in a real gloo group -------------------------------------------------------------

def _group_checks(rank: int, port: int, results) -> None:
    """What each of 2 ranks checks in one group; reports ``(rank, failures)``."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    failures = []
    world = World(rank, 2, launched=True)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=2)
        # BatchNorm of the whole batch from two halves: output, gradients, running statistics.
        torch.manual_seed(0)
        x = torch.randn(6, 4, 5, 5) * 3 + 1
        weights = torch.randn(6, 4, 5, 5)
        whole = nn.BatchNorm2d(4)
        nn.init.normal_(whole.weight)
        model = nn.Sequential(nn.BatchNorm2d(4))
        model[0].load_state_dict(whole.state_dict())
        world.prepare(model)
        assert isinstance(model[0], GlobalBatchNorm2d)
        part = shard(6, rank, 2)
        x_whole, x_part = x.clone().requires_grad_(), x[part].clone().requires_grad_()
        y_whole, y_part = whole(x_whole), model(x_part)
        (y_whole * weights).sum().backward()
        (y_part * weights[part]).sum().backward()
        grads = torch.cat([model[0].weight.grad, model[0].bias.grad])
        dist.all_reduce(grads)
        checks = {"output": (y_part, y_whole[part]), "grad input": (x_part.grad, x_whole.grad[part]),
                  "grad weight and bias": (grads, torch.cat([whole.weight.grad, whole.bias.grad])),
                  "running mean": (model[0].running_mean, whole.running_mean),
                  "running var": (model[0].running_var, whole.running_var)}
        model.eval(), whole.eval()
        checks["eval output"] = (model(x_part), whole(x_whole)[part])
        for what, (got, want) in checks.items():
            got, want = got.detach(), want.detach()
            if not torch.allclose(got, want, atol=1e-5):
                failures.append(f"{what}: max error {float((got - want).abs().max()):.2e}")
        # Outcomes: each rank saw half the examples; both get all of them.
        indices = torch.tensor([[4, 0, 7], [2, 5, 1]][rank])
        seen, correct = world.combine_outcomes(indices, indices % 2 == 0, 9)
        if seen.tolist() != [0, 1, 2, 4, 5, 7] or correct.tolist() != [True, False, True, True, False, False]:
            failures.append(f"combined outcomes {seen.tolist()} {correct.tolist()}")
        # Masks: the same digest passes, one flipped bit on rank 1 fails loudly on both ranks.
        masks = {"conv.weight": torch.arange(27).reshape(1, 3, 3, 3) % 4 == 0}
        if world.check_same_masks(masks, 0) != mask_digest(masks):
            failures.append("the check's digest is not the masks' digest")
        if rank == 1:
            masks["conv.weight"][0, 0, 0, 1] = True
        try:
            world.check_same_masks(masks, 3)
            failures.append("different masks passed the check")
        except DistributedError as err:
            if "epoch 3" not in str(err) or "rank 0" not in str(err) or "rank 1" not in str(err):
                failures.append(f"the divergence message names no ranks: {err}")
        # Rank 0's bytes reach rank 1; rank 0's refusal is raised on both.
        if world.from_main(lambda: b"\x00checkpoint" * 1000) != b"\x00checkpoint" * 1000:
            failures.append("rank 0's bytes did not arrive whole")
        if world.from_main(lambda: None) is not None:
            failures.append("nothing from rank 0 arrived as something")

        def refuse() -> bytes:
            raise ConfigError("no such run")

        try:
            world.from_main(refuse)
            failures.append("rank 0's refusal was not raised")
        except (ConfigError, DistributedError) as err:
            expected = "no such run" if rank == 0 else "rank 0 refused the run: no such run"
            if str(err) != expected:
                failures.append(f"refusal reads {err}")
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - reported to the test process
        failures.append(traceback.format_exc())
    results.put((rank, failures))


def test_cross_rank_checks_in_a_two_process_gloo_group():
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    workers = [context.Process(target=_group_checks, args=(rank, port, results)) for rank in range(2)]
    for worker in workers:
        worker.start()
    reports = dict(results.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(30)
    assert reports == {0: [], 1: []}


# -- whole runs: torchrun with 2 local processes against one process --------------------------------

#: Three epochs of the tiny model on the digits, mutating at every epoch (so each epoch is one
#: mutation window), removing 300 examples at epoch 2 by the forgetting ranking of epochs 0 and 1.
FLAGS = ["--model", "tiny", "--epochs", "3", "--update-freq", "1", "--decay-epochs", "1-2", "--batch-size", "64",
         "--remove-epoch", "2", "--remove-count", "300", "--no-progress"]


def _config(backend: str) -> TrainConfig:
    return TrainConfig(model="tiny", epochs=3, update_freq=1, decay_epochs=(1, 2), batch_size=64, remove_epoch=2,
                       remove_count=300, backend=backend)


def _torchrun(out: Path, backend: str, *extra: str, max_restarts: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "--max-restarts", str(max_restarts), "-m", "mest.train",
               *FLAGS, "--backend", backend, "--out", str(out), *extra]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finished(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    return output


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_NAME).read_text().splitlines()]


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    Trainer(_config("torch-mask"), out, progress=False).run()
    return out


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ranks") / "run"
    output = _finished(_torchrun(out, "torch-mask"))
    assert output.count("test accuracy") == 1, "only rank 0 reports"
    return out


def test_two_ranks_at_half_the_batch_follow_one_process(single_run, two_rank_run):
    single, ranks = _history(single_run), _history(two_rank_run)
    assert [m["ranks"] for m in ranks] == [2, 2, 2]
    for one, two in zip(single, ranks):
        # Every mutation: the masks of rank 0 (checked equal on both ranks, else the run fails) are
        # those of one process; each epoch is one mutation window.
        assert two["mutation"]["mask_digest"] == one["mutation"]["mask_digest"], one["epoch"]
        assert two["examples"] == one["examples"]
        assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-4)
        assert two["test_loss"] == pytest.approx(one["test_loss"], abs=1e-4)
    assert single[0]["train_acc"] == ranks[0]["train_acc"] and single[0]["test_acc"] == ranks[0]["test_acc"]
    assert sorted(p.name for p in two_rank_run.iterdir()) == ["checkpoint.pt", "forgetting_ranking.json",
                                                              "metrics.jsonl", "training.png"]


def test_the_forgetting_ranking_is_that_of_one_process(single_run, two_rank_run):
    one, two = (json.loads((run / RANKING_NAME).read_text()) for run in (single_run, two_rank_run))
    assert two["events"] == one["events"] and two["ranking"] == one["ranking"]
    assert sum(two["events"]) > 0, "two epochs of statistics hold forgetting events"
    a, b = load_checkpoint(single_run), load_checkpoint(two_rank_run)
    assert torch.equal(a.state["kept_examples"], b.state["kept_examples"])


def _rank_pid(launcher: psutil.Process, rank: int) -> int | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "mest.train" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    return None


def test_a_killed_rank_restarts_from_the_checkpoint_and_ends_as_the_uninterrupted_run(two_rank_run, tmp_path):
    out = tmp_path / "run"
    process = _torchrun(out, "torch-mask", max_restarts=1)
    launcher = psutil.Process(process.pid)
    while not (out / "checkpoint.pt").exists():  # the first epoch is done: rank 1 is in the second
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.05)
    pid = _rank_pid(launcher, 1)
    assert pid is not None, "no worker of rank 1"
    os.kill(pid, signal.SIGKILL)
    output = _finished(process)
    assert "resuming" in output and ("at epoch 2/3" in output or "at epoch 3/3" in output), output[-3000:]
    straight, restarted = load_checkpoint(two_rank_run), load_checkpoint(out)
    assert restarted.epoch == straight.epoch == 3
    for key, value in straight.model_state.items():
        assert torch.equal(value, restarted.model_state[key]), key
    for fqn, mask in straight.masks.items():
        assert torch.equal(mask, restarted.masks[fqn]), fqn
    assert [m["train_loss"] for m in _history(out)] == [m["train_loss"] for m in _history(two_rank_run)]


def test_tvm_backend_under_two_ranks_keeps_its_compact_values_and_the_masked_trajectory(two_rank_run, tmp_path):
    pytest.importorskip("tvm")
    out = tmp_path / "run"
    _finished(_torchrun(out, "tvm"))
    # Each mutation checks that no parameter changed shape (DDP's buckets) and that both ranks hold
    # the same masks: a rank whose gradients were not reduced after a mutation fails the next one.
    masked, compact = _history(two_rank_run), _history(out)
    for one, two in zip(masked, compact):
        assert two["mutation"]["mask_digest"] == one["mutation"]["mask_digest"], one["epoch"]
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4, abs=1e-5)
    assert compact[-1]["state_bytes"]["sparse_layers"] < 0.5 * compact[-1]["state_bytes"]["dense_equivalent"]


def test_a_rank_that_cannot_reach_the_others_fails_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}  # no rank 0 listens there
    result = subprocess.run([sys.executable, "-m", "mest.train", *FLAGS, "--backend", "torch-mask", "--out",
                             str(tmp_path / "run"), "--dist-timeout", "2"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 of 2 could not reach the other ranks at 127.0.0.1:"), lines
    assert not (tmp_path / "run").exists(), "a rank other than 0 writes nothing"
