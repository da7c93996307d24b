#!/usr/bin/env python3
"""Independent reference for Pithos block hashes, hashmaps and top hashes.

Written from the Pithos algorithm (grnet/synnefo, snf-pithos-backend
hashfiler), not from archip's code, so tests can compare the two:

  block hash = SHA-256 of the block with trailing zero bytes stripped
  top hash   = Merkle root of the block hashes, padded with zero digests to a
               power of two; none -> SHA-256 of b""; one -> that hash

Usage: pithos_hashmap.py FILE [BLOCK_SIZE]  -> prints {"hashmap": ..., "top_hash": ...}
"""
import hashlib
import json
import sys


def block_hash(block: bytes) -> bytes:
    return hashlib.sha256(block.rstrip(b"\x00")).digest()


def top_hash(hashes):
    if not hashes:
        return hashlib.sha256(b"").digest()
    if len(hashes) == 1:
        return hashes[0]
    width = 1
    while width < len(hashes):
        width *= 2
    level = list(hashes) + [b"\x00" * 32] * (width - len(hashes))
    while len(level) > 1:
        level = [hashlib.sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


def main():
    path = sys.argv[1]
    block_size = int(sys.argv[2]) if len(sys.argv) > 2 else 4 * 1024 * 1024
    hashes = []
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(block_size)
            if not block:
                break
            size += len(block)
            hashes.append(block_hash(block))
    print(json.dumps({
        "hashmap": {"block_size": block_size, "block_hash": "sha256",
                    "hashes": [h.hex() for h in hashes], "bytes": size},
        "top_hash": top_hash(hashes).hex(),
    }))


if __name__ == "__main__":
    main()
