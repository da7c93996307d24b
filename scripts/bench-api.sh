#!/bin/bash
# make bench (API rows): cyclades-api with a fake Ganeti that ends every job at
# once (--fake-ganeti), 1000 volumes (125 servers x 8) of one user.
#  1. wrk on GET /volume/v3/volumes/detail vs nginx serving the same JSON bytes
#     as a static file, same machine, same run: requests/s, p99, ratio; and
#     the server's CPU time per detail request (100 sequential requests).
#  2. POST /volumes + DELETE /volumes/{id} round trips (each waits for the
#     settle of its job before the next step), from one Python client: p50/p99,
#     against the same client fetching a volume's JSON (a POST's answer) from
#     nginx as a static file on one kept-alive connection.
# nginx's answer is checked first (200 and the very bytes cyclades-api sent),
# and each wrk row prints its non-2xx and socket errors.
# Usage: scripts/bench-api.sh BINDIR   (cyclades-api and snf-manage; release build)
set -euo pipefail
BIN=${1:-.build/release}
DUR=${BENCH_API_SECONDS:-10}
for b in cyclades-api snf-manage; do [[ -x $BIN/$b ]] || { echo "bench-api: no $BIN/$b"; exit 1; }; done
command -v wrk >/dev/null || { echo "SKIP bench-api: wrk is not installed (make deps)"; exit 0; }
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || { echo "SKIP bench-api: nginx is not installed (make deps)"; exit 0; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
W=$(mktemp -d /tmp/bench-api.XXXXXX); chmod 755 "$W"   # nginx's workers read www/ (not under the work folder: its modes)
APORT=$((20000 + RANDOM % 10000)); NPORT=$((APORT + 1))
cleanup() { [[ -n ${APID:-} ]] && kill $APID 2>/dev/null || true; [[ -f $W/nginx.pid ]] && kill "$(cat $W/nginx.pid)" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
snf() { "$BIN/snf-manage" "$@" --db "$W/c.db" >/dev/null; }
snf backend-add fake --rapi https://127.0.0.1:1 --user u --password p --insecure --node n --os noop
snf volume-type-create archipelago --disk-template ext_archipelago
snf flavor-create small --cpu 1 --ram 128 --disk 1 --volume-type archipelago
IMG=$("$BIN/snf-manage" image-register img --location snapshot:img --size 1G --db "$W/c.db")
TOKEN=$("$BIN/snf-manage" user-create bench --quota 10T --db "$W/c.db" | awk '/^token:/ {print $2}')
"$BIN/cyclades-api" --db "$W/c.db" --listen 127.0.0.1:$APORT --fake-ganeti --quiet --settle-interval 0.002 2>"$W/api.err" &
APID=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null http://127.0.0.1:$APORT/volume/ && break; sleep 0.1; done
python3 - "$APORT" "$TOKEN" "$IMG" <<'PY'
import http.client, json, sys, time
port, token, img = sys.argv[1], sys.argv[2], sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", int(port))
h = {"X-Auth-Token": token, "Content-Type": "application/json"}
bdm = [{"source_type": "image", "uuid": img, "volume_size": 1, "boot_index": 0}] + [{"source_type": "blank", "volume_size": 1}] * 7
for i in range(125):
    c.request("POST", "/compute/v2.1/servers", json.dumps({"server": {"name": "s%d" % i, "imageRef": "", "flavorRef": "1", "block_device_mapping_v2": bdm}}), h)
    r = c.getresponse(); r.read(); assert r.status == 202, r.status
# one more with room for the round trips
c.request("POST", "/compute/v2.1/servers", json.dumps({"server": {"name": "rt", "imageRef": img, "flavorRef": "1"}}), h)
r = c.getresponse(); r.read(); assert r.status == 202
time.sleep(0.5)
PY
curl -s -H "X-Auth-Token: $TOKEN" "http://127.0.0.1:$APORT/volume/v3/volumes/detail" > "$W/detail.json"
N=$(python3 -c "import json; print(len(json.load(open('$W/detail.json'))['volumes']))" )
mkdir -p "$W/www/volume/v3/volumes" "$W/ng"
cp "$W/detail.json" "$W/www/volume/v3/volumes/detail"
curl -s -H "X-Auth-Token: $TOKEN" "http://127.0.0.1:$APORT/volume/v3/volumes/1" > "$W/www/volume.json"
chmod -R a+rX "$W/www"
NGUSER=""; [[ $(id -u) == 0 ]] && NGUSER="user root;"   # workers read what root made, whatever the umask
cat > "$W/nginx.conf" <<NG
$NGUSER worker_processes 2; pid $W/nginx.pid; error_log $W/ng/error.log; daemon on;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $W/ng; proxy_temp_path $W/ng; fastcgi_temp_path $W/ng; uwsgi_temp_path $W/ng; scgi_temp_path $W/ng;
  server { listen 127.0.0.1:$NPORT; root $W/www; default_type application/json; } }
NG
"$NGINX" -c "$W/nginx.conf" -e "$W/ng/error.log" 2>/dev/null || "$NGINX" -c "$W/nginx.conf"
sleep 0.3
code=$(curl -s -o "$W/nginx-answer" -w '%{http_code}' "http://127.0.0.1:$NPORT/volume/v3/volumes/detail")
if [[ $code != 200 ]] || ! cmp -s "$W/nginx-answer" "$W/detail.json"; then
  echo "bench-api: nginx answered $code (not 200 with the API's bytes): no baseline"; cat "$W/ng/error.log" 2>/dev/null | tail -3; exit 1
fi
wrk_row() {  # NAME URL -> "req/s p99"
  wrk -t2 -c16 -d${DUR}s --latency -H "X-Auth-Token: $TOKEN" "$2" > "$W/wrk-$1.txt"
  local rps p99; rps=$(awk '/^Requests\/sec:/ {print $2}' "$W/wrk-$1.txt"); p99=$(awk '$1 == "99%" {print $2}' "$W/wrk-$1.txt")
  local errs; errs=$(awk '/Non-2xx/ {print $NF}' "$W/wrk-$1.txt")
  local sock; sock=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$W/wrk-$1.txt")
  echo "$rps $p99 $(( ${errs:-0} + ${sock:-0} ))"
}
read -r A_RPS A_P99 A_ERR < <(wrk_row api "http://127.0.0.1:$APORT/volume/v3/volumes/detail")
read -r N_RPS N_P99 N_ERR < <(wrk_row nginx "http://127.0.0.1:$NPORT/volume/v3/volumes/detail")
BYTES=$(stat -c %s "$W/detail.json")
printf 'api: GET /volume/v3/volumes/detail, %d volumes (%d bytes), wrk -t2 -c16 %ss\n' "$N" "$BYTES" "$DUR"
printf '  %-28s %10s req/s  p99 %8s  non-2xx or socket errors %s\n' "cyclades-api" "$A_RPS" "$A_P99" "$A_ERR" "nginx (same bytes, static)" "$N_RPS" "$N_P99" "$N_ERR"
python3 -c "print('  ratio cyclades-api / nginx (requests/s): %.3f' % ($A_RPS / $N_RPS))"
# The server's own CPU (user+sys from /proc, ticks of 1/CLK_TCK s) per detail request,
# 100 sequential requests on one connection: steadier than req/s on a shared machine.
t0=$(awk '{print $14 + $15}' /proc/$APID/stat)
python3 - "$APORT" "$TOKEN" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(100):
    c.request("GET", "/volume/v3/volumes/detail", headers={"X-Auth-Token": sys.argv[2]}); r = c.getresponse(); r.read(); assert r.status == 200
PY
t1=$(awk '{print $14 + $15}' /proc/$APID/stat)
awk -v d=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "  cyclades-api CPU per detail request (100 in a row, user+sys): %.1f ms\n", d * 1000 / hz / 100 }'
python3 - "$APORT" "$TOKEN" "${BENCH_API_ROUNDS:-300}" "$NPORT" <<'PY'
import http.client, json, sys, time
port, token, rounds, nport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = http.client.HTTPConnection("127.0.0.1", int(port))
h = {"X-Auth-Token": token, "Content-Type": "application/json"}
def req(m, p, b=None):
    c.request(m, p, b, h); r = c.getresponse(); d = r.read(); return r.status, d
st, d = req("GET", "/compute/v2.1/servers?name=rt"); sid = json.loads(d)["servers"][0]["id"]
def wait(vid, status):
    while True:
        st, d = req("GET", "/volume/v3/volumes/%s" % vid)
        if json.loads(d)["volume"]["status"] == status: return
        time.sleep(0.0005)
posts, dels, rts = [], [], []
for i in range(rounds):
    t0 = time.perf_counter()
    st, d = req("POST", "/volume/v3/volumes", json.dumps({"volume": {"size": 1, "server_id": sid}}))
    t1 = time.perf_counter(); assert st == 202, (st, d)
    vid = json.loads(d)["volume"]["id"]; wait(vid, "in-use")
    t2 = time.perf_counter()
    st, d = req("DELETE", "/volume/v3/volumes/%s" % vid)
    t3 = time.perf_counter(); assert st == 202, (st, d)
    wait(vid, "deleted")
    posts.append(t1 - t0); dels.append(t3 - t2); rts.append(time.perf_counter() - t0)
def pct(a, p): a = sorted(a); return a[min(len(a) - 1, int(len(a) * p / 100))] * 1000
print("api: POST /volumes + DELETE /volumes/{id}, %d round trips (fake Ganeti, each waits for its job to settle)" % rounds)
print("  POST   p50 %.2f ms  p99 %.2f ms" % (pct(posts, 50), pct(posts, 99)))
print("  DELETE p50 %.2f ms  p99 %.2f ms" % (pct(dels, 50), pct(dels, 99)))
print("  round trip (POST, settle, DELETE, settle) p50 %.2f ms  p99 %.2f ms, %.0f round trips/s" % (pct(rts, 50), pct(rts, 99), len(rts) / sum(rts)))
n = http.client.HTTPConnection("127.0.0.1", nport)
gets = []
for i in range(rounds * 2):
    t0 = time.perf_counter(); n.request("GET", "/volume.json"); r = n.getresponse(); r.read(); assert r.status == 200, r.status
    gets.append(time.perf_counter() - t0)
print("  nginx GET of one volume's JSON (static), same client: p50 %.2f ms  p99 %.2f ms" % (pct(gets, 50), pct(gets, 99)))
print("  ratio nginx GET / POST at p50: %.3f, / DELETE: %.3f" % (pct(gets, 50) / pct(posts, 50), pct(gets, 50) / pct(dels, 50)))
PY
