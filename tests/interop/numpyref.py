"""numpy arrays as ckpt reads them: names, dtypes, shapes, strides and bytes,
computed with numpy itself (torch 1.13 lacks uint16/32/64)."""
import collections
import pickle

import numpy as np

NP_DTYPES = {
    "bool": "bool", "int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16",
    "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64",
    "float16": "float16", "float32": "float32", "float64": "float64",
    "complex64": "complex64", "complex128": "complex128",
}


def native(a):
    """The array in native byte order (what ckpt hands out)."""
    return a.astype(a.dtype.newbyteorder("="), copy=False)


def elem_strides(a):
    """Strides in elements as ckpt computes them for a C or Fortran array."""
    f = a.flags.f_contiguous and not a.flags.c_contiguous and a.ndim > 1
    strides, step = [0] * a.ndim, 1
    order = range(a.ndim) if f else reversed(range(a.ndim))
    for k in order:
        strides[k] = step
        step *= max(a.shape[k], 1)
    return strides


def flatten(obj, prefix=None, out=None):
    """(name, array) pairs in ckpt's naming order."""
    if out is None:
        out = []

    def sub(part):
        return part if prefix is None else f"{prefix}.{part}"

    if isinstance(obj, np.ndarray):
        out.append(("" if prefix is None else prefix, obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (np.ndarray, dict, list, tuple)):
                flatten(v, sub(str(k)), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, sub(str(i)), out)
    return out


def assert_same(tool, path, expected):
    """ckpt's tensors of path are the arrays of expected (name -> array pairs)."""
    index, blobs = tool.dump(path)
    assert [e["name"] for e in index] == [n for n, _ in expected]
    for e, b, (name, a) in zip(index, blobs, expected):
        assert e["dtype"] == NP_DTYPES[native(a).dtype.name], name
        assert e["shape"] == list(a.shape), name
        assert b == np.ascontiguousarray(native(a)).tobytes(), f"{name}: bytes differ"


class NumpyUnpickler(pickle.Unpickler):
    """Reference reader of benign files: the torch allow-list plus numpy's array
    builders (real numpy, on files this suite trusts)."""

    NUMPY = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.NUMPY:
            return super().find_class(module.replace("numpy._core", "numpy.core"), name)
        if (module, name) in (("collections", "OrderedDict"), ("_codecs", "encode"),
                              ("builtins", "bytes"), ("__builtin__", "bytes")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"not allowed here: {module}.{name}")


def load_pickle(raw):
    import io
    return NumpyUnpickler(io.BytesIO(raw)).load()


def plain(obj):
    """numpy scalars as Python numbers, containers kept."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, plain(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    return obj



def tagged(o):
    """torchref.tagged for trees holding numpy arrays (any shared dtype) and
    numpy scalars."""
    import torchref
    if isinstance(o, np.ndarray):
        return {"$tensor": {"dtype": NP_DTYPES[native(o).dtype.name], "shape": list(o.shape)}}
    if isinstance(o, np.generic):
        return torchref.tagged(o.item())
    if isinstance(o, tuple):
        return {"$tuple": [tagged(x) for x in o]}
    if isinstance(o, list):
        return [tagged(x) for x in o]
    if isinstance(o, collections.OrderedDict):
        return {"$odict": _dict_tagged(o)}
    if isinstance(o, dict):
        return _dict_tagged(o)
    return torchref.tagged(o)


def _dict_tagged(d):
    if all(isinstance(k, str) and "\0" not in k for k in d):
        return {k: tagged(v) for k, v in d.items()}
    return {"$dict": [[tagged(k), tagged(v)] for k, v in d.items()]}
