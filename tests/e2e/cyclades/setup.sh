# The set-up cyclades.sh and api.sh share (sourced after checks.sh): the
# provider installed with a config over a store holding one image (snapshot
# debian-img-v1), the lab cluster up with it, and no snf- instance left from
# an earlier run. Uses W STORE RUN CONF PDIR BIN REPO GL GNT_NODE_NAME GNT_NETNS.
cyclades_lab_up() {
    mkdir -p "$STORE"
    printf '[store]\npath = %s\n[node]\nname = %s\nruntime_dir = %s\n' "$STORE" "$GNT_NODE_NAME" "$RUN" > "$CONF"
    run "install the provider" "$REPO/scripts/install-extstorage.sh" "$PDIR" "$BIN" "$CONF" || return 1
    python3 -c "import sys,hashlib; sys.stdout.buffer.write(b''.join(hashlib.sha256(str(i).encode()).digest()*128 for i in range(6144)))" > "$W/image.raw"
    run "an image in the store (snapshot debian-img-v1)" bash -c "'$BIN/archip' --store '$STORE' import debian-img '$W/image.raw' && '$BIN/archip' --store '$STORE' snapshot debian-img debian-img-v1" || return 1
    run "cluster-up.sh archipelago=$PDIR" "$GL/cluster-up.sh" "archipelago=$PDIR" || return 1
    local i
    for i in $(ip netns exec "$GNT_NETNS" gnt-instance list --no-headers -o name 2>/dev/null | grep '^snf-'); do
        ip netns exec "$GNT_NETNS" gnt-instance remove -f "$i" >/dev/null 2>&1
    done
}
