#!/usr/bin/env bash
# make install, as a packager runs it: DESTDIR and PREFIX honoured, every file
# where it belongs and nothing else, the units and shims naming the installed
# paths, the man pages clean, an operator's configuration never overwritten.
# Uses the debug binaries (CONFIG=debug: built by swift test); run from make unit-test.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d /tmp/archip-install.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
bad() { echo "FAIL install-layout: $*" >&2; fail=1; }

install_into() {  # DESTDIR PREFIX [TARGET]: make install the first time; then install-files (no rebuild)
    local target=${3:-install}
    make --no-print-directory "$target" CONFIG="${CONFIG:-debug}" DESTDIR="$1" PREFIX="$2" >"$tmp/make.log" 2>&1 \
        || { cat "$tmp/make.log" >&2; echo "FAIL install-layout: make $target DESTDIR=$1 PREFIX=$2" >&2; exit 1; }
}

actions="create attach detach remove grow setinfo verify snapshot open close"
expected() {  # PREFIX: every file make install lays out, sorted
    local p=$1
    {
        for b in archip archip-extstorage snf-manage cyclades-api; do echo "$p/bin/$b"; done
        for m in archip archip-extstorage snf-manage cyclades-api; do echo "$p/share/man/man8/$m.8"; done
        echo /etc/archip/archip.conf; echo /etc/archip/cyclades.conf
        echo "$p/lib/systemd/system/archip-serve.service"; echo "$p/lib/systemd/system/cyclades-api.service"
        echo "$p/lib/systemd/system/archip-scrub.service"; echo "$p/lib/systemd/system/archip-scrub.timer"
        echo "$p/lib/sysusers.d/cyclades.conf"
        echo "$p/share/ganeti/extstorage/archipelago/parameters.list"
        for a in $actions; do echo "$p/share/ganeti/extstorage/archipelago/$a"; done
    } | sort
}

target=install
for prefix in /usr /usr/local; do
    d=$tmp/root${prefix//\//_}
    install_into "$d" "$prefix" "$target"
    target=install-files
    got=$(cd "$d" && find . -type f -o -type l | sed 's|^\.||' | sort)
    if [ "$got" != "$(expected "$prefix")" ]; then
        bad "PREFIX=$prefix: files differ from the expected layout:"; diff <(expected "$prefix") <(echo "$got") >&2 || true
    fi
    for b in archip archip-extstorage snf-manage cyclades-api; do
        [ -x "$d$prefix/bin/$b" ] || bad "$prefix/bin/$b is not executable"
    done
    "$d$prefix/bin/cyclades-api" --help >/dev/null 2>&1 || bad "the installed cyclades-api --help fails"
    for a in $actions; do
        f=$d$prefix/share/ganeti/extstorage/archipelago/$a
        [ -x "$f" ] || bad "provider script $a is not executable"
        grep -q "^exec $prefix/bin/archip-extstorage --config /etc/archip/archip.conf $a " "$f" || bad "provider script $a: $(tail -1 "$f")"
    done
    for u in archip-serve:archip cyclades-api:cyclades-api; do
        unit=$d$prefix/lib/systemd/system/${u%%:*}.service
        grep -q "^ExecStart=$prefix/bin/${u#*:} " "$unit" || bad "${u%%:*}.service: $(grep ^ExecStart "$unit")"
        [ "$(stat -c %a "$unit")" = 644 ] || bad "${u%%:*}.service is mode $(stat -c %a "$unit")"
    done
    scrub=$d$prefix/lib/systemd/system/archip-scrub.service
    grep -q "^ExecStart=$prefix/bin/archip verify --all --scheduled --config /etc/archip/archip.conf$" "$scrub" || bad "archip-scrub.service: $(grep ^ExecStart "$scrub")"
    [ "$(stat -c %a "$d$prefix/lib/systemd/system/archip-scrub.timer")" = 644 ] || bad "archip-scrub.timer is not mode 644"
    grep -q '^User=cyclades$' "$d$prefix/lib/systemd/system/cyclades-api.service" || bad "cyclades-api.service does not run as cyclades"
    cmp -s docs/cyclades.conf.sample "$d/etc/archip/cyclades.conf" || bad "cyclades.conf is not the sample"
done

# Installing again keeps what the operator wrote in the configuration.
d=$tmp/root_usr
echo "# mine" >> "$d/etc/archip/archip.conf"; echo "# mine" >> "$d/etc/archip/cyclades.conf"
install_into "$d" /usr install-files
for c in archip cyclades; do
    tail -1 "$d/etc/archip/$c.conf" | grep -qx '# mine' || bad "a second make install overwrote /etc/archip/$c.conf"
done

# The man pages format without warnings.
if command -v groff >/dev/null; then
    for m in docs/man/*.8; do
        w=$(groff -man -ww -z "$m" 2>&1) || true
        [ -z "$w" ] || bad "$m: $w"
    done
else
    echo "SKIP install-layout: man page lint (groff is not installed)"
fi

[ $fail = 0 ] && echo "install-layout: ok (PREFIX=/usr and /usr/local, $(expected /usr | wc -l) files each)"
exit $fail
