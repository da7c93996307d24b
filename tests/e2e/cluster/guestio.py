#!/usr/bin/python3
"""The lab's stand-in for a guest's disk I/O (the fake hypervisor runs no VM).

guestio.py write NAME DEVFILE ACKLOG PIDFILE [--go FILE] [--start SEQ]
    Wait for FILE (the "VM runs here" signal) if given, then for DEVFILE (the
    file the provider's attach wrapper writes the device path into); then
    write 4 KiB records seq, seq+1, ... at OFFSET + seq * 4 KiB with O_DIRECT
    and O_DSYNC, appending "seq time" to ACKLOG once each write returned (the
    write is acknowledged). PIDFILE is written when writing starts and
    removed once the device is closed. SIGTERM (the hypervisor stopping the
    VM): finish the write in flight, close, exit 0. A
    write error: one line on stderr, exit 3. --start defaults to the last seq
    of the ACKLOGs named in $GUESTIO_AFTER (space-separated) plus one.
guestio.py check DEV ACKLOG...
    Read back every acknowledged record through DEV (O_DIRECT if a block
    device; a file holds the volume's bytes from 0) and compare.
    Prints "N records ok" or the first bad ones; exit 1 if any is wrong.
"""
import hashlib, mmap, os, re, signal, sys, time

BS = 4096
OFFSET = 16 << 20


def record(name, seq):
    head = ("gntc-guestio seq=%d writer=%s\n" % (seq, name)).encode()
    body = hashlib.sha256(b"%d" % seq).digest() * (BS // 32)
    return head + body[len(head):]


def last_seq(paths):
    last = -1
    for p in paths:
        try:
            for line in open(p):
                if line.strip():
                    last = max(last, int(line.split()[0]))
        except FileNotFoundError:
            pass
    return last


def write(args):
    name, devfile, acklog, pidfile = args[:4]
    go, start = None, None
    rest = args[4:]
    while rest:
        if rest[0] == "--go":
            go, rest = rest[1], rest[2:]
        elif rest[0] == "--start":
            start, rest = int(rest[1]), rest[2:]
        else:
            sys.exit("guestio: unknown argument %s" % rest[0])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while go and not os.path.exists(go):
        if stop:
            return 0
        time.sleep(0.002)
    if start is None:
        start = last_seq(os.environ.get("GUESTIO_AFTER", "").split()) + 1
    dev = ""
    while not stop:
        try:
            dev = open(devfile).read().strip()
        except FileNotFoundError:
            dev = ""
        if dev and os.path.exists(dev):
            break
        time.sleep(0.002)
    if stop:
        return 0
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT | os.O_DSYNC)
    buf = mmap.mmap(-1, BS)
    with open(pidfile + ".tmp", "w") as f:
        f.write("%d\n" % os.getpid())
    os.rename(pidfile + ".tmp", pidfile)
    log = open(acklog, "a", buffering=1)
    seq = start
    while not stop:
        buf.seek(0)
        buf.write(record(name, seq))
        try:
            os.pwrite(fd, buf, OFFSET + seq * BS)
        except OSError as e:
            print("guestio %s: write seq %d to %s failed: %s" % (name, seq, dev, e), file=sys.stderr)
            return 3
        log.write("%d %.6f\n" % (seq, time.time()))
        seq += 1
    t = time.time()
    os.close(fd)
    # Gone from the device: say so by removing PIDFILE (a zombie still
    # answers kill -0 until it is reaped, which PID 1 may do late).
    os.unlink(pidfile)
    print("guestio %s: stopped after seq %d; closing %s took %.3f s" % (name, seq - 1, dev, time.time() - t),
          file=sys.stderr)
    return 0


def check(args):
    dev, acklogs = args[0], args[1:]
    import stat
    direct = os.O_DIRECT if stat.S_ISBLK(os.stat(dev).st_mode) else 0
    fd = os.open(dev, os.O_RDONLY | direct)
    buf = mmap.mmap(-1, BS)
    n, bad = 0, []
    for p in acklogs:
        name = re.split(r"[.-]", os.path.basename(p))[0]   # NAME.ack, NAME-whatever.ack
        for line in open(p):
            if not line.strip():
                continue
            seq = int(line.split()[0])
            os.preadv(fd, [buf], OFFSET + seq * BS)
            if bytes(buf) != record(name, seq):
                got = bytes(buf[:40]).split(b"\n")[0]
                bad.append("seq %d of %s: got %r" % (seq, name, got))
            n += 1
    if bad:
        print("%d of %d records wrong; first: %s" % (len(bad), n, "; ".join(bad[:3])))
        return 1
    print("%d records ok" % n)
    return 0 if n else 1


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("write", "check"):
        sys.exit(__doc__)
    sys.exit(write(sys.argv[2:]) if sys.argv[1] == "write" else check(sys.argv[2:]))
