# archipelago: Archipelago-style volumes for Ganeti and Cyclades, in Swift.
#
#   make demo     a store in ./demo-store: image -> volume, snapshot, clone, verify
#   make test     unit, property and end-to-end tests, then the crash test
#   make bench    benchmarks, as ratios against baselines measured in the same run

SWIFT    ?= swift
PREFIX   ?= /usr
DESTDIR  ?=
BINDIR   ?= $(PREFIX)/bin
MANDIR   ?= $(PREFIX)/share/man
UNITDIR  ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
# The build configuration make install takes its binaries from (release; the
# install layout test uses debug, already built by swift test).
CONFIG   ?= release
# Where Ganeti looks for ExtStorage providers (its last search folder; packagers' choice).
ESDIR    ?= $(PREFIX)/share/ganeti/extstorage
# Kills per crash test in make test (60 and 20 keep make test under 40 minutes; make soak runs 1 000).
CRASH_ITERATIONS ?= 60
SOAK_ITERATIONS  ?= 1000
RADOS_CRASH_ITERATIONS ?= 20
TMPDIR   ?= /tmp
# schemathesis for api-schemathesis: make deps puts it in a venv here (pinned: its CLI changes between versions).
ST_VENV    ?= $(HOME)/.cache/archip/schemathesis-venv
ST_VERSION ?= schemathesis==4.32.5

# Debian packages the build and the tests need.
DEBIAN_PACKAGES = libssl-dev libcurl4-openssl-dev libfuse3-dev fuse3 pkg-config e2fsprogs util-linux nginx-light qemu-utils \
                  ganeti curl iproute2 libsqlite3-dev sqlite3

# The data path's bench (fio, with its nbd engine) and attach --device=nbd (nbd-client);
# liburing for the bench's FUSE-over-io_uring probe (scripts/fuse-probe.c);
# nbdkit as a reference NBD server in the bench (scripts/bench-nbd-reference.sh).
DEBIAN_PACKAGES += fio nbd-client liburing-dev nbdkit

# The rados backend: librados to build; a one-node Ceph cluster for make rados-test.
DEBIAN_PACKAGES += librados-dev ceph-mon ceph-osd ceph-common bc

# cyclades-api: the real OpenStack clients of its end-to-end test, wrk for its bench.
DEBIAN_PACKAGES += python3-cinderclient python3-novaclient python3-openstackclient wrk python3-venv

# The multi-node Ganeti lab (make cluster-test): sshd in each node's namespaces.
DEBIAN_PACKAGES += openssh-server

# What the build itself needs: without these, nothing compiles or links.
BUILD_PACKAGES = libssl-dev libcurl4-openssl-dev libfuse3-dev pkg-config libsqlite3-dev librados-dev

.PHONY: all build release deps deps-missing install-files test unit-test crash-test ganeti-test cluster-test cyclades-test api-test api-schemathesis rados-test soak demo bench provision-bench cluster-bench install uninstall clean

all: build

build:
	$(SWIFT) build

PRODUCTS = archip archip-extstorage snf-manage cyclades-api

release:
	for p in $(PRODUCTS); do $(SWIFT) build -c $(CONFIG) --product $$p || exit 1; done

# The first step of make demo and make test: install the Debian packages that
# are missing (as root: make deps), else name them. Without a package the build
# needs, stop here with the command to run; the others only skip tests.
deps-missing:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done | xargs); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then echo "make: installing missing Debian packages: $$missing"; $(MAKE) --no-print-directory deps || exit 1; exit 0; fi; \
	build=$$(for p in $$missing; do case " $(BUILD_PACKAGES) " in *" $$p "*) echo $$p;; esac; done | xargs); \
	if [ -n "$$build" ]; then echo "make: the build needs Debian packages that are missing: $$build; run 'sudo make deps'" >&2; exit 1; fi; \
	echo "make: missing Debian packages (the tests that need them will skip): $$missing; 'sudo make deps' installs them"

# Ganeti 3.1 (attach of ext disks: detachable volumes) is in Debian 12's
# backports: deps writes a sources entry of its own for that suite (rewritten
# only when it differs: idempotent) and installs ganeti from there; the other
# packages stay on the release. Elsewhere the release's ganeti is installed.
GANETI_PACKAGES = ganeti
BACKPORTS_SOURCES = /etc/apt/sources.list.d/archip-bookworm-backports.sources

deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root (apt-get install $(DEBIAN_PACKAGES))"; exit 1; fi
	@. /etc/os-release; if [ "$$ID" = debian ] && [ "$$VERSION_CODENAME" = bookworm ]; then \
	  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' > $(BACKPORTS_SOURCES).new; \
	  if cmp -s $(BACKPORTS_SOURCES).new $(BACKPORTS_SOURCES); then rm -f $(BACKPORTS_SOURCES).new; \
	  else mv $(BACKPORTS_SOURCES).new $(BACKPORTS_SOURCES); echo "make deps: wrote $(BACKPORTS_SOURCES)"; fi; fi
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(filter-out $(GANETI_PACKAGES),$(DEBIAN_PACKAGES))
	@. /etc/os-release; if [ -e $(BACKPORTS_SOURCES) ] && [ "$$VERSION_CODENAME" = bookworm ]; then t="-t bookworm-backports"; else t=""; fi; \
	  echo "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$t $(GANETI_PACKAGES)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$t $(GANETI_PACKAGES)
	@# schemathesis (PyPI) checks the API against its OpenAPI document, from a venv of its own
	@# (Debian's pip refuses system-wide installs, PEP 668); best effort: api-schemathesis skips without it.
	-@if command -v schemathesis >/dev/null || [ -x $(ST_VENV)/bin/schemathesis ]; then :; \
	  elif python3 -m venv $(ST_VENV) && $(ST_VENV)/bin/pip install --quiet $(ST_VERSION); then echo "make deps: $(ST_VERSION) in $(ST_VENV)"; \
	  else echo "make deps: schemathesis not installed; api-schemathesis will skip"; fi

test: deps-missing unit-test crash-test demo ganeti-test cyclades-test api-test api-schemathesis cluster-test rados-test

unit-test:
	@# CI shows only the end of the output: repeat every failed test's issues there.
	@log=$(TMPDIR)/archip-unit-test.$$$$.log; \
	  { $(SWIFT) test; echo $$? > $$log.rc; } 2>&1 | tee $$log; st=$$(cat $$log.rc); rm -f $$log.rc; \
	  if [ "$$st" = 0 ]; then rm -f $$log; else \
	  echo "--- unit-test failed (exit $$st); the failed tests' issues (whole log: $$log):"; \
	  grep -E '✘|recorded an issue|Expectation failed|error:|Fatal error|Crash' $$log | head -n 40; exit $$st; fi
	@# make install lays out every file under DESTDIR with PREFIX (debug binaries: already built).
	tests/install-layout.sh
	@# The bench's FUSE probe is not part of the package; compiling it here keeps it from rotting.
	$(CC) -O2 -Wall -Werror -o $(TMPDIR)/archip-fuse-probe scripts/fuse-probe.c -luring -lpthread && rm -f $(TMPDIR)/archip-fuse-probe

crash-test:
	$(SWIFT) build -c release --product archip-torture
	@# The store (about 1 GiB) is removed when the test passes, kept for a look when it fails.
	store=$(TMPDIR)/archip-crash-$$$$; .build/release/archip-torture crash --store $$store --iterations $(CRASH_ITERATIONS) \
	  && rm -rf $$store $$store.journal || { echo "crash test store kept in $$store"; exit 1; }

# The rados backend on a real one-node Ceph cluster (tests/e2e/ceph/ceph-up.sh: one mon,
# one memstore OSD, loopback; root): the store's and the filler's suites again with
# ARCHIP_TEST_RADOS set (their rados cases: each test in a namespace of its own,
# removed after), the rados and two-daemon suites, the crash test (its namespace must
# hold objects afterwards: it ran on rados), both stale-writer cases; then on a
# bluestore OSD (it keeps its data over kill -9) the OSD-kill test. The cluster is
# brought down afterwards, whatever the result. RADOS_SCRATCH: swift's --scratch-path.
RADOS_SCRATCH ?= .build
RADOS_SUITES = ArchipStoreTests|FillFromFiles|FillFromPithosAndStore|FillResume|HTTPResumeTests|RadosTwoNodes|SnapshotsOnEitherBackend|RadosFencedDaemon
# Suites that stop the cluster's OSD (SIGSTOP): each alone, after the others,
# on rados-test's own cluster (ARCHIP_TEST_RADOS_PAUSABLE=1 says it is ours).
RADOS_PAUSING_SUITES = RadosStoppedOSD RadosCommandsWithTheOSDStopped
rados-test:
	@if [ "$$(id -u)" != 0 ]; then echo "SKIP rados-test: not root"; \
	elif ! command -v ceph-mon >/dev/null || ! command -v ceph-osd >/dev/null; then echo "SKIP rados-test: ceph-mon/ceph-osd not installed (make deps)"; \
	else url=$$(tests/e2e/ceph/ceph-up.sh up) || exit 1; \
	  trap 'st=$$?; if [ $$st != 0 ]; then for l in $${CEPH_DIR:-/var/tmp/archip-ceph}/log/osd.0.log $${CEPH_DIR:-/var/tmp/archip-ceph}/log/mon.a.log; do echo "--- last lines of $$l"; tail -n 25 $$l 2>/dev/null; done; fi; tests/e2e/ceph/ceph-up.sh down' EXIT; set -e; \
	  ARCHIP_TEST_RADOS="$$url" $(SWIFT) test --scratch-path $(RADOS_SCRATCH) --filter '$(RADOS_SUITES)'; \
	  for s in $(RADOS_PAUSING_SUITES); do \
	    ARCHIP_TEST_RADOS="$$url" ARCHIP_TEST_RADOS_PAUSABLE=1 $(SWIFT) test --scratch-path $(RADOS_SCRATCH) --skip-build --filter "$$s"; done; \
	  $(SWIFT) build --scratch-path $(RADOS_SCRATCH) -c release --product archip-torture; \
	  $(RADOS_SCRATCH)/release/archip-torture crash --store "$$url&ns=crash-$$$$" --iterations $(RADOS_CRASH_ITERATIONS); \
	  n=$$(tests/e2e/ceph/ceph-up.sh purge crash-$$$$); echo "crash test: $$n objects in its rados namespace (removed)"; \
	  [ "$$n" -gt 0 ] || { echo "FAIL rados-test: the crash test left nothing in rados"; exit 1; }; \
	  $(SWIFT) build --scratch-path $(RADOS_SCRATCH) --product archip; $(SWIFT) build --scratch-path $(RADOS_SCRATCH) --product archip-torture; \
	  tests/e2e/ceph/stale-writer.sh $(RADOS_SCRATCH)/debug "$$url"; \
	  tests/e2e/ceph/ceph-up.sh down; url=$$(CEPH_STORE=bluestore tests/e2e/ceph/ceph-up.sh up); \
	  tests/e2e/ceph/osd-kill.sh $(RADOS_SCRATCH)/debug "$$url"; fi

# The provider in a real single-node Ganeti cluster (3.1 from make deps; network namespace; root).
ganeti-test:
	@if [ "$$(id -u)" != 0 ]; then echo "SKIP ganeti-test: not root"; \
	elif [ ! -x /usr/sbin/gnt-cluster ]; then echo "SKIP ganeti-test: ganeti is not installed (make deps)"; \
	elif ! ip netns add archip-probe-$$$$ 2>/dev/null; then echo "SKIP ganeti-test: cannot create network namespaces here"; \
	else ip netns delete archip-probe-$$$$; \
	  $(SWIFT) build --product archip && $(SWIFT) build --product archip-extstorage && \
	  GNT_ARCHIP_BIN=$(CURDIR)/.build/debug tests/e2e/ganeti/archipelago.sh; fi

# Two Ganeti nodes and a controller, each in its own namespaces, on one machine:
# live migration, failover and node death run by Ganeti (root; not in make test yet).
cluster-test:
	@if [ "$$(id -u)" != 0 ]; then echo "SKIP cluster-test: not root"; \
	elif [ ! -x /usr/sbin/gnt-cluster ]; then echo "SKIP cluster-test: ganeti is not installed (make deps)"; \
	elif [ ! -x /usr/sbin/sshd ]; then echo "SKIP cluster-test: openssh-server is not installed (make deps)"; \
	elif ! ip netns add archip-probe-$$$$ 2>/dev/null; then echo "SKIP cluster-test: cannot create network namespaces here"; \
	else ip netns delete archip-probe-$$$$; \
	  $(SWIFT) build --product archip && $(SWIFT) build --product archip-extstorage && \
	  $(SWIFT) build --product snf-manage && $(SWIFT) build --product cyclades-api && \
	  GC_ARCHIP_BIN=$(CURDIR)/.build/debug tests/e2e/cluster/cluster-test.sh; fi

# snf-manage against a real single-node Ganeti cluster with the provider (root).
cyclades-test:
	@if [ "$$(id -u)" != 0 ]; then echo "SKIP cyclades-test: not root"; \
	elif [ ! -x /usr/sbin/gnt-cluster ]; then echo "SKIP cyclades-test: ganeti is not installed (make deps)"; \
	elif ! ip netns add archip-probe-$$$$ 2>/dev/null; then echo "SKIP cyclades-test: cannot create network namespaces here"; \
	else ip netns delete archip-probe-$$$$; \
	  $(SWIFT) build --product archip && $(SWIFT) build --product archip-extstorage && $(SWIFT) build --product snf-manage && \
	  GNT_ARCHIP_BIN=$(CURDIR)/.build/debug tests/e2e/cyclades/cyclades.sh; fi

soak:
	$(SWIFT) build -c release --product archip-torture
	store=$(TMPDIR)/archip-soak-$$$$; .build/release/archip-torture crash --store $$store --iterations $(SOAK_ITERATIONS) --verbose \
	  && rm -rf $$store $$store.journal || { echo "soak test store kept in $$store"; exit 1; }

# The demo runs archip alone: only it is built (make release builds every program).
demo: deps-missing
	$(SWIFT) build -c release --product archip
	scripts/demo.sh

# cyclades-api driven by cinder, nova and openstack against a real single-node Ganeti cluster
# (root): api.sh, then attach.sh (detachable volumes; Ganeti 3.1).
api-test:
	@if [ "$$(id -u)" != 0 ]; then echo "SKIP api-test: not root"; \
	elif [ ! -x /usr/sbin/gnt-cluster ]; then echo "SKIP api-test: ganeti is not installed (make deps)"; \
	elif ! command -v cinder >/dev/null || ! command -v nova >/dev/null; then echo "SKIP api-test: cinder/nova not installed (make deps)"; \
	elif ! ip netns add archip-probe-$$$$ 2>/dev/null; then echo "SKIP api-test: cannot create network namespaces here"; \
	else ip netns delete archip-probe-$$$$; \
	  $(SWIFT) build --product archip && $(SWIFT) build --product archip-extstorage && $(SWIFT) build --product snf-manage && \
	  $(SWIFT) build --product cyclades-api && \
	  GNT_ARCHIP_BIN=$(CURDIR)/.build/debug tests/e2e/cyclades/api.sh && \
	  GNT_ARCHIP_BIN=$(CURDIR)/.build/debug tests/e2e/cyclades/attach.sh; fi

# schemathesis (PyPI: pip install schemathesis) against docs/openapi.json, on
# cyclades-api --fake-ganeti over loopback: no 5xx but the documented 501s, and
# answers that match their schemas (~15 s). Skips when schemathesis is absent.
api-schemathesis: export PATH := $(ST_VENV)/bin:$(PATH)
api-schemathesis:
	@if ! command -v schemathesis >/dev/null && ! command -v st >/dev/null; then \
	  echo "SKIP api-schemathesis: schemathesis is not installed (pip install schemathesis)"; \
	else $(SWIFT) build --product snf-manage && $(SWIFT) build --product cyclades-api && \
	  scripts/schemathesis-api.sh .build/debug; fi

bench:
	$(SWIFT) build -c release --product archip
	$(SWIFT) build -c release --product archip-extstorage
	$(SWIFT) build -c release --product archip-bench
	.build/release/archip-bench
	scripts/bench-datapath.sh .build/release/archip
	scripts/bench-fuse-ceiling.sh .build/release/archip
	scripts/bench-nbd-reference.sh .build/release/archip
	scripts/bench-checks.sh .build/release/archip
	scripts/bench-scrub.sh .build/release/archip
	scripts/bench-rados.sh .build/release/archip
	scripts/bench-startup.sh .build/release
	$(SWIFT) build -c release --product snf-manage
	$(SWIFT) build -c release --product cyclades-api
	scripts/bench-api.sh .build/release
	$(MAKE) provision-bench GNT_ARCHIP_BIN=$(CURDIR)/.build/release
	$(MAKE) cluster-bench GC_ARCHIP_BIN=$(CURDIR)/.build/release

# 50 instances from one snapshot through a real Ganeti (--submit all, then
# wait): every add succeeds, reads the snapshot, and the provider's share of
# each add is reported (make bench; root, the Ganeti lab).
# Migration handoff, failover and node-death times and the provider's share of
# each Ganeti step, on both backends: the multi-node lab's TIMES and PROVIDER lines.
cluster-bench:
	@if [ "$$(id -u)" != 0 ] || [ ! -x /usr/sbin/gnt-cluster ] || [ ! -x /usr/sbin/sshd ]; then echo "SKIP cluster-bench: needs root, ganeti and sshd (make deps)"; \
	else log=$(TMPDIR)/archip-cluster-bench.$$$$.log; \
	  GC_ARCHIP_BIN=$${GC_ARCHIP_BIN:-$(CURDIR)/.build/debug} tests/e2e/cluster/cluster-test.sh > $$log 2>&1; st=$$?; \
	  grep -E 'TIMES|PROVIDER|passed, .* failed$$' $$log | sed 's/^\[ *[0-9.]*s\] //'; \
	  [ $$st = 0 ] && rm -f $$log || { echo "cluster-bench: the lab failed; its output: $$log"; exit 1; }; fi

provision-bench:
	@if [ "$$(id -u)" != 0 ]; then echo "SKIP provision-bench: not root"; \
	elif [ ! -x /usr/sbin/gnt-cluster ]; then echo "SKIP provision-bench: ganeti is not installed (make deps)"; \
	else GNT_ARCHIP_BIN=$${GNT_ARCHIP_BIN:-$(CURDIR)/.build/debug} tests/e2e/ganeti/provision-scale.sh; fi

MANPAGES = archip.8 archip-extstorage.8 snf-manage.8 cyclades-api.8
UNITS    = archip-serve.service cyclades-api.service archip-scrub.service archip-scrub.timer

install: release install-files

# make install without the build (what release built is in .build/$(CONFIG)).
install-files:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSCONFDIR)/archip $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR)
	for p in $(PRODUCTS); do install -m 0755 .build/$(CONFIG)/$$p $(DESTDIR)$(BINDIR)/$$p || exit 1; done
	scripts/install-extstorage.sh $(DESTDIR)$(ESDIR)/archipelago $(BINDIR) $(SYSCONFDIR)/archip/archip.conf
	for m in $(MANPAGES); do install -m 0644 docs/man/$$m $(DESTDIR)$(MANDIR)/man8/$$m || exit 1; done
	@# Samples only where no configuration is yet: an operator's file is never overwritten.
	[ -e $(DESTDIR)$(SYSCONFDIR)/archip/archip.conf ] || install -m 0644 docs/archip.conf.sample $(DESTDIR)$(SYSCONFDIR)/archip/archip.conf
	[ -e $(DESTDIR)$(SYSCONFDIR)/archip/cyclades.conf ] || install -m 0644 docs/cyclades.conf.sample $(DESTDIR)$(SYSCONFDIR)/archip/cyclades.conf
	@# The units name their executables and configuration as installed.
	for u in $(UNITS); do sed -e 's|/usr/bin/|$(BINDIR)/|g' -e 's|/etc/archip/|$(SYSCONFDIR)/archip/|g' packaging/systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 0644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; done
	install -m 0644 packaging/sysusers.d/cyclades.conf $(DESTDIR)$(SYSUSERSDIR)/cyclades.conf

uninstall:
	rm -rf $(DESTDIR)$(ESDIR)/archipelago
	for p in $(PRODUCTS); do rm -f $(DESTDIR)$(BINDIR)/$$p; done
	for m in $(MANPAGES); do rm -f $(DESTDIR)$(MANDIR)/man8/$$m; done
	for u in $(UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$u; done
	rm -f $(DESTDIR)$(SYSUSERSDIR)/cyclades.conf

clean:
	$(SWIFT) package clean
	rm -rf demo-store
