"""make bench, DCP rows on torch's side (runs in torch 2.6's chroot:
sh scripts/torch2-chroot.sh python bench/dcp_torch.py ...).

    dcp_torch.py save DIR WORLD ELEMENTS   dcp.save of float32[ELEMENTS] split
                                           by rows over WORLD gloo ranks
    dcp_torch.py load DIR WORLD NAME       dcp.load of each rank's even share
                                           of NAME's rows (a resharding load)

The tensors are ShardedTensors with hand-planned chunks (as
tests/interop/dcpgen.py makes them), the split the same as
tests/tools/dcp_save's ("model.big" under "model"). Every rank times its
dcp.save / dcp.load call after a barrier and prints "saved|loaded RANK/WORLD
SECONDS"; the caller takes the slowest. A rank that dies does not leave the
others waiting: the process group times out after 120 s.
"""
import datetime
import os
import socket
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed._shard.sharded_tensor import Shard, ShardMetadata, init_from_local_shards


def share(size, rank, world):
    return size * rank // world, size * (rank + 1) // world


def sharded(local, start, shape, rank):
    md = ShardMetadata(shard_offsets=[start] + [0] * (len(shape) - 1),
                       shard_sizes=list(local.shape), placement=f"rank:{rank}/cpu")
    return init_from_local_shards([Shard(local, md)] if local.shape[0] else [], list(shape))


def worker(rank, world, port, what, d, arg):
    warnings.simplefilter("ignore")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}?use_libuv=0",
                            rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    if what == "save":
        n = int(arg)
        lo, hi = share(n, rank, world)
        local = (torch.arange(lo, hi, dtype=torch.int64) % 4096 + 1000).to(torch.float32)
        state = {"model": {"big": sharded(local, lo, [n], rank)}}
        dist.barrier()
        t0 = time.monotonic()
        dcp.save(state, storage_writer=dcp.FileSystemWriter(d))
    else:
        md = dcp.FileSystemReader(d).read_metadata()
        key = arg.replace("/", ".")
        shape = list(md.state_dict_metadata[key].size)
        lo, hi = share(shape[0], rank, world)
        local = torch.empty([hi - lo] + shape[1:], dtype=torch.float32)
        *parents, leaf = arg.split("/")
        state = node = {}
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = sharded(local, lo, shape, rank)
        dist.barrier()
        t0 = time.monotonic()
        dcp.load(state, storage_reader=dcp.FileSystemReader(d))
    s = time.monotonic() - t0
    # one write per line: the ranks share the pipe
    sys.stdout.write(f"{'saved' if what == 'save' else 'loaded'} {rank}/{world} {s:.6f}\n")
    sys.stdout.flush()
    dist.barrier()
    # gloo's teardown can hang: every rank is done
    os._exit(0)


def main():
    what, d, world, arg = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if what not in ("save", "load"):
        raise SystemExit("dcp_torch.py save|load DIR WORLD ELEMENTS|NAME")
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(worker, args=(world, port, what, d, arg), nprocs=world, join=True)


if __name__ == "__main__":
    main()
