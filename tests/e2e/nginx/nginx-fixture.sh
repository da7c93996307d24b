#!/bin/bash
# A throw-away nginx on 127.0.0.1 serving DIR/www over HTTP and HTTPS, for the
# HTTP(S) sources of the filler.  Root only (the server runs as root so it can
# read test files wherever they are); nothing listens on anything but loopback.
#
# usage: nginx-fixture.sh start DIR    start (DIR is created), print DIR/ports.env
#        nginx-fixture.sh stop DIR     stop nginx and any cutting-proxy.py whose pid
#                                      file is in DIR; idempotent
#        nginx-fixture.sh status DIR   exit 0 if nginx of DIR runs
#
# Settings (environment): NGINX_FIXTURE_SLOW_RATE  limit_rate of /slow/ (default 1m)
#                         NGINX_FIXTURE_WORKERS    worker processes (default 2)
# See README.md for the layout of DIR.
set -euo pipefail
# Callers (test runners) may pass a minimal PATH; nginx lives in sbin.
PATH=$PATH:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin

die() { echo "nginx-fixture: $*" >&2; exit 1; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

# The nginx of DIR is the process in DIR/nginx.pid whose command line names
# DIR's config: a stale pid file must never make us signal someone else.
nginx_pid() {
  local pidfile=$1/nginx.pid pid
  [[ -s $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF -- "$1/nginx.conf" || return 1
  echo "$pid"
}

alive() { kill -0 "$1" 2>/dev/null; }

# Signal a process, wait up to ~5 s for it to go, then SIGKILL it.
terminate() {
  local pid=$1 sig=$2 i
  alive "$pid" || return 0
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do alive "$pid" || return 0; sleep 0.1; done
  echo "nginx-fixture: pid $pid ignored SIG$sig, killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 20; i++)); do alive "$pid" || return 0; sleep 0.1; done
  die "pid $pid survived SIGKILL"
}

free_port() {
  "$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

make_tls() {
  local tls=$1/tls
  [[ -s $tls/server.crt && -s $tls/ca.crt ]] && return 0
  mkdir -p "$tls"
  (
    cd "$tls"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -sha256 \
      -keyout ca.key -out ca.crt -subj "/CN=archip test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>openssl.log
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout server.key -out server.csr \
      -subj "/CN=127.0.0.1" 2>>openssl.log
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -sha256 \
      -extfile server.ext -out server.crt 2>>openssl.log
    chmod 644 ca.crt server.crt
  ) || { cat "$tls/openssl.log" >&2; die "openssl failed"; }
}

write_conf() {
  local dir=$1 http=$2 https=$3
  cat >"$dir/nginx.conf" <<CONF
# Written by nginx-fixture.sh; rewritten on every start.
user root root;
daemon on;
worker_processes ${NGINX_FIXTURE_WORKERS:-2};
pid $dir/nginx.pid;
error_log $dir/error.log notice;
events { worker_connections 1024; }
http {
    types { }
    default_type application/octet-stream;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 60s;
    keepalive_requests 100000;
    # \$connection/\$connection_requests show keep-alive reuse; \$http_range what was asked.
    log_format fixture '\$remote_addr conn=\$connection req=\$connection_requests "\$request" '
                       '\$status \$body_bytes_sent range="\$http_range" t=\$request_time';
    access_log $dir/access.log fixture;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate $dir/tls/server.crt;
    ssl_certificate_key $dir/tls/server.key;

    server {
        listen 127.0.0.1:$http;
        listen 127.0.0.1:$https ssl;
        root $dir/www;
        # The same files, throttled: stalled and slow transfers.
        location /slow/ {
            alias $dir/www/;
            limit_rate ${NGINX_FIXTURE_SLOW_RATE:-1m};
        }
        # /redirect/X answers 302 to /X: images often sit behind one.
        location /redirect/ {
            rewrite ^/redirect/(.*)\$ /\$1 redirect;
        }
        # Fixed statuses, for retry/no-retry decisions.
        location = /status/403 { return 403; }
        location = /status/429 { return 429; }
        location = /status/500 { return 500; }
        location = /status/503 { return 503; }
    }
}
CONF
}

start() {
  local dir=$1 http https try pid i
  [[ $EUID -eq 0 ]] || die "must run as root"
  command -v nginx >/dev/null || die "nginx not found (apt-get install nginx-light)"
  command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
  PYTHON=$(command -v python3) || die "python3 not found"
  if pid=$(nginx_pid "$dir"); then die "already running in $dir (pid $pid); stop it first"; fi
  mkdir -p "$dir/www" "$dir/tmp"
  make_tls "$dir"
  : >"$dir/error.log"
  # A free port can be taken between probing and binding: retry on EADDRINUSE.
  for try in 1 2 3 4 5; do
    http=$(free_port); https=$(free_port)
    [[ $http != "$https" ]] || continue
    write_conf "$dir" "$http" "$https"
    rm -f "$dir/nginx.pid"
    # -e: nginx opens its error log before reading the config; keep it out of /var/log.
    # No inherited stdout: a caller reading our output must not wait on the daemon.
    if nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >/dev/null 2>>"$dir/error.log"; then
      break
    fi
    grep -q "Address already in use" "$dir/error.log" || { tail -20 "$dir/error.log" >&2; die "nginx failed to start"; }
    http=""
  done
  [[ -n $http ]] || die "no free port pair after 5 tries"
  # The parent exits once the ports are bound; the daemon writes the pid file just after.
  for ((i = 0; i < 50; i++)); do nginx_pid "$dir" >/dev/null && break; sleep 0.1; done
  pid=$(nginx_pid "$dir") || { tail -20 "$dir/error.log" >&2; die "nginx did not write $dir/nginx.pid"; }
  cat >"$dir/ports.env.tmp" <<ENV
NGINX_HTTP_PORT=$http
NGINX_HTTPS_PORT=$https
NGINX_HTTP_URL=http://127.0.0.1:$http
NGINX_HTTPS_URL=https://127.0.0.1:$https
NGINX_CA=$dir/tls/ca.crt
NGINX_WWW=$dir/www
NGINX_ACCESS_LOG=$dir/access.log
NGINX_PID=$pid
ENV
  mv "$dir/ports.env.tmp" "$dir/ports.env"
  cat "$dir/ports.env"
}

stop() {
  local dir=$1 pid children c f p
  [[ -d $dir ]] || return 0
  if pid=$(nginx_pid "$dir"); then
    # Workers orphaned by a killed master keep serving: note them first.
    children=$(pgrep -P "$pid" || true)
    terminate "$pid" QUIT
    for c in $children; do
      if [[ -r /proc/$c/cmdline ]] && tr '\0' ' ' </proc/"$c"/cmdline | grep -q '^nginx: '; then
        terminate "$c" TERM
      fi
    done
  fi
  rm -f "$dir/nginx.pid"
  # cutting-proxy.py --pid-file DIR/<name>.pid, left by a test that died.
  for f in "$dir"/*.pid; do
    [[ -e $f ]] || continue
    p=$(<"$f")
    if [[ $p =~ ^[0-9]+$ && -r /proc/$p/cmdline ]] && tr '\0' ' ' </proc/"$p"/cmdline | grep -q 'cutting-proxy.py'; then
      terminate "$p" TERM
    fi
    rm -f "$f"
  done
  rm -f "$dir/ports.env"
}

[[ $# -eq 2 ]] || { usage >&2; exit 2; }
dir=$2
[[ $dir == /* ]] || dir=$PWD/$dir
dir=${dir%/}
case $1 in
  start) start "$dir" ;;
  stop) stop "$dir" ;;
  status) nginx_pid "$dir" >/dev/null ;;
  *) usage >&2; exit 2 ;;
esac
