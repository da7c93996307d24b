#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that breaks connections on purpose.

It forwards to 127.0.0.1:TARGET_PORT (the fixture's nginx) and cuts every Nth
connection after K bytes have gone from the server to the client, mid-response,
the way a flaky load balancer or a dropped link does.  Clients must retry.

usage: cutting-proxy.py --target-port P [--listen-port 0] [--cut-every N]
                        [--cut-after K] [--mode reset|close]
                        [--port-file F] [--pid-file F] [--log F]

  --cut-every N   connections N, 2N, 3N, ... are cut (1 = all, 0 = none); default 2
  --cut-after K   bytes server->client before the cut; default 1048576
  --mode          reset: RST (SO_LINGER 0, like a crashed peer); close: FIN
  --port-file F   the listening port is written here (atomically) once accepting
  --pid-file F    our pid; nginx-fixture.sh stop DIR kills DIR/*.pid proxies
  --log F         one line per connection and per cut (default: stderr)

The port is also printed on stdout as "port=N".  SIGTERM/SIGINT stop it; every
connection dies with it (daemon threads), so nothing is left running.
Only loopback: the target host is fixed to 127.0.0.1.
"""
import argparse
import os
import select
import signal
import socket
import struct
import sys
import threading

LOOPBACK = "127.0.0.1"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target-port", type=int, required=True)
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--cut-every", type=int, default=2)
    p.add_argument("--cut-after", type=int, default=1 << 20)
    p.add_argument("--mode", choices=("reset", "close"), default="reset")
    p.add_argument("--port-file")
    p.add_argument("--pid-file")
    p.add_argument("--log")
    a = p.parse_args()
    if a.cut_every < 0 or a.cut_after < 0:
        p.error("--cut-every and --cut-after must be >= 0")
    return a


class Log:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.out = open(path, "a", buffering=1) if path else sys.stderr

    def __call__(self, msg):
        with self.lock:
            self.out.write(msg + "\n")
            self.out.flush()


def close_hard(sock, reset):
    try:
        if reset:
            # SO_LINGER {on, 0}: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def serve(client, number, args, log):
    """Relays one connection.  One thread and select(): no other thread is ever
    blocked on a socket we close, so a cut really reaches the client at once
    (on Linux, close() does not wake a recv() in another thread)."""
    cut = args.cut_every > 0 and number % args.cut_every == 0
    try:
        upstream = socket.create_connection((LOOPBACK, args.target_port), timeout=10)
    except OSError as e:
        log(f"conn {number}: upstream 127.0.0.1:{args.target_port}: {e}")
        close_hard(client, True)
        return
    log(f"conn {number}: open" + (f" (will cut after {args.cut_after} bytes)" if cut else ""))
    sent = 0  # server -> client
    open_ends = {client: upstream, upstream: client}
    try:
        while open_ends:
            readable, _, _ = select.select(list(open_ends), [], [])
            for src in readable:
                dst = open_ends.get(src)
                if dst is None:
                    continue
                want = 65536
                if src is upstream and cut:
                    want = min(want, args.cut_after - sent)
                    if want == 0:
                        log(f"conn {number}: cut after {sent} bytes ({args.mode})")
                        close_hard(client, args.mode == "reset")
                        close_hard(upstream, False)
                        return
                data = src.recv(want)
                if not data:
                    # Half-close: pass the FIN on, keep relaying the other way.
                    del open_ends[src]
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    continue
                dst.sendall(data)
                if src is upstream:
                    sent += len(data)
    except OSError as e:
        log(f"conn {number}: {e}")
    client.close()
    upstream.close()
    log(f"conn {number}: closed after {sent} bytes")


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    args = parse_args()
    log = Log(args.log)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, args.listen_port))
    listener.listen(128)
    port = listener.getsockname()[1]

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if args.pid_file:
            write_atomic(args.pid_file, f"{os.getpid()}\n")
        if args.port_file:
            write_atomic(args.port_file, f"{port}\n")
        print(f"port={port}", flush=True)
        log(f"listening on {LOOPBACK}:{port} -> {LOOPBACK}:{args.target_port}, "
            f"cut every {args.cut_every} after {args.cut_after} bytes ({args.mode})")
        number = 0
        while True:
            client, _ = listener.accept()
            number += 1
            threading.Thread(target=serve, args=(client, number, args, log), daemon=True).start()
    finally:
        listener.close()
        for path in (args.pid_file, args.port_file):
            if path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


if __name__ == "__main__":
    main()
