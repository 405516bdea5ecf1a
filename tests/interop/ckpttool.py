"""Running the ckpt CLI and the ckpt_dump test tool from the tests."""
import itertools
import json
import pathlib
import subprocess

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "MemorySanitizer")


class Result:
    def __init__(self, args, proc):
        self.args = args
        self.returncode = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")

    def describe(self):
        return (f"command: {' '.join(map(str, self.args))}\nexit: {self.returncode}\n"
                f"stderr: {self.stderr[-3000:]}\nstdout: {self.stdout[-2000:]}")


def crashed(res):
    """True when the process died on a signal or a sanitizer reported."""
    return res.returncode < 0 or any(m in res.stderr for m in SANITIZER_MARKS)


class Tool:
    def __init__(self, ckpt_bin, dump_bin, scratch):
        self.ckpt_bin = ckpt_bin
        self.dump_bin = dump_bin
        self.scratch = pathlib.Path(scratch)
        self._n = itertools.count()

    def run(self, *args, timeout=120):
        argv = [self.ckpt_bin, *map(str, args)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout)
        res = Result(argv, proc)
        assert not crashed(res), "ckpt crashed\n" + res.describe()
        return res

    def inspect_json(self, path):
        res = self.run("inspect", path, "--json")
        assert res.returncode == 0, res.describe()
        assert res.stderr == "", res.describe()
        return json.loads(res.stdout)

    def dump(self, path, *flags):
        """Returns (index, blobs): index.json entries and each tensor's bytes.
        flags: "--torchscript-weights" or nothing."""
        out = self.scratch / f"d{next(self._n)}"
        out.mkdir()
        argv = [self.dump_bin, str(path), str(out), *flags]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=300)
        res = Result(argv, proc)
        assert not crashed(res), "ckpt_dump crashed\n" + res.describe()
        assert res.returncode == 0, res.describe()
        index = json.loads((out / "index.json").read_text(encoding="utf-8"))
        blobs = [(out / e["file"]).read_bytes() for e in index]
        return index, blobs
