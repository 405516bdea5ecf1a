"""Comparison of loaded trees: values, types, tensor layout, bytes and sharing."""
import collections
import math

import torch


def storage_ptr(t):
    st = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()
    return st.data_ptr()


def raw_bytes(t):
    t = t.detach()
    if t.is_sparse:
        t = t.coalesce()
        return raw_bytes(t.indices()) + raw_bytes(t.values())
    if t.numel() == 0:
        return b""
    c = torch.empty(t.shape, dtype=t.dtype).copy_(t).reshape(-1)
    if c.dtype.is_complex:
        c = torch.view_as_real(c).reshape(-1)
    return c.view(torch.uint8).numpy().tobytes()


def assert_same(ours, ref, path="root", shares=None):
    """ours (ckpt.load) equals ref (torch.load): same types, tree, dtypes,
    shapes, strides, offsets, bytes, and the same storage sharing."""
    if shares is None:
        shares = ({}, {})
    if hasattr(torch, "TypedStorage") and isinstance(ref, torch.TypedStorage):
        # a bare storage: ckpt reads it as a 1-d tensor over it
        ref = torch.tensor([], dtype=ref.dtype).set_(ref)
    if type(ref) is bytearray:  # the C API tells bytes and bytearray apart nowhere
        ref = bytes(ref)
    assert type(ours) is type(ref), f"{path}: {type(ours)} != {type(ref)}"
    if isinstance(ref, torch.Tensor):
        assert ours.dtype == ref.dtype, path
        assert ours.shape == ref.shape, path
        assert ours.layout == ref.layout, path
        assert ours.requires_grad == ref.requires_grad, path
        assert ours.device == ref.device, path
        if ref.layout == torch.strided:
            assert ours.stride() == ref.stride(), path
            assert ours.storage_offset() == ref.storage_offset(), path
            if ref.device.type != "meta":
                assert raw_bytes(ours) == raw_bytes(ref), f"{path}: bytes differ"
                a, b = storage_ptr(ours), storage_ptr(ref)
                if ref.numel():
                    assert shares[0].setdefault(b, a) == a, f"{path}: storage sharing differs"
                    assert shares[1].setdefault(a, b) == b, f"{path}: storage sharing differs"
        else:
            assert raw_bytes(ours) == raw_bytes(ref), f"{path}: bytes differ"
        return
    if isinstance(ref, dict):
        assert list(ours.keys()) == list(ref.keys()), path
        for k in ref:
            assert_same(ours[k], ref[k], f"{path}[{k!r}]", shares)
        if isinstance(ref, collections.OrderedDict) and hasattr(ref, "_metadata"):
            assert getattr(ours, "_metadata", None) == ref._metadata, f"{path}._metadata"
        return
    if isinstance(ref, (list, tuple)):
        assert len(ours) == len(ref), path
        for i, (a, b) in enumerate(zip(ours, ref)):
            assert_same(a, b, f"{path}[{i}]", shares)
        return
    if isinstance(ref, complex):
        assert type(ours) is complex and repr(ours) == repr(ref), path
        return
    if isinstance(ref, float) and math.isnan(ref):
        assert math.isnan(ours), path
        return
    assert ours == ref, f"{path}: {ours!r} != {ref!r}"
