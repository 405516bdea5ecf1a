"""The ckpt command line: help, version, exit codes, messages, human output."""
import json
import re
import struct
import zipfile

import pytest
import torch


@pytest.fixture(scope="module")
def files(gen_dir):
    """A few small files made for these tests."""
    d = gen_dir / "cli"
    d.mkdir()
    out = {}
    obj = {"weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
           "bias": torch.tensor([1.5, -2.0], dtype=torch.float64),
           "steps": torch.tensor(7, dtype=torch.int64),
           "items": list(range(30))}
    out["zip"] = d / "small.pt"
    torch.save(obj, out["zip"])
    out["legacy"] = d / "small_legacy.pt"
    torch.save(obj, out["legacy"], _use_new_zipfile_serialization=False)
    out["obj"] = obj
    return out


def flip_byte_in_record(src, dst, record, delta=1):
    """Copies src to dst with one byte inside `record`'s data changed."""
    raw = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = z.getinfo(record)
        off = info.header_offset
        name_len, extra_len = struct.unpack_from("<HH", raw, off + 26)
        start = off + 30 + name_len + extra_len
        assert info.file_size > 4
        pos = start + info.file_size // 2
    raw[pos] ^= delta
    dst.write_bytes(bytes(raw))
    return pos


def one_line(text):
    lines = text.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0], f"expected one line, got {text!r}"
    return lines[0]


def test_help(tool):
    for flag in ("--help", "-h", "help"):
        res = tool.run(flag)
        assert res.returncode == 0, res.describe()
        assert res.stdout.startswith("usage: ckpt"), res.describe()
        assert "inspect" in res.stdout and "verify" in res.stdout
    for cmd in ("inspect", "verify"):
        res = tool.run(cmd, "--help")
        assert res.returncode == 0, res.describe()
        assert res.stdout.startswith(f"usage: ckpt {cmd}"), res.describe()
    assert "--json" in tool.run("inspect", "--help").stdout


def test_version(tool, source_dir):
    header = (source_dir / "include" / "ckpt.h").read_text()
    version = re.search(r'#define CKPT_VERSION_STRING "([^"]+)"', header).group(1)
    for flag in ("--version", "version"):
        res = tool.run(flag)
        assert res.returncode == 0
        first, deps = res.stdout.splitlines()
        assert first == f"ckpt {version}"
        assert re.fullmatch(r"built with libdeflate [0-9.]+, zlib [0-9.]+(-[a-z0-9.]+)?, "
                            r"jansson [0-9.]+, yajl [0-9]+\.[0-9]+\.[0-9]+", deps), deps


def test_usage_errors(tool, files):
    res = tool.run()
    assert res.returncode == 2 and "usage" in res.stderr and res.stdout == ""
    res = tool.run("frobnicate")
    assert res.returncode == 2 and "frobnicate" in res.stderr
    res = tool.run("inspect")
    assert res.returncode == 2 and "usage" in res.stderr
    res = tool.run("inspect", files["zip"], "--bogus")
    assert res.returncode == 2 and "--bogus" in res.stderr
    res = tool.run("inspect", files["zip"], files["legacy"])
    assert res.returncode == 2
    res = tool.run("verify")
    assert res.returncode == 2 and "usage" in res.stderr


def test_inspect_missing_file(tool, gen_dir):
    missing = gen_dir / "no-such-file.pt"
    res = tool.run("inspect", missing)
    assert res.returncode == 2
    assert res.stdout == ""
    line = one_line(res.stderr)
    assert str(missing) in line
    assert "No such file" in line
    res = tool.run("inspect", missing, "--json")
    assert res.returncode == 2 and res.stdout == ""


def test_inspect_directory(tool, gen_dir):
    res = tool.run("inspect", gen_dir)
    assert res.returncode == 2
    assert str(gen_dir) in one_line(res.stderr)


def test_verify_good_files(tool, files, corpus_dir):
    st = corpus_dir / "benign/SafeTensors.jl/non_sharded/model.safetensors"
    for p, fmt in ((files["zip"], "torch-zip"), (files["legacy"], "torch-legacy"),
                   (st, "safetensors")):
        res = tool.run("verify", p)
        assert res.returncode == 0, res.describe()
        assert res.stderr == ""
        line = one_line(res.stdout)
        assert line.startswith(f"{p}: ok: {fmt}"), line
    res = tool.run("verify", files["zip"], files["legacy"], st)
    assert res.returncode == 0
    assert len(res.stdout.strip().split("\n")) == 3
    res = tool.run("verify", "-q", files["zip"])
    assert res.returncode == 0 and res.stdout == ""


def test_verify_flipped_byte(tool, files, gen_dir):
    bad = gen_dir / "cli" / "flipped.pt"
    flip_byte_in_record(files["zip"], bad, "small/data/0")
    res = tool.run("verify", bad)
    assert res.returncode == 1, res.describe()
    assert res.stderr == "", res.describe()
    line = one_line(res.stdout)
    assert line.startswith(f"{bad}: corrupt: "), line
    assert "small/data/0" in line
    assert "CRC" in line
    # torch never checks CRCs: the file still opens, with the changed value
    res = tool.run("inspect", bad, "--json")
    assert res.returncode == 0, res.describe()
    # one bad file among good ones: the worst exit code wins, every file reported
    res = tool.run("verify", files["zip"], bad, files["legacy"])
    assert res.returncode == 1
    assert res.stdout.count(": ok: ") == 2 and res.stdout.count(": corrupt: ") == 1


def test_verify_missing_file(tool, files, gen_dir):
    missing = gen_dir / "missing.pt"
    res = tool.run("verify", missing)
    assert res.returncode == 2
    assert str(missing) in one_line(res.stderr)
    res = tool.run("verify", files["zip"], missing)
    assert res.returncode == 2
    assert res.stdout.startswith(f"{files['zip']}: ok: ")


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_truncated_file(tool, files, gen_dir, kind):
    src = files[kind]
    raw = src.read_bytes()
    for cut in (len(raw) - 1, len(raw) - 30, len(raw) // 2, 200, 7):
        bad = gen_dir / "cli" / f"trunc_{kind}_{cut}.pt"
        bad.write_bytes(raw[:cut])
        for cmd in ("inspect", "verify"):
            res = tool.run(cmd, bad)
            assert res.returncode != 0, res.describe()
            assert res.returncode in (1, 2), res.describe()
            # verify's answer (corrupt) is its result, on stdout
            answer = cmd == "verify" and res.returncode == 1
            prefix = f"{bad}: corrupt: " if answer else f"ckpt: {bad}: "
            line = one_line(res.stdout if answer else res.stderr)
            assert line.startswith(prefix), line
            detail = line[len(prefix):]
            # "RECORD at byte N: MESSAGE": where the file ends too early
            assert re.match(r"(\S.* )?at byte \d+: \S", detail), line


def test_truncated_safetensors(tool, gen_dir, corpus_dir):
    raw = (corpus_dir / "benign/SafeTensors.jl/non_sharded/model.safetensors").read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 12, 4):
        bad = gen_dir / "cli" / f"trunc_{cut}.safetensors"
        bad.write_bytes(raw[:cut])
        res = tool.run("inspect", bad)
        assert res.returncode == 2, res.describe()
        line = one_line(res.stderr)
        # a record ("safetensors header") and/or a byte offset, then the message
        assert re.match(rf"ckpt: {re.escape(str(bad))}: (safetensors[^:]*|(\S.* )?at byte \d+): \S",
                        line), line


def test_inspect_human(tool, files):
    res = tool.run("inspect", files["zip"])
    assert res.returncode == 0, res.describe()
    out = res.stdout
    assert "Format:   torch-zip" in out
    assert "Prefix:   small" in out
    rows = {}
    for line in out.split("\n"):
        parts = line.split()
        if len(parts) >= 4 and parts[0] in ("weight", "bias", "steps"):
            rows[parts[0]] = line
    assert set(rows) == {"weight", "bias", "steps"}, out
    assert re.search(r"weight\s+float32\s+\[2, 3\]\s+24\s+\S+\s+cpu", rows["weight"])
    assert re.search(r"bias\s+float64\s+\[2\]\s+16\s+\S+\s+cpu", rows["bias"])
    assert re.search(r"steps\s+int64\s+\[\]\s+8\s+\S+\s+cpu", rows["steps"])
    assert re.search(r"^Totals:\s+3 tensors, 9 elements, 48 bytes \(48 B\)$", out, re.M), out
    # containers longer than 20 items are cut short unless --full
    assert "10 more (use --full)" in out
    full = tool.run("inspect", files["zip"], "--full").stdout
    assert "more (use --full)" not in full
    assert "[29] 29" in full


def test_inspect_human_legacy(tool, files):
    res = tool.run("inspect", files["legacy"])
    assert res.returncode == 0, res.describe()
    assert "Format:   torch-legacy" in res.stdout
    assert "Legacy protocol: 1001" in res.stdout
    assert re.search(r"^Totals:\s+3 tensors, 9 elements, 48 bytes", res.stdout, re.M)


def test_inspect_json_shape(tool, files):
    js = tool.inspect_json(files["zip"])
    assert set(js) >= {"format", "details", "records", "tensors", "totals", "tree"}
    assert js["file"] == str(files["zip"])
    assert js["totals"] == {"tensors": 3, "distinct": 3, "elements": 9, "bytes": 48}
    assert js["model"] is None  # a plain dict: no model entry to tell apart
    assert js["tree"]["items"] == list(range(30))
    # the JSON is plain JSON (no NaN literals etc.)
    json.dumps(js, allow_nan=False)


def test_inspect_safetensors_human(tool, corpus_dir):
    p = corpus_dir / "benign/SafeTensors.jl/sharded/model-00002-of-00006.safetensors"
    res = tool.run("inspect", p)
    assert res.returncode == 0, res.describe()
    assert "Format:   safetensors" in res.stdout
    assert re.search(r"float32_357\s+float32\s+\[3, 5, 7\]\s+420\b", res.stdout), res.stdout
    assert re.search(r"^Metadata:\n  format: '?pt'?$", res.stdout, re.M), res.stdout


def test_exit_codes_agree(tool, gen_dir):
    """A whole pickled module cannot be checked without --permissive: verify
    says so as inspect does, exit 2 (could not do it), not 1 (corrupt)."""
    p = gen_dir / "cli" / "module.pt"
    p.parent.mkdir(exist_ok=True)
    torch.save(torch.nn.Linear(2, 2), p)
    res = tool.run("inspect", p)
    assert res.returncode == 2, res.describe()
    res = tool.run("verify", p)
    assert res.returncode == 2, res.describe()
    lines = res.stderr.strip("\n").split("\n")
    assert res.stdout == "" and len(lines) == 2, res.describe()
    assert lines[0].startswith(f"ckpt: {p}: ") and lines[1].startswith("ckpt: hint: "), lines
    for cmd in ("verify", "inspect"):
        res = tool.run(cmd, gen_dir / "cli" / "missing.pt")
        assert res.returncode == 2, res.describe()


def test_verify_safetensors_claims_no_checksum(tool, gen_dir):
    """safetensors has no checksum: overwritten tensor bytes pass verify, and
    its line says only the structure was checked."""
    p = gen_dir / "cli" / "over.safetensors"
    p.parent.mkdir(exist_ok=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    header += b" " * (-len(header) % 8)
    data = struct.pack("<Q", len(header)) + header + struct.pack("<4f", 1, 2, 3, 4)
    p.write_bytes(data[:-4] + b"\xff\xff\xff\xff")  # the last float overwritten
    res = tool.run("verify", p)
    assert res.returncode == 0, res.describe()
    line = one_line(res.stdout)
    assert line.startswith(f"{p}: ok: safetensors, "), line
    assert line.endswith("structure checked; safetensors has no checksum of the data"), line
    assert "bytes checked" not in line


def test_mistyped_command_suggests(tool):
    """A near miss names the nearest command, not the whole usage."""
    for typo, meant in (("verfy", "verify"), ("inspetc", "inspect"), ("prun", "prune"),
                        ("lss", "ls"), ("convret", "convert"), ("scna", "scan")):
        res = tool.run(typo)
        assert res.returncode == 2 and res.stdout == "", res.describe()
        lines = res.stderr.rstrip("\n").split("\n")
        assert lines[0] == f"ckpt: unknown command '{typo}'; did you mean '{meant}'?", lines
        assert len(lines) == 2 and "commands:" not in res.stderr, res.describe()
    res = tool.run("frobnicate")
    assert "did you mean" not in res.stderr and "commands:" not in res.stderr, res.describe()


def test_one_error_prefix(tool, files, gen_dir, tmp_path):
    """Every command's errors start 'ckpt: ' (never 'ckpt convert:'), on stderr,
    with nothing on stdout."""
    missing = gen_dir / "cli" / "missing.pt"
    runs = [("inspect", missing), ("verify", missing), ("diff", missing, files["zip"]),
            ("convert", missing, tmp_path / "o.pth"), ("match", missing, "--model", missing),
            ("ls", missing), ("prune", missing, "--keep", "1"),
            ("convert", files["zip"], tmp_path / "o.pth", "--key", "nothing.here")]
    for args in runs:
        res = tool.run(*args)
        assert res.returncode == 2, res.describe()
        assert res.stdout == "", res.describe()
        lines = res.stderr.rstrip("\n").split("\n")
        assert lines and all(ln.startswith("ckpt: ") for ln in lines), res.describe()
