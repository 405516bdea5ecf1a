"""Prints the NOT_PRINTABLE table of src/core/repr.c: the ranges of code points
above ASCII that Python's repr() escapes (str.isprintable() is false), as the
Unicode database of the running Python assigns them. Run with Python 3.11
(Unicode 14.0), the version ckpt's names follow."""
import sys
import unicodedata

ranges, start = [], None
for cp in range(0x7F, 0x110000):
    if not chr(cp).isprintable():
        start = cp if start is None else start
    elif start is not None:
        ranges.append((start, cp - 1))
        start = None
if start is not None:
    ranges.append((start, 0x10FFFF))
print(f"/* Python {sys.version_info.major}.{sys.version_info.minor}, "
      f"Unicode {unicodedata.unidata_version}: {len(ranges)} ranges */")
line = "   "
for lo, hi in ranges:
    item = f" {{0x{lo:x}, 0x{hi:x}}},"
    if len(line) + len(item) > 99:
        print(line)
        line = "   "
    line += item
print(line)
