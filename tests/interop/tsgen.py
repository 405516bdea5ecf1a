"""Hand-made TorchScript archives: the shapes torch.jit.save writes (a module
object by GLOBAL '__torch__ Name' + EMPTY_TUPLE + NEWOBJ + BUILD with a dict of
attributes, code/ with the class's __parameters__ and __buffers__ lists), and
hostile ones that only a hand can make. Used by test_torchscript.py and by
fuzz/make_corpus.py for the fuzz_torchscript seeds.

build(name) -> (archive bytes, expected): expected is the list of state-dict
names for a good archive, or a text the refusal must hold.
"""
import io
import struct
import zipfile

MODULE_CODE = b"class M(Module):\n  __parameters__ = [\"w\", ]\n  __buffers__ = []\n" \
              b"  w : Tensor\n  training : bool\n"
EMPTY_CODE = b"class M(Module):\n  __parameters__ = []\n  __buffers__ = []\n"


def s(text):
    b = text.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def put(i):
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def get(i):
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def new(module="__torch__", name="M"):
    return glob(module, name) + b")\x81"


def tensor(key, numel, shape):
    """_rebuild_tensor_v2 over ('storage', FloatStorage, key, 'cpu', numel)."""
    pid = b"(" + s("storage") + glob("torch", "FloatStorage") + s(key) + s("cpu") + \
        b"K" + bytes([numel]) + b"tQ"
    dims = b"(" + b"".join(b"K" + bytes([d]) for d in shape) + b"t"
    strides, acc = [], 1
    for d in reversed(shape):
        strides.insert(0, acc)
        acc *= d
    st = b"(" + b"".join(b"K" + bytes([d]) for d in strides) + b"t"
    return glob("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"K\x00" + dims + st + \
        b"\x89" + glob("collections", "OrderedDict") + b")Rt" + b"R"


def attrs(items):
    return b"}(" + b"".join(s(k) + v for k, v in items) + b"u"


def archive(pkl, code=MODULE_CODE, data=None, code_path="__torch__.py", extra=None):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/data.pkl", b"\x80\x02" + pkl + b".")
        z.writestr(f"m/code/{code_path}", code)
        z.writestr("m/constants.pkl", b"\x80\x02).")
        for k, v in (data or {}).items():
            z.writestr(f"m/data/{k}", v)
        for k, v in (extra or {}).items():
            z.writestr(f"m/{k}", v)
        z.writestr("m/version", b"3\n")
    return buf.getvalue()


W = {"0": struct.pack("<2f", 1.5, -2.0)}


def _good():
    return archive(new() + attrs([("w", tensor("0", 2, [2])), ("training", b"\x88")]) + b"b",
                   data=W)


def _helpers():
    """torch.jit._pickle's helpers are read as their values."""
    jp = "torch.jit._pickle"
    pkl = new() + attrs([
        ("w", tensor("0", 2, [2])),
        ("ints", glob(jp, "build_intlist") + b"(]q\x05(K\x01K\x02et" + b"R"),
        ("floats", glob(jp, "build_doublelist") + b"(]G?\xf0\x00\x00\x00\x00\x00\x00at" + b"R"),
        ("bools", glob(jp, "build_boollist") + b"(](\x88\x89et" + b"R"),
        ("ts", glob(jp, "build_tensorlist") + b"(](" + tensor("0", 2, [2]) + b"et" + b"R"),
        ("d", glob(jp, "restore_type_tag") + b"(}" + s("Dict[str, int]") + b"t" + b"R"),
    ]) + b"b"
    return archive(pkl, data=W)


def _cycle():
    pkl = new() + put(0) + attrs([("self", get(0))]) + b"b"
    return archive(pkl, code=EMPTY_CODE)


def _fan_out(levels=40):
    """Each level holds the one below twice: 2^40 module paths."""
    pkl = glob("__torch__", "M") + put(0) + b"0"
    pkl += get(0) + b")\x81" + attrs([]) + b"b" + put(1) + b"0"
    for i in range(1, levels):
        pkl += get(0) + b")\x81" + attrs([("a", get(i)), ("b", get(i))]) + b"b" + put(i + 1)
        if i + 1 < levels:
            pkl += b"0"
    return archive(pkl, code=EMPTY_CODE)


def _torchbind():
    return archive(new("__torch__.torch.classes.quantized", "LinearPackedParamsBase") +
                   b"(tb", code=EMPTY_CODE)


def _reduce_call():
    return archive(glob("__torch__", "M") + b")R", code=EMPTY_CODE)


def _tuple_state():
    return archive(new() + b"(K\x01tb", code=EMPTY_CODE)


def _built_twice():
    return archive(new() + attrs([("training", b"\x88")]) + b"b" + attrs([("x", b"N")]) + b"b",
                   code=EMPTY_CODE)


def _no_code():
    return archive(new("__torch__.lib", "M") + attrs([]) + b"b", code=EMPTY_CODE)


def _missing_param():
    return archive(new() + attrs([("training", b"\x88")]) + b"b", data=W)


def _param_not_tensor():
    return archive(new() + attrs([("w", b"K\x05")]) + b"b", data=W)


def _bad_list():
    code = b"class M(Module):\n  __parameters__ = [w, ]\n  __buffers__ = []\n"
    return archive(new() + attrs([]) + b"b", code=code)


def _not_a_module():
    return archive(new() + attrs([]) + b"b", code=b"class M:\n  x : int\n")


def _other_global():
    return archive(new() + attrs([("x", glob("os", "system") + b"(" + s("true") + b"tR")]) +
                   b"b", code=EMPTY_CODE)


def _submodules():
    """A Module holding a module (named) and a plain TorchScript class (not
    a child: state_dict() skips it), in a second code record."""
    code = b"class M(Module):\n  __parameters__ = [\"w\", ]\n  __buffers__ = [\"b\", ]\n" \
           b"class Plain:\n  x : Tensor\n"
    pkl = new() + attrs([
        ("w", b"N"),
        ("b", tensor("0", 2, [2])),
        ("sub", new("__torch__.lib", "M") + attrs([("w", tensor("0", 2, [1, 2])),
                                                  ("b", tensor("0", 2, [2]))]) + b"b"),
        ("plain", new("__torch__.lib", "Plain") + attrs([("x", tensor("0", 2, [2]))]) + b"b"),
    ]) + b"b"
    return archive(pkl, code=code, data=W, extra={"code/__torch__/lib.py": code})


CASES = {
    "good": (_good, ["w"]),
    "helpers": (_helpers, ["w"]),
    "submodules": (_submodules, ["b", "sub.w", "sub.b"]),
    "cycle": (_cycle, "holds itself"),
    "fan_out": (_fan_out, "module paths"),
    "torchbind": (_torchbind, "LinearPackedParamsBase' is a torchbind class"),
    "reduce_call": (_reduce_call, "NEWOBJ with no arguments"),
    "tuple_state": (_tuple_state, "class '__torch__.M' has a __setstate__"),
    "built_twice": (_built_twice, "is built twice"),
    "no_code": (_no_code, "'__torch__.lib.M' has no definition"),
    "missing_param": (_missing_param, "lists the parameter 'w'"),
    "param_not_tensor": (_param_not_tensor, "is a int, not a tensor"),
    "bad_list": (_bad_list, "not a list of quoted names"),
    "not_a_module": (_not_a_module, "is not a Module"),
    "other_global": (_other_global, "global 'os.system' is not allowed"),
}


def build(name):
    fn, expected = CASES[name]
    return fn(), expected
