#!/usr/bin/env python3
"""Writes the seed corpora in corpus/<target>/ (small files, committed).

Run from anywhere: python3 fuzz/make_seeds.py. Deterministic output.
"""
import bz2
import io
import json
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- layout: the repository's layout cut into small ones, plus edge cases ---
META = {"part_alignment": 4096, "disk_alignment": 4096, "block_size": 512, "fs_block_size": 4096}
ESP = {"label": "EFI-SYSTEM", "fs_label": "EFI-SYSTEM", "type": "efi", "blocks": "131072",
       "fs_type": "vfat", "mount": "/boot"}
USR = {"label": "USR-A", "uuid": "7130c94a-213a-4e5a-8e26-6cce9662f132", "type": "flatcar-rootfs",
       "blocks": "131072", "fs_blocks": "16000", "fs_type": "erofs", "fs_compression": "lz4",
       "mount": "/usr", "features": ["prioritize", "verity"]}
ROOT = {"label": "ROOT", "fs_label": "ROOT", "type": "flatcar-resize", "blocks": "65536",
        "fs_type": "ext4", "mount": "/"}


def layout(name, d):
    out("layout", name, (json.dumps(d, separators=(",", ":")) + "\n").encode())


layout("base", {"metadata": META, "layouts": {"base": {
    "1": ESP, "2": {"label": "BIOS-BOOT", "type": "bios", "blocks": "4096"}, "3": USR, "9": ROOT}}})
layout("variants", {"metadata": META, "layouts": {
    "base": {"1": ESP, "3": USR, "4": {"label": "USR-B", "type": "flatcar-rootfs", "blocks": "131072"},
             "9": ROOT},
    "vm": {"9": {"label": "ROOT", "blocks": "262144"}},
    "container": {"1": {"type": "blank"}, "3": {"type": "blank"}, "4": {"type": "blank"},
                  "9": {"label": "ROOT", "type": "0fc63daf-8483-4772-8e79-3d69d8477de4",
                        "blocks": "65536"}}}})
layout("pinned", {"metadata": META, "layouts": {"base": {
    "disk_blocks": 1000000, "1": dict(ESP, first_block=8192),
    "6": {"label": "OEM", "fs_label": "OEM", "type": "data", "blocks": 65536, "fs_type": "btrfs",
          "fs_compression": "zstd:3", "mount": "/oem"},
    "9": dict(ROOT, first_block="409600", fs_bytes_per_inode="16384", fs_inode_size=256)}}})
layout("sector4k", {"metadata": {"part_alignment": 512, "disk_alignment": 512, "block_size": 4096,
                                 "fs_block_size": 4096},
                    "layouts": {"base": {"1": dict(ESP, blocks="16384"),
                                         "9": dict(ROOT, blocks="8192", fs_blocks=4096)}}})
layout("huge", {"metadata": META, "layouts": {"base": {
    "1": ESP, "9": dict(ROOT, blocks="67861891338878063")}}})
layout("edge", {"metadata": {"part_alignment": 8, "disk_alignment": 8, "block_size": 512,
                             "fs_block_size": 4096},
                "layouts": {"base": {"_comment": "x", "128": {"label": "L", "type": "data", "blocks": 1},
                                     "1": {"label": "E", "type": "efi", "blocks": "8",
                                           "part_alignment": "18446744073709551608"}}}})
with open(os.path.join(HERE, "..", "layouts", "disk_layout.json"), "rb") as f:
    out("layout", "upstream", f.read())


# --- unpack: tiny tar streams, several aiming out of the destination ---
# The fuzz target unpacks into /tmp/forge-fuzz-unpack/parent/dest.
PARENT = "/tmp/forge-fuzz-unpack/parent"


def tar(name, entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as t:
        for e in entries:
            ti = tarfile.TarInfo(e[1])
            ti.mtime = 1700000000
            kind, data = e[0], None
            if kind == "f":
                data = e[2] if len(e) > 2 else b"x\n"
                ti.size, ti.mode = len(data), 0o644
            elif kind == "d":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "l":
                ti.type, ti.linkname = tarfile.SYMTYPE, e[2]
            elif kind == "h":
                ti.type, ti.linkname = tarfile.LNKTYPE, e[2]
            elif kind == "c":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "p":
                ti.type = tarfile.FIFOTYPE
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = b.getvalue()
    end = len(raw)  # drop the record padding, keep the two end blocks
    while end >= 512 and raw[end - 512:end] == bytes(512):
        end -= 512
    out("unpack", name, raw[:end] + bytes(1024))


tar("plain", [("d", "./usr/"), ("d", "./usr/bin/"), ("f", "./usr/bin/tool", b"#!/bin/sh\n"),
              ("l", "./usr/bin/alias", "tool"), ("h", "./usr/bin/hard", "usr/bin/tool")])
tar("dotdot-link", [("l", "./up", "../.."), ("f", "./up/escaped")])
tar("abs-link", [("l", "./abs", PARENT), ("f", "./abs/escaped"), ("d", "./abs/dir/")])
tar("chain", [("d", "./a/"), ("l", "./a/b", "../c"), ("l", "./c", "/.."), ("f", "./a/b/escaped"),
              ("l", "./loop", "loop"), ("f", "./loop/x")])
tar("dir-over-link", [("l", "./var/run", "/run"), ("d", "./var/run/"), ("f", "./var/run/pid"),
                      ("l", "./up", ".."), ("d", "./up/"), ("d", "./up/escaped/")])
tar("hardlinks", [("f", "./f"), ("h", "./h1", "../f"), ("h", "./h2", "/etc/passwd"),
                  ("l", "./s", PARENT + "/x"), ("h", "./h3", "s"), ("h", "./h4", "f")])
tar("specials", [("c", "./dev/null"), ("p", "./fifo"), ("f", "./" + "n" * 150 + "/" + "m" * 120)])
tar("replace", [("f", "./x"), ("l", "./x", ".."), ("f", "./x/escaped"), ("d", "./y/"), ("f", "./y")])

# --- bz2_streams: first byte even = a file as is, odd = pieces to compress ---
out("bz2_streams", "one-stream", b"\x00" + bz2.compress(b"hello, world\n" * 20, 9))
out("bz2_streams", "three-streams", b"\x02" + bz2.compress(b"a" * 1000, 1)
    + bz2.compress(b"", 5) + bz2.compress(bytes(range(256)), 9))
out("bz2_streams", "magic-in-data", b"\x04" + bz2.compress(b"BZh91AY&SY" * 30, 9)
    + bz2.compress(b"BZh9\x17rE8P\x90", 9))
out("bz2_streams", "trailing-garbage", b"\x00" + bz2.compress(b"data", 9) + b"BZh9garbage")
out("bz2_streams", "pieces", b"\x11" + b"first\xffBZh91AY&SY\xff\xff" + bytes(300))
