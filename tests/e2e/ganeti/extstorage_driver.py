#!/usr/bin/python3
"""Drive an ExtStorage provider through Ganeti's own ExtStorageDevice code,
without a cluster.

Run with Debian's /usr/bin/python3 (Ganeti 3.0 is installed for it; pyenv's
python3 lacks Ganeti's dependencies).  Needs the `ganeti` package and root
(providers usually need root).  The provider is looked up exactly as the node
daemon does: pathutils.ES_SEARCH_PATH (/srv/ganeti/extstorage,
/usr/local/lib/ganeti/extstorage, /usr/lib/ganeti/extstorage,
/usr/share/ganeti/extstorage), with --search-dir DIR prepended if given.

usage: extstorage_driver.py PROVIDER ACTION [options]

ACTION (each a method of ganeti.storage.extstorage.ExtStorageDevice, unless
marked otherwise; every construction of the device runs `attach` first,
exactly as in Ganeti):
  diagnose   ExtStorageFromDisk(): is the provider folder valid?  (no volume)
  create     ExtStorageDevice.Create(): create, then attach      (--size)
  attach     ExtStorageDevice(...): attach + Ganeti's block-device stat check
  grow       .Grow(amount=new-size - size, ...): attach, grow (--size --new-size)
  snapshot   .Snapshot(snap_name, snap_size): snapshot (default VOL.snap, --size)
  open       .Open(exclusive=...): open                 (--shared => False)
  close      .Close(): close
  shutdown   .Shutdown(): detach (what Ganeti calls on deactivate/shutdown)
  detach     same as shutdown
  remove     .Remove(): detach, remove
  setinfo    .SetInfo(text): setinfo (Ganeti sanitises the text first)
  verify     extstorage._ExtStorageAction("verify", ...): Ganeti 3.0 never
             calls it itself; this is how an operator-facing check would run

Prints one JSON object on stdout.  Exit 0 on success, 1 on a Ganeti error
(its text on stderr and in "error"), 2 on bad usage.
"""

import argparse
import json
import logging
import os
import stat
import sys
import uuid as uuidlib

GANETI_PYDIRS = [os.environ.get("GNT_GANETI_PYDIR", ""),
                 "/usr/share/ganeti/default", "/usr/share/ganeti/3.0"]
for _d in GANETI_PYDIRS:
  if _d and os.path.isfile(os.path.join(_d, "ganeti", "storage",
                                        "extstorage.py")):
    sys.path.insert(0, _d)
    break
else:
  sys.stderr.write("extstorage_driver: Ganeti's python code not found in %s"
                   " (apt-get install --no-install-recommends ganeti)\n"
                   % [d for d in GANETI_PYDIRS if d])
  sys.exit(2)

# pylint: disable=C0413
from ganeti import constants, errors, pathutils  # noqa: E402
from ganeti.storage import extstorage  # noqa: E402

ACTIONS = ["diagnose", "create", "attach", "grow", "snapshot", "open", "close",
           "shutdown", "detach", "remove", "setinfo", "verify"]
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
             "LANG": "C.UTF-8"}


class ErrorCollector(logging.Handler):
  """Keeps Ganeti's logged errors: Attach() only logs why it failed."""

  def __init__(self):
    logging.Handler.__init__(self, logging.ERROR)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def parse_args(argv):
  p = argparse.ArgumentParser(
    prog="extstorage_driver.py",
    description="Drive an ExtStorage provider through Ganeti 3.0's"
    " ExtStorageDevice, without a cluster.",
    epilog="ACTIONS: " + " ".join(ACTIONS) +
    ".  See the module docstring for what each one runs.")
  p.add_argument("provider", help="provider name (folder in the search path)")
  p.add_argument("action", choices=ACTIONS)
  p.add_argument("--vol", help="volume name = VOL_NAME (Ganeti: UUID.ext.diskN;"
                 " create makes one up if absent)")
  p.add_argument("--size", type=int, help="volume size in MiB (VOL_SIZE;"
                 " for create, grow, and snapshot's default size)")
  p.add_argument("--new-size", type=int, help="grow: new size in MiB"
                 " (VOL_NEW_SIZE)")
  p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                 help="ExtStorage parameter, arrives as EXTP_KEY (repeat)")
  p.add_argument("--name", help="disk name = VOL_CNAME (e.g. snf-vol-7)")
  p.add_argument("--uuid", help="disk UUID = VOL_UUID (create makes one up if"
                 " absent; pass the same one later, as Ganeti does)")
  p.add_argument("--access", default="kernelspace",
                 help="the 'access' disk param Ganeti adds (EXTP_ACCESS)")
  p.add_argument("--no-ganeti-params", action="store_true",
                 help="don't add provider/access to the params (Ganeti does)")
  p.add_argument("--metadata", default="originstname+instance1.example.com",
                 help="setinfo text (VOL_METADATA, after Ganeti's sanitising)")
  p.add_argument("--snap-name", help="snapshot: VOL_SNAPSHOT_NAME"
                 " (default VOL.snap, as gnt-backup export)")
  p.add_argument("--snap-size", type=int, help="snapshot: VOL_SNAPSHOT_SIZE"
                 " (default --size)")
  p.add_argument("--shared", action="store_true",
                 help="open with exclusive=False (live migration)")
  p.add_argument("--search-dir", action="append", default=[],
                 help="extra provider search directory, tried first")
  p.add_argument("--keep-env", action="store_true",
                 help="give the provider this process's environment (default:"
                 " only PATH/HOME/LANG like the lab's node daemon, + Ganeti's)")
  p.add_argument("--keep-umask", action="store_true",
                 help="don't set umask 077 (the node daemon's)")
  p.add_argument("-v", "--verbose", action="store_true",
                 help="Ganeti's debug log on stderr")
  args = p.parse_args(argv)
  params = {}
  if not args.no_ganeti_params:
    params[constants.IDISK_PROVIDER] = args.provider
    params[constants.IDISK_ACCESS] = args.access
  for kv in args.param:
    if "=" not in kv:
      p.error("--param wants KEY=VALUE, got %r" % kv)
    k, v = kv.split("=", 1)
    params[k] = v
  args.params = params
  needs = {"create": ["size"], "grow": ["size", "new_size"]}
  for opt in needs.get(args.action, []):
    if getattr(args, opt) is None:
      p.error("%s needs --%s" % (args.action, opt.replace("_", "-")))
  if args.action not in ("diagnose", "create") and not args.vol:
    p.error("%s needs --vol" % args.action)
  if args.action == "grow" and args.new_size <= args.size:
    p.error("--new-size must be larger than --size (Ganeti guarantees it)")
  return args


def device_info(dev):
  info = {"unique_id": list(dev.unique_id), "attached": dev.attached,
          "dev_path": dev.dev_path, "major": dev.major, "minor": dev.minor,
          "uris": [u for u in dev.uris if u], "size": dev.size}
  if dev.dev_path:
    try:
      st = os.stat(dev.dev_path)
      if stat.S_ISBLK(st.st_mode):
        with open(dev.dev_path, "rb") as f:
          info["device_bytes"] = f.seek(0, os.SEEK_END)
    except OSError as err:
      info["device_error"] = str(err)
  return info


def new_device(args):
  """What Ganeti's bdev.FindDevice/Assemble do for an ext disk."""
  # ExtStorageDevice(unique_id, children, size, params, dyn_params,
  #                  name=..., uuid=...)  -- the constructor runs attach.
  return extstorage.ExtStorageDevice((args.provider, args.vol), [], args.size,
                                     args.params, {},
                                     name=args.name, uuid=args.uuid)


def need_attached(dev, collector, what):
  if not dev.attached:
    raise errors.BlockDeviceError(
      "%s: attach of %s did not give a usable device: %s" %
      (what, dev.vol_name, "; ".join(collector.messages) or "no reason logged"))


def run(args, collector):
  out = {"provider": args.provider, "action": args.action}
  if args.action == "diagnose":
    ok, es = extstorage.ExtStorageFromDisk(args.provider)
    if not ok:
      raise errors.BlockDeviceError(es)
    out.update({"path": es.path,
                "scripts": {s: getattr(es, s + "_script")
                            for s in sorted(constants.ES_SCRIPTS)},
                "parameters": es.supported_parameters})
    return out

  if args.action == "verify":
    # No device object (its constructor would run attach first).
    extstorage._ExtStorageAction(constants.ES_ACTION_VERIFY,  # noqa
                                 (args.provider, args.vol), args.params,
                                 name=args.name, uuid=args.uuid)
    out.update({"vol": args.vol, "uuid": args.uuid, "params": args.params})
    return out

  if args.action == "create":
    if not args.vol:
      args.vol = "%s.ext.disk0" % uuidlib.uuid4()
    if not args.uuid:
      args.uuid = str(uuidlib.uuid4())
    # Create(unique_id, children, size, spindles, params, excl_stor,
    #        dyn_params, name=..., uuid=...): create script, then attach.
    dev = extstorage.ExtStorageDevice.Create(
      (args.provider, args.vol), [], args.size, None, args.params, False, {},
      name=args.name, uuid=args.uuid)
    need_attached(dev, collector, "create")
  else:
    dev = new_device(args)
    a = args.action
    if a == "attach":
      need_attached(dev, collector, "attach")
    elif a == "grow":
      dev.Grow(args.new_size - args.size, False, True, False)
      dev.size = args.new_size
      dev.Attach()
      need_attached(dev, collector, "grow")
      want = args.new_size * 1024 * 1024
      got = device_info(dev).get("device_bytes")
      if got is not None and got < want:
        raise errors.BlockDeviceError(
          "grow: %s still shows %d bytes, want %d (the attached device must"
          " see the new size)" % (dev.dev_path, got, want))
    elif a == "snapshot":
      out["snapshot"] = list(dev.Snapshot(snap_name=args.snap_name,
                                          snap_size=args.snap_size))
    elif a == "open":
      dev.Open(exclusive=not args.shared)
    elif a == "close":
      dev.Close()
    elif a in ("shutdown", "detach"):
      dev.Shutdown()
    elif a == "remove":
      dev.Remove()
    elif a == "setinfo":
      dev.SetInfo(args.metadata)
    if not dev.attached and a not in ("shutdown", "detach"):
      out["warning"] = ("attach gave no usable block device (%s); Ganeti"
                        " treats the volume as absent here (e.g. remove and"
                        " shutdown then skip the provider silently)" %
                        ("; ".join(collector.messages) or "no reason logged"))
  out["vol"] = args.vol
  out["uuid"] = args.uuid
  out["params"] = args.params
  out["device"] = device_info(dev)
  return out


def main(argv):
  args = parse_args(argv)
  root = logging.getLogger()
  root.setLevel(logging.DEBUG if args.verbose else logging.ERROR)
  if args.verbose:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("ganeti %(levelname)s: %(message)s"))
    root.addHandler(h)
  collector = ErrorCollector()
  root.addHandler(collector)
  if not args.keep_env:
    os.environ.clear()
    os.environ.update(CLEAN_ENV)
  if not args.keep_umask:
    os.umask(0o077)
  if args.search_dir:
    pathutils.ES_SEARCH_PATH = [os.path.abspath(d) for d in args.search_dir] + \
      list(pathutils.ES_SEARCH_PATH)
  # Ganeti logs each call (but attach) to a file here and fails without it.
  os.makedirs(pathutils.LOG_ES_DIR, mode=0o750, exist_ok=True)
  try:
    out = run(args, collector)
  except errors.GenericError as err:
    # base.ThrowError raises BlockDeviceError(msg); str() is Ganeti's text.
    msg = err.args[0] if len(err.args) == 1 else str(err)
    sys.stderr.write("%s\n" % msg)
    print(json.dumps({"provider": args.provider, "action": args.action,
                      "vol": args.vol, "ok": False,
                      "error_class": type(err).__name__, "error": msg,
                      "logged_errors": collector.messages}, indent=1))
    return 1
  out["ok"] = True
  print(json.dumps(out, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
