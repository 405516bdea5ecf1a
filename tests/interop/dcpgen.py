"""Writes PyTorch Distributed Checkpoint (DCP) directories with the torch
that runs it, for the DCP interop tests.

    dcpgen.py KIND OUT_DIR [WORLD]

KIND: single (one process, no process group), ranks (WORLD gloo processes on
localhost, tensors split by rows between them with hand-planned chunks,
plus replicated values), grid (4 ranks, a 2 x 2 split of one matrix),
dtensor (torch 2.x, 2 ranks: DTensors over a CPU device mesh, rows of one
matrix and columns of another, replicated ones, and an optimizer-like state
with lists), bench (WORLD ranks, 16 float32 tensors of $DCPGEN_MB MiB in all split by
rows: the benchmark's input; no .expect.pt).
Also writes OUT_DIR.expect.pt: the whole state dict, torch.save'd.
"""
import os
import sys

import torch

TORCH2 = int(torch.__version__.split(".")[0]) >= 2


def dcp_module():
    if TORCH2:
        import torch.distributed.checkpoint as dcp
        return dcp
    # torch 1.13 on Python 3.11: TensorProperties is the default value of a
    # dataclass field in its own module, which Python 3.11 refuses unless it
    # is hashable: the decorator gives it unsafe_hash while it is imported
    import dataclasses
    plain = dataclasses.dataclass

    def hashable(cls=None, **kw):
        if cls is not None and cls.__name__ == "TensorProperties":
            return plain(cls, unsafe_hash=True, **kw)
        return plain(cls, **kw) if cls is not None else \
            (lambda c: hashable(c, **kw))
    dataclasses.dataclass = hashable
    try:
        import torch.distributed._shard.checkpoint as dcp
    finally:
        dataclasses.dataclass = plain
    return dcp


def full_state():
    g = torch.Generator().manual_seed(7)
    return {
        "model": {
            "w": torch.randn(10, 6, generator=g),
            "b": torch.randn(6, generator=g).to(torch.float64),
            "emb": torch.arange(35, dtype=torch.int32).reshape(7, 5),
            "h": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        },
        "scalar": torch.tensor(3.5),
        "epoch": 4,
        "hp": {"lr": 0.001, "betas": (0.9, 0.99), "name": "adamw"},
    }


def save(state, out, no_dist):
    dcp = dcp_module()
    writer = dcp.FileSystemWriter(out)
    if TORCH2:
        # without a process group dcp.save runs as one process
        dcp.save(state, storage_writer=writer)
    else:
        dcp.save_state_dict(state, storage_writer=writer, no_dist=no_dist)


def row_shards(full, rank, world):
    """Row block `rank` of every >= 1-d tensor of the model as a ShardedTensor
    with hand-planned chunks (uneven: ceil split)."""
    from torch.distributed._shard.sharded_tensor import (
        Shard, ShardMetadata, init_from_local_shards)
    out = {}
    for k, t in full["model"].items():
        rows = t.shape[0]
        step = (rows + world - 1) // world
        lo, hi = min(rank * step, rows), min((rank + 1) * step, rows)
        shards = []
        if hi > lo:
            md = ShardMetadata(shard_offsets=[lo] + [0] * (t.dim() - 1),
                               shard_sizes=[hi - lo] + list(t.shape[1:]),
                               placement=f"rank:{rank}/cpu")
            shards.append(Shard(t[lo:hi].clone(), md))
        out[k] = init_from_local_shards(shards, list(t.shape))
    return out


def grid_shards(full, rank, world):
    from torch.distributed._shard.sharded_tensor import (
        Shard, ShardMetadata, init_from_local_shards)
    t = full["grid"]
    r, c = divmod(rank, 2)
    rs, cs = [0, 5, 9], [0, 3, 8]  # uneven in both dimensions
    md = ShardMetadata(shard_offsets=[rs[r], cs[c]],
                       shard_sizes=[rs[r + 1] - rs[r], cs[c + 1] - cs[c]],
                       placement=f"rank:{rank}/cpu")
    piece = t[rs[r]:rs[r + 1], cs[c]:cs[c + 1]].clone()
    return {"grid": init_from_local_shards([Shard(piece, md)], list(t.shape))}


def bench_state():
    mb = int(os.environ.get("DCPGEN_MB", "64"))
    rows = max(1, mb * (1 << 20) // 16 // 4 // 1024)
    g = torch.Generator().manual_seed(5)
    return {"model": {f"layer{i}.weight": torch.randn(rows, 1024, generator=g)
                      for i in range(16)}, "epoch": 1}


def dtensor_full():
    g = torch.Generator().manual_seed(11)
    return {
        "model": {"rows": torch.randn(7, 4, generator=g),
                  "cols": torch.randn(3, 9, generator=g).to(torch.float16),
                  "rep": torch.arange(6, dtype=torch.int64)},
        "optim": {"state": {"0": {"step": torch.tensor(3.0),
                                  "exp_avg": torch.randn(7, 4, generator=g)}},
                  "param_groups": [{"lr": 0.01, "params": ["rows", "cols"]},
                                   {"lr": 0.1, "weight_decay": 0.0, "params": ["rep"]}]},
        "step": 12,
    }


def dtensor_state(full, world):
    from torch.distributed.device_mesh import init_device_mesh
    try:
        from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    except ImportError:  # torch < 2.4
        from torch.distributed._tensor import Replicate, Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (world,))
    m = full["model"]
    state = {
        "model": {"rows": distribute_tensor(m["rows"], mesh, [Shard(0)]),
                  "cols": distribute_tensor(m["cols"], mesh, [Shard(1)]),
                  "rep": distribute_tensor(m["rep"], mesh, [Replicate()])},
        "optim": {"state": {"0": {"step": full["optim"]["state"]["0"]["step"],
                                  "exp_avg": distribute_tensor(
                                      full["optim"]["state"]["0"]["exp_avg"], mesh,
                                      [Shard(0)])}},
                  "param_groups": full["optim"]["param_groups"]},
        "step": full["step"],
    }
    return state


def worker(rank, world, kind, out):
    import torch.distributed as dist
    dcp_module()
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["USE_LIBUV"] = "0"  # Debian's torch 2.6 is built without libuv
    import datetime
    # a rank that dies must not leave the others waiting for half an hour
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    full = full_state()
    if kind == "grid":
        full = {"grid": torch.randn(9, 8, generator=torch.Generator().manual_seed(3))}
        state = grid_shards(full, rank, world)
    elif kind == "dtensor":
        state = dtensor_state(dtensor_full(), world)
    elif kind == "bench":
        full = bench_state()
        state = {"model": row_shards(full, rank, world), "epoch": full["epoch"]}
    else:
        state = dict(full)
        shards = row_shards(full, rank, world)
        if TORCH2:
            state["model"] = shards
        else:
            # torch 1.13 finds ShardedTensors at the top level only
            del state["model"]
            state.update({f"model.{k}": v for k, v in shards.items()})
    save(state, out, False)
    dist.barrier()
    dist.destroy_process_group()


def main():
    kind, out = sys.argv[1], sys.argv[2]
    world = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    if kind == "grid":
        world = 4
    os.makedirs(out, exist_ok=True)
    if kind == "single":
        full = full_state()
        save(full, out, True)
    else:
        import socket
        import torch.multiprocessing as mp
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(sock.getsockname()[1])
        mp.spawn(worker, args=(world, kind, out), nprocs=world,
                 join=True)
        if kind == "bench":
            return
        if kind == "grid":
            full = {"grid": torch.randn(9, 8, generator=torch.Generator().manual_seed(3))}
        elif kind == "dtensor":
            full = dtensor_full()
        else:
            full = full_state()
            if not TORCH2:
                model = full.pop("model")
                full.update({f"model.{k}": v for k, v in model.items()})
    torch.save(full, out.rstrip("/") + ".expect.pt")


if __name__ == "__main__":
    main()
