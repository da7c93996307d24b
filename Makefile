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
CRASH_ITERATIONS ?= 100
SOAK_ITERATIONS  ?= 1000
TMPDIR   ?= /tmp

# Debian packages the build and the tests need.
DEBIAN_PACKAGES = libssl-dev libcurl4-openssl-dev libfuse3-dev fuse3 pkg-config e2fsprogs util-linux nginx-light qemu-utils

.PHONY: all build release deps test unit-test crash-test soak demo bench install uninstall clean

all: build

build:
	$(SWIFT) build

release:
	$(SWIFT) build -c release --product archip

deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root (apt-get install $(DEBIAN_PACKAGES))"; exit 1; fi
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(DEBIAN_PACKAGES)

test: unit-test crash-test

unit-test:
	$(SWIFT) test

crash-test:
	$(SWIFT) build -c release --product archip-torture
	.build/release/archip-torture crash --store $(TMPDIR)/archip-crash-$$$$ --iterations $(CRASH_ITERATIONS)

soak:
	$(SWIFT) build -c release --product archip-torture
	.build/release/archip-torture crash --store $(TMPDIR)/archip-soak-$$$$ --iterations $(SOAK_ITERATIONS) --verbose

demo: release
	scripts/demo.sh

bench:
	$(SWIFT) build -c release --product archip
	$(SWIFT) build -c release --product archip-bench
	.build/release/archip-bench

install: release
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(SYSCONFDIR)/archip
	install -m 0755 .build/release/archip $(DESTDIR)$(BINDIR)/archip
	install -m 0644 docs/man/archip.8 $(DESTDIR)$(MANDIR)/man8/archip.8
	[ -e $(DESTDIR)$(SYSCONFDIR)/archip/archip.conf ] || install -m 0644 docs/archip.conf.sample $(DESTDIR)$(SYSCONFDIR)/archip/archip.conf
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/bin/archip|$(BINDIR)/archip|' packaging/systemd/archip-serve.service > $(DESTDIR)$(UNITDIR)/archip-serve.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/archip-serve.service

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/archip $(DESTDIR)$(MANDIR)/man8/archip.8 $(DESTDIR)$(UNITDIR)/archip-serve.service

clean:
	$(SWIFT) package clean
	rm -rf demo-store
