"""Loads files the way torch and plain pickle readers do, and says what each got.

    python3 diffrun.py JOBS.json RESULTS.jsonl

Run by test_differential.py in a child process, never inside pytest: the files
are hostile and torch.load(weights_only=False) runs their code. JOBS.json is a
list of {"name", "path", "dir"}. For each job two readers run, each with its
own empty working directory (a payload writes the canary file CANARY there):

- "torch": torch.load(path, map_location="cpu", weights_only=False);
- "pickle": what another tool does with the same bytes. A zip archive: each
  entry Python's zipfile lists goes through pickle.loads. Anything else: the
  file is one stream of pickles read back to back with pickle.load until the
  end or the first error (a persistent id stands for itself).

One JSON line per job is appended to RESULTS.jsonl and flushed at once, so that
a reader that kills the interpreter loses only its own job (the caller starts
a new one for the rest). Each reader gets ALARM_S seconds.

Needs only the standard library and torch, so that any torch interpreter can
run it (torch 1.13 here; a torch 2.x environment through CKPT_TORCH2_PYTHON).
"""
import collections
import hashlib
import io
import json
import math
import os
import pickle
import signal
import sys
import traceback
import zipfile

import torch

CANARY = "CANARY"
ALARM_S = 20
MAX_STREAM = 64


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout(f"no result after {ALARM_S} s")


# ---- what was loaded, in the forms ckpt reports --------------------------------

def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def as_tensor(obj):
    if isinstance(obj, torch.storage.TypedStorage):
        return torch.empty(0, dtype=obj.dtype).set_(obj)
    if isinstance(obj, torch.UntypedStorage):
        return torch.empty(0, dtype=torch.uint8).set_(obj)
    return obj


def is_tensorish(obj):
    return isinstance(obj, (torch.Tensor, torch.storage.TypedStorage, torch.UntypedStorage))


def key_text(k):
    """ckpt's name of a dict key, for the key types these files use."""
    if isinstance(k, str):
        return k
    if k is None or isinstance(k, (bool, int)):
        return str(k)
    raise TypeError(f"no naming rule for key {k!r}")


def flatten(obj, prefix=None, out=None, depth=0):
    """[(name, tensor)]: path from the root, keys as text, positions as numbers."""
    if out is None:
        out = []
    if depth > 64:
        raise TypeError("nested too deep to name")
    if is_tensorish(obj):
        out.append(("" if prefix is None else prefix, as_tensor(obj)))
        return out

    def sub(part):
        return part if prefix is None else f"{prefix}.{part}"

    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_tensorish(v) or isinstance(v, (dict, list, tuple, set, frozenset)):
                flatten(v, sub(key_text(k)), out, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, sub(str(i)), out, depth + 1)
    return out


def tensor_bytes(t):
    t = t.detach().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    try:
        return t.numpy().tobytes()
    except (TypeError, RuntimeError):
        return t.view(torch.uint8).numpy().tobytes()


def _float(x):
    if math.isnan(x):
        return {"$float": "nan"}
    if math.isinf(x):
        return {"$float": "inf" if x > 0 else "-inf"}
    return x


def tagged(o, depth=0):
    """The tagged JSON form of `ckpt inspect --json`'s "tree"."""
    if depth > 64:
        raise TypeError("nested too deep")
    if o is None or isinstance(o, (bool, str)):
        return o
    if isinstance(o, int):
        return o if -(2 ** 63) <= o < 2 ** 63 else {"$int": str(o)}
    if isinstance(o, float):
        return _float(o)
    if isinstance(o, (bytes, bytearray)):
        return {"$bytes": bytes(o).hex()}
    if isinstance(o, torch.Size):
        return {"$size": list(o)}
    if isinstance(o, tuple):
        return {"$tuple": [tagged(x, depth + 1) for x in o]}
    if isinstance(o, list):
        return [tagged(x, depth + 1) for x in o]
    if isinstance(o, (set, frozenset)):
        return {"$set": [tagged(x, depth + 1) for x in o]}
    if is_tensorish(o):
        t = as_tensor(o)
        d = {"dtype": dtype_name(t.dtype), "shape": list(t.shape)}
        if isinstance(t, torch.nn.Parameter):
            d["parameter"] = True
        return {"$tensor": d}
    if isinstance(o, collections.OrderedDict):
        r = {"$odict": _dict_tagged(o, depth)}
        if getattr(o, "__dict__", None):
            r["$state"] = _dict_tagged(o.__dict__, depth)
        return r
    if isinstance(o, dict):
        return _dict_tagged(o, depth)
    raise TypeError(f"no tagged form for {type(o).__module__}.{type(o).__qualname__}")


def _dict_tagged(d, depth):
    if all(isinstance(k, str) and "\0" not in k for k in d):
        return {k: tagged(v, depth + 1) for k, v in d.items()}
    return {"$dict": [[tagged(k, depth + 1), tagged(v, depth + 1)] for k, v in d.items()]}


def summary(obj):
    """What a loaded object holds: tensors (name, dtype, shape, sha256 of the
    contiguous values) and the tagged tree (None when it has no tagged form)."""
    out = {"type": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    try:
        out["tensors"] = [[name, dtype_name(t.dtype), list(t.shape),
                           hashlib.sha256(tensor_bytes(t)).hexdigest()]
                          for name, t in flatten(obj)]
    except Exception as e:                       # noqa: BLE001 - reported, not raised
        out["tensors"] = None
        out["tensors_error"] = f"{type(e).__name__}: {e}"
    try:
        out["tree"] = tagged(obj)
    except Exception as e:                       # noqa: BLE001
        out["tree"] = None
        out["tree_error"] = f"{type(e).__name__}: {e}"
    return out


def error_text(e):
    return f"{type(e).__name__}: {str(e)[:400]}"


# ---- the readers ----------------------------------------------------------------

def in_dir(d, fn):
    """Runs fn() with d as the working directory and the alarm set."""
    os.makedirs(d, exist_ok=True)
    old = os.getcwd()
    os.chdir(d)
    signal.alarm(ALARM_S)
    try:
        return fn()
    finally:
        signal.alarm(0)
        os.chdir(old)


def run_torch(path, d):
    res = {}
    try:
        obj = in_dir(d, lambda: torch.load(path, map_location="cpu", weights_only=False))
        res["ok"] = True
        res.update(summary(obj))
    except BaseException as e:                   # noqa: BLE001 - a payload may raise anything
        if isinstance(e, KeyboardInterrupt):
            raise
        res["ok"] = False
        res["error"] = error_text(e)
    res["canary"] = os.path.exists(os.path.join(d, CANARY))
    return res


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        return pid


def run_pickle(path, d):
    """pickle.loads of every zip entry, or pickle.load back to back on the file."""
    res = {"objects": [], "error": None}

    def stream():
        with open(path, "rb") as f:
            for _ in range(MAX_STREAM):
                if not f.peek(1):
                    return
                res["objects"].append(summary(_Unpickler(f).load()))

    def entries():
        res["entries"] = []
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                ent = {"name": info.filename}
                try:
                    data = z.read(info)
                    ent["object"] = summary(_Unpickler(io.BytesIO(data)).load())
                except BaseException as e:       # noqa: BLE001
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    ent["error"] = error_text(e)
                res["entries"].append(ent)

    is_zip = False
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:                            # noqa: BLE001
        pass
    res["mode"] = "zip entries" if is_zip else "stream"
    try:
        in_dir(d, entries if is_zip else stream)
    except BaseException as e:                   # noqa: BLE001
        if isinstance(e, KeyboardInterrupt):
            raise
        res["error"] = error_text(e)
    res["canary"] = os.path.exists(os.path.join(d, CANARY))
    return res


def main():
    jobs_path, results_path = sys.argv[1], sys.argv[2]
    with open(jobs_path, encoding="utf-8") as f:
        jobs = json.load(f)
    signal.signal(signal.SIGALRM, _alarm)
    torch.set_num_threads(1)
    version = torch.__version__
    with open(results_path, "a", encoding="utf-8") as out:
        for job in jobs:
            try:
                res = {"name": job["name"], "torch_version": version,
                       "torch": run_torch(job["path"], os.path.join(job["dir"], "torch")),
                       "pickle": run_pickle(job["path"], os.path.join(job["dir"], "pickle"))}
            except Exception:                    # noqa: BLE001 - the harness itself failed
                res = {"name": job["name"], "torch_version": version,
                       "harness_error": traceback.format_exc()[-2000:]}
            out.write(json.dumps(res) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
