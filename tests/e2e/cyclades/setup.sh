# The set-up cyclades.sh, api.sh and attach.sh share (sourced after checks.sh): the
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

# The clients of api.sh and attach.sh, run in the lab's namespace (the API
# listens on its loopback). Use W DB BIN U TOKEN.
NS() { ip netns exec "$GNT_NETNS" env -i PATH=$GNT_CLEAN_PATH HOME=/root LANG=C.UTF-8 "$@"; }
snf() { NS "$BIN/snf-manage" "$@" --db "$DB"; }
cinder_() { NS cinder --os-auth-type admin_token --os-token "$TOKEN" --os-endpoint "$U/volume/v3" --os-project-id any --os-volume-api-version 3.0 "$@"; }
# nova as the user whose token is $1.
nova_as() { local t=$1; shift; NS OS_AUTH_TYPE=admin_token OS_TOKEN="$t" OS_ENDPOINT="$U/compute/v2.1" NOVA_PROJECT_ID=any NOVA_URL=http://unused nova "$@"; }
nova_() { nova_as "$TOKEN" "$@"; }
# openstack: novaclient-based commands read OS_ENDPOINT, the SDK and volume ones the overrides (OS_CLOUD=envvars).
ostack() { NS OS_AUTH_TYPE=admin_token OS_TOKEN="$TOKEN" OS_ENDPOINT="$U/compute/v2.1" NOVA_PROJECT_ID=any NOVA_URL=http://unused OS_CLOUD=envvars OS_VOLUME_ENDPOINT_OVERRIDE="$U/volume/v3" OS_IMAGE_ENDPOINT_OVERRIDE="$U/image" openstack "$@"; }
api() { NS curl -s -o "$W/body" -w '%{http_code}' "$@"; }   # prints the status; the body is in $W/body
