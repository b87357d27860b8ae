#!/usr/bin/env python3
"""Where a running process's resident memory is: its binary's resident pages by ELF
section (from /proc/PID/pagemap, which needs root), then every other mapping by RSS.

    python3 bench/rss_sections.py PID

Used to find what a sidecar's peak RSS is made of (docs/benchmarks.md, "Memory")."""
import collections
import os
import re
import struct
import subprocess
import sys

PAGE = os.sysconf("SC_PAGE_SIZE")


def sections(binary):
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", line)
        if m and int(m.group(2), 16) > 0:
            found.append((int(m.group(2), 16), int(m.group(3), 16), m.group(1)))
    return sorted(found)


def main():
    pid = int(sys.argv[1])
    binary = os.readlink(f"/proc/{pid}/exe")
    secs = sections(binary)
    base = None
    own = []
    others = collections.Counter()
    current = None
    for line in open(f"/proc/{pid}/smaps"):
        parts = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            current = parts[5] if len(parts) >= 6 else "[anonymous]"
            if current == binary:
                if base is None and int(parts[2], 16) == 0:
                    base = lo
                own.append((lo, hi))
        elif parts and parts[0] == "Rss:" and current != binary:
            others[current] += int(parts[1])
    by_section = collections.Counter()
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for lo, hi in own:
            pagemap.seek(lo // PAGE * 8)
            entries = pagemap.read((hi - lo) // PAGE * 8)
            for i in range((hi - lo) // PAGE):
                if struct.unpack_from("<Q", entries, i * 8)[0] >> 63:
                    address = lo + i * PAGE - base
                    name = next((n for a, s, n in secs if a <= address < a + max(s, 1)), "(between sections)")
                    by_section[name] += PAGE // 1024
    print(f"{binary}: {sum(by_section.values())} KiB resident")
    for name, kib in by_section.most_common(15):
        print(f"  {kib:8d} KiB  {name}")
    print("other mappings:")
    for name, kib in others.most_common(12):
        if kib:
            print(f"  {kib:8d} KiB  {name}")


if __name__ == "__main__":
    main()
