#!/usr/bin/env bash
# vipgate against HAProxy and a direct connection, side by side in one run,
# all on loopback. Prints a table with ratios, then where the CPU time of
# the rows with a speed goal went: how busy both cores were, the whole
# machine's CPU time per unit, the proxy's own and the rest (clients,
# members, the kernel outside the proxy), which bound what any proxy
# could reach on this machine (docs/performance.md, "Where each goal
# stands").
#
#   bash benches/compare.sh            # about 13 minutes on 2 cores
#   ROUNDS=1 SECONDS_PER_TEST=3 bash benches/compare.sh    # quick look
#   QUICK=1 bash benches/compare.sh    # quicker: also 2,000 agents, not 8,000
#   BEFORE=/tmp/vipgate-old bash benches/compare.sh       # and an older build
#   LOGS=off bash benches/compare.sh   # neither proxy logs connections
#   PIN=1 bash benches/compare.sh      # both pin one thread per core
#
# With BEFORE set to another vipgate binary, it runs beside the current
# one on the same listeners (other ports) with the same configuration, so
# a change is measured before and after in one run.
#
# Logging, like with like: by default (LOGS=on) both proxies log every
# connection and request as they would in production: vipgate at its
# default level (info: a line per connection, and per request on HTTP
# virtuals) to a file, HAProxy with `option tcplog` / `option httplog` to
# `log stdout` into a file. LOGS=off: vipgate at `warn` and HAProxy with
# no log.
#
# Measures: bulk throughput (iperf3), new connections per second and
# keep-alive requests per second with p50/p99 latency (wrk against nginx
# through the L4 path), TLS termination (handshakes per second with the
# CPU time each cost the proxy and wrk, and throughput of 1 MiB responses
# over kept-alive TLS connections; HAProxy terminating with
# `bind ... ssl`), and resident memory per idle proxied
# connection with IDLE_CONNECTIONS held, and HTTP mode with session
# persistence (requests/s and latency over kept-alive client connections
# carrying an inserted persistence cookie or a jvmRoute URL parameter, and
# with a new client connection per request; HAProxy in `mode http` with
# `cookie GWELB insert` and `use-server` on the URL parameter's suffix,
# reusing member connections as vipgate does), and HTTP/2 over TLS (h2load,
# 10 streams at once on each connection, with the persistence cookie;
# HAProxy with `alpn h2,http/1.1`). Each throughput figure is the
# median of ROUNDS runs, interleaving direct, HAProxy and vipgate so drift
# hits all alike.
#
# Needs: haproxy, iperf3, wrk, nginx, h2load (Debian packages; installed if missing
# and running as root). Uses 127.0.0.11 for the backends and 127.0.0.100 for
# the proxies' listeners.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_TEST=${SECONDS_PER_TEST:-5}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-8000}
# The worst minute: agents in the reconnect storm and held (8,000: with two
# descriptors per proxied connection, the most HAProxy's maxconn allows
# under this machine's 20,000 open files); QUICK=1 runs 2,000.
STORM_AGENTS=${STORM_AGENTS:-8000}
HELD_AGENTS=${HELD_AGENTS:-8000}
HELD_IDLE_SECONDS=${HELD_IDLE_SECONDS:-6}
HELD_TALK_SECONDS=${HELD_TALK_SECONDS:-5}
if [ "${QUICK:-0}" = 1 ]; then
  STORM_AGENTS=2000 HELD_AGENTS=2000 ROUNDS=1 SECONDS_PER_TEST=3
fi
THREADS=${THREADS:-2}
LOGS=${LOGS:-on}
BEFORE=${BEFORE:-}
WRK_CONNECTIONS=${WRK_CONNECTIONS:-50}

BACKEND=127.0.0.11
BACKEND2=127.0.0.12
VIP=127.0.0.100
IPERF_PORT=25201 HTTP_PORT=28080 IDLE_PORT=27000
HAPROXY_BASE=26000 VIPGATE_BASE=29000 BEFORE_BASE=29100

need() {
  local missing=()
  for tool in haproxy iperf3 wrk nginx curl h2load; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy iperf3 wrk nginx-light curl nghttp2-client >/dev/null
  else
    echo "missing: ${missing[*]} (install the Debian packages haproxy iperf3 wrk nginx-light nghttp2-client)" >&2
    exit 1
  fi
}
need
ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet --bin vipgate --example idle_connections --example agents
VIPGATE=target/release/vipgate
IDLE_TOOL=target/release/examples/idle_connections

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() { # host port
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1:$2" >&2
  exit 1
}

# --- backends ---------------------------------------------------------------
iperf3 -s -B "$BACKEND" -p "$IPERF_PORT" >/dev/null 2>&1 & pids+=($!)
mkdir -p "$work/nginx/html"
head -c 1048576 /dev/zero > "$work/nginx/html/big"
# A throw-away certificate for the TLS rows (demo key, made per run).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=vip.example -addext subjectAltName=DNS:vip.example -addext basicConstraints=critical,CA:FALSE \
  -keyout "$work/tls.key" -out "$work/tls.pem" 2>/dev/null
cat "$work/tls.pem" "$work/tls.key" > "$work/tls-haproxy.pem"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
user root;
pid $work/nginx/nginx.pid;
error_log stderr error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen $BACKEND:$HTTP_PORT backlog=4096 reuseport;
    listen $BACKEND2:$HTTP_PORT backlog=4096 reuseport;
    location / { return 200 "ok\n"; }
    location /big { root $work/nginx/html; }
  }
}
EOF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" & pids+=($!)
"$IDLE_TOOL" serve "$BACKEND:$IDLE_PORT" & pids+=($!)
wait_port "$BACKEND" "$IPERF_PORT"; wait_port "$BACKEND" "$HTTP_PORT"; wait_port "$BACKEND" "$IDLE_PORT"
wait_port "$BACKEND2" "$HTTP_PORT"
head -c 32 /dev/urandom > "$work/cookie-secret"

# --- proxies: the same three listeners on each ------------------------------
if [ "$LOGS" = on ]; then
  haproxy_global_log="log stdout format raw local0"
  haproxy_tcp_log="log global
  option tcplog"
  haproxy_http_log="option httplog"
  vipgate_level=info
else
  haproxy_global_log="" haproxy_tcp_log="" haproxy_http_log="" vipgate_level=warn
fi
# PIN=1: both pin one thread per core (vipgate settings.cpu_affinity =
# "auto", HAProxy cpu-map); by default neither does, as both ship (vipgate's
# default, "spread", moves a worker off a full CPU it shares with another,
# but never pins).
haproxy_cpu_map= vipgate_cpu_affinity=
if [ "${PIN:-0}" = 1 ]; then
  [ "$THREADS" = "$(nproc)" ] || { echo "PIN=1 needs THREADS = $(nproc), one thread per core" >&2; exit 1; }
  haproxy_cpu_map="cpu-map auto:1/1-$THREADS 0-$((THREADS - 1))"
  vipgate_cpu_affinity='cpu_affinity = "auto"'
fi
cat >"$work/haproxy.cfg" <<EOF
global
  nbthread $THREADS
  $haproxy_cpu_map
  maxconn 8300
  maxpipes 512
  $haproxy_global_log
defaults
  mode tcp
  $haproxy_tcp_log
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  option splice-request
  option splice-response
listen bulk
  bind $VIP:$((HAPROXY_BASE + 1))
  server s $BACKEND:$IPERF_PORT
listen http
  bind $VIP:$((HAPROXY_BASE + 2))
  server s $BACKEND:$HTTP_PORT
listen idle
  bind $VIP:$((HAPROXY_BASE + 3))
  server s $BACKEND:$IDLE_PORT
listen tls
  bind $VIP:$((HAPROXY_BASE + 4)) ssl crt $work/tls-haproxy.pem
  server s $BACKEND:$HTTP_PORT
listen tls-idle
  bind $VIP:$((HAPROXY_BASE + 5)) ssl crt $work/tls-haproxy.pem
  server s $BACKEND:$IDLE_PORT
listen http-cookie
  mode http
  $haproxy_http_log
  bind $VIP:$((HAPROXY_BASE + 6))
  option forwardfor
  http-reuse safe
  timeout http-request 10s
  timeout http-keep-alive 60s
  balance roundrobin
  cookie GWELB insert indirect nocache httponly maxlife 8h
  server GWE_Node1 $BACKEND:$HTTP_PORT cookie GWE_Node1
  server GWE_Node2 $BACKEND2:$HTTP_PORT cookie GWE_Node2
listen http-url
  mode http
  $haproxy_http_log
  bind $VIP:$((HAPROXY_BASE + 7))
  option forwardfor
  http-reuse safe
  timeout http-request 10s
  timeout http-keep-alive 60s
  balance roundrobin
  use-server GWE_Node1 if { urlp(jsessionid) -m end .GWE_Node1 }
  use-server GWE_Node2 if { urlp(jsessionid) -m end .GWE_Node2 }
  server GWE_Node1 $BACKEND:$HTTP_PORT
  server GWE_Node2 $BACKEND2:$HTTP_PORT
listen http2-cookie
  mode http
  $haproxy_http_log
  bind $VIP:$((HAPROXY_BASE + 8)) ssl crt $work/tls-haproxy.pem alpn h2,http/1.1
  option forwardfor
  http-reuse safe
  timeout http-request 10s
  timeout http-keep-alive 60s
  balance roundrobin
  cookie GWELB insert indirect nocache httponly maxlife 8h
  server GWE_Node1 $BACKEND:$HTTP_PORT cookie GWE_Node1
  server GWE_Node2 $BACKEND2:$HTTP_PORT cookie GWE_Node2
EOF
vipgate_config() { # base
cat <<EOF
[settings]
worker_threads = $THREADS
$vipgate_cpu_affinity
drain_timeout = "1s"
[pools.bulk]
members = [ { address = "$BACKEND:$IPERF_PORT" } ]
[pools.http]
members = [ { address = "$BACKEND:$HTTP_PORT" } ]
[pools.idle]
members = [ { address = "$BACKEND:$IDLE_PORT" } ]
[virtuals.bulk]
listen = "$VIP:$(($1 + 1))"
pool = "bulk"
[virtuals.http]
listen = "$VIP:$(($1 + 2))"
pool = "http"
[virtuals.idle]
listen = "$VIP:$(($1 + 3))"
pool = "idle"
[virtuals.tls]
listen = "$VIP:$(($1 + 4))"
pool = "http"
tls = { mode = "terminate", certs = [ { cert = "$work/tls.pem", key = "$work/tls.key" } ] }
[virtuals.tls-idle]
listen = "$VIP:$(($1 + 5))"
pool = "idle"
tls = { mode = "terminate", certs = [ { cert = "$work/tls.pem", key = "$work/tls.key" } ] }
[pools.web]
members = [ { address = "$BACKEND:$HTTP_PORT", route = "GWE_Node1" }, { address = "$BACKEND2:$HTTP_PORT", route = "GWE_Node2" } ]
[virtuals.http-cookie]
listen = "$VIP:$(($1 + 6))"
mode = "http"
pool = "web"
persistence = { cookie = "GWELB", max_age = "8h" }
[virtuals.http-url]
listen = "$VIP:$(($1 + 7))"
mode = "http"
pool = "web"
persistence = { url_param = "jsessionid" }
[virtuals.http2-cookie]
listen = "$VIP:$(($1 + 8))"
mode = "http"
pool = "web"
persistence = { cookie = "GWELB", max_age = "8h" }
tls = { mode = "terminate", certs = [ { cert = "$work/tls.pem", key = "$work/tls.key" } ] }
[persistence]
secret_file = "$work/cookie-secret"
EOF
}
vipgate_config $VIPGATE_BASE >"$work/vipgate.toml"
vipgate_config $BEFORE_BASE >"$work/before.toml"

haproxy_pid=
vipgate_pid=
before_pid=
start_proxies() {
  haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 & haproxy_pid=$!; pids+=($!)
  VIPGATE_LOG=$vipgate_level "$VIPGATE" run -c "$work/vipgate.toml" >"$work/vipgate.log" 2>&1 & vipgate_pid=$!; pids+=($!)
  local bases="$HAPROXY_BASE $VIPGATE_BASE"
  if [ -n "$BEFORE" ]; then
    VIPGATE_LOG=$vipgate_level "$BEFORE" run -c "$work/before.toml" >"$work/before.log" 2>&1 & before_pid=$!; pids+=($!)
    bases+=" $BEFORE_BASE"
  fi
  for port in 1 2 3 4 5 6 7 8; do for base in $bases; do wait_port $VIP $((base + port)); done; done
  for pid in "$haproxy_pid" "$vipgate_pid" $before_pid; do
    kill -0 "$pid" 2>/dev/null || { echo "a proxy failed to start:" >&2; cat "$work"/*.log >&2; exit 1; }
  done
}
stop_proxies() {
  kill "$haproxy_pid" "$vipgate_pid" $before_pid 2>/dev/null || true
  # Wait until all are gone and their ports are free again.
  for pid in "$haproxy_pid" "$vipgate_pid" $before_pid; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
}
start_proxies

# target NAME -> "host port" for service (1 bulk, 2 http, 3 idle, 4 tls,
# 5 tls idle, 6 http with cookie persistence, 7 http with URL persistence,
# 8 HTTP/2 over TLS with cookie persistence)
endpoint() { # target service
  case $1 in
    direct) case $2 in 1) echo "$BACKEND $IPERF_PORT";; 2|6|7) echo "$BACKEND $HTTP_PORT";; 3) echo "$BACKEND $IDLE_PORT";; esac;;
    haproxy) echo "$VIP $((HAPROXY_BASE + $2))";;
    vipgate) echo "$VIP $((VIPGATE_BASE + $2))";;
    before) echo "$VIP $((BEFORE_BASE + $2))";;
  esac
}

# CPU time the process has used so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Where a measurement's CPU time went, for the second table: both cores
# (busy and all clock ticks of the machine, /proc/stat: clients, members,
# proxy and the kernel's work outside any process) and the proxy's own.
machine_ticks() { awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat; }
proxy_ticks() { # target
  local pid_var=${1}_pid
  if [ "$1" = direct ]; then echo 0; else cpu_ticks "${!pid_var}"; fi
}
account_start() { # target
  read -r machine_busy0 machine_total0 < <(machine_ticks)
  proxy0=$(proxy_ticks "$1")
}
account_end() { # target key units (requests, connections, Gbit)
  local busy total proxy1
  read -r busy total < <(machine_ticks)
  proxy1=$(proxy_ticks "$1")
  results[$1,${2}_busy]+="$(awk -v b0="$machine_busy0" -v t0="$machine_total0" -v b="$busy" -v t="$total" 'BEGIN { print 100 * (b - b0) / (t - t0) }') "
  results[$1,${2}_machine]+="$(awk -v k="$(getconf CLK_TCK)" -v n="$3" -v b0="$machine_busy0" -v b="$busy" 'BEGIN { if (n > 0) print (b - b0) / k * 1e6 / n }') "
  [ "$1" = direct ] && return
  results[$1,${2}_proxy]+="$(awk -v k="$(getconf CLK_TCK)" -v n="$3" -v p0="$proxy0" -v p="$proxy1" 'BEGIN { if (n > 0) print (p - p0) / k * 1e6 / n }') "
}
wrk_requests() { awk '/requests in/ { print $1 }' "$1"; }

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# wrk's latency lines read like "50%  123.00us"; print microseconds.
wrk_percentile() { # file percent
  awk -v p="$2%" '$1 == p { v = $2; u = 1
      if (v ~ /us$/) u = 1; else if (v ~ /ms$/) u = 1000; else if (v ~ /s$/) u = 1000000
      sub(/[a-z]+$/, "", v); print v * u }' "$1"
}

# wrk's "Transfer/sec: 1.23GB" in Gbit/s.
wrk_transfer_gbps() {
  awk '/^Transfer\/sec/ { v = $2; u = 1
      if (v ~ /GB$/) u = 8; else if (v ~ /MB$/) u = 8 / 1024; else if (v ~ /KB$/) u = 8 / 1048576
      sub(/[A-Z]+$/, "", v); printf "%.2f\n", v * u }' "$1"
}

# The persistence cookie a proxy sets on a first request ("none" direct).
sticky_cookie() { # target host port [scheme]
  [ "$1" = direct ] && { echo "none=1"; return; }
  curl -sk -D - -o /dev/null "${4:-http}://$2:$3/" | tr -d '\r' | awk -F'[ ;]' 'tolower($1) == "set-cookie:" { print $2; exit }'
}

targets=(direct haproxy vipgate)
[ -n "$BEFORE" ] && targets+=(before)
declare -A results
for round in $(seq "$ROUNDS"); do
  echo "round $round/$ROUNDS" >&2
  for target in "${targets[@]}"; do
    read -r host port <<<"$(endpoint "$target" 1)"
    account_start "$target"
    iperf3 -c "$host" -p "$port" -t "$SECONDS_PER_TEST" -J >"$work/iperf3"
    read -r gbps gbits < <(python3 -c 'import json,sys; end = json.load(sys.stdin)["end"]["sum_received"]; print(end["bits_per_second"] / 1e9, end["bytes"] * 8 / 1e9)' <"$work/iperf3")
    account_end "$target" bulk "$gbits"
    results[$target,bulk]+="$gbps "

    read -r host port <<<"$(endpoint "$target" 2)"
    account_start "$target"
    wrk -t1 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_TEST}s" -H "Connection: close" "http://$host:$port/" >"$work/wrk" 2>&1
    account_end "$target" cps "$(wrk_requests "$work/wrk")"
    results[$target,cps]+="$(awk '/^Requests\/sec/ { print $2 }' "$work/wrk") "

    account_start "$target"
    wrk -t1 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_TEST}s" --latency "http://$host:$port/" >"$work/wrk" 2>&1
    account_end "$target" rps "$(wrk_requests "$work/wrk")"
    results[$target,rps]+="$(awk '/^Requests\/sec/ { print $2 }' "$work/wrk") "
    results[$target,p50]+="$(wrk_percentile "$work/wrk" 50) "
    results[$target,p99]+="$(wrk_percentile "$work/wrk" 99) "

    # HTTP mode: an established session (its cookie, or its jvmRoute in
    # the URL), kept-alive; then a new client connection per request.
    # Direct: nginx itself, for reference.
    read -r host port <<<"$(endpoint "$target" 6)"
    cookie=$(sticky_cookie "$target" "$host" "$port")
    account_start "$target"
    wrk -t1 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_TEST}s" --latency -H "Cookie: $cookie" "http://$host:$port/" >"$work/wrk" 2>&1
    account_end "$target" cookie_rps "$(wrk_requests "$work/wrk")"
    results[$target,cookie_rps]+="$(awk '/^Requests\/sec/ { print $2 }' "$work/wrk") "
    results[$target,cookie_p50]+="$(wrk_percentile "$work/wrk" 50) "
    results[$target,cookie_p99]+="$(wrk_percentile "$work/wrk" 99) "
    wrk -t1 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_TEST}s" -H "Connection: close" -H "Cookie: $cookie" "http://$host:$port/" >"$work/wrk" 2>&1
    results[$target,cookie_cps]+="$(awk '/^Requests\/sec/ { print $2 }' "$work/wrk") "
    read -r host port <<<"$(endpoint "$target" 7)"
    wrk -t1 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_TEST}s" --latency "http://$host:$port/gwe/cometd?jsessionid=8F3A9C.GWE_Node2" >"$work/wrk" 2>&1
    results[$target,url_rps]+="$(awk '/^Requests\/sec/ { print $2 }' "$work/wrk") "
    results[$target,url_p99]+="$(wrk_percentile "$work/wrk" 99) "

    [ "$target" = direct ] && continue
    read -r host port <<<"$(endpoint "$target" 4)"
    # Handshakes are CPU work on both ends: what each handshake cost the
    # proxy and the client (wrk is one thread: at a whole core it, not the
    # proxy, sets the rate).
    pid_var=${target}_pid
    cpu_before=$(cpu_ticks "${!pid_var}")
    { TIMEFORMAT='%U %S'; time wrk -t1 -c"$WRK_CONNECTIONS" -d"${SECONDS_PER_TEST}s" -H "Connection: close" "https://$host:$port/" >"$work/wrk" 2>&1; } 2>"$work/wrk-time"
    cpu_after=$(cpu_ticks "${!pid_var}")
    handshakes=$(awk '/requests in/ { print $1 }' "$work/wrk")
    results[$target,tls_cps]+="$(awk '/^Requests\/sec/ { print $2 }' "$work/wrk") "
    results[$target,tls_proxy_cpu]+="$(awk -v t="$(getconf CLK_TCK)" -v n="$handshakes" -v a="$cpu_before" -v b="$cpu_after" 'BEGIN { if (n > 0) print (b - a) / t * 1e6 / n }') "
    results[$target,tls_client_cpu]+="$(awk -v n="$handshakes" '{ if (n > 0) print ($1 + $2) * 1e6 / n }' "$work/wrk-time") "
    wrk -t1 -c4 -d"${SECONDS_PER_TEST}s" "https://$host:$port/big" >"$work/wrk" 2>&1
    results[$target,tls_bulk]+="$(wrk_transfer_gbps "$work/wrk") "

    # HTTP/2: 50 connections of 10 streams each, kept alive, one session.
    read -r host port <<<"$(endpoint "$target" 8)"
    cookie=$(sticky_cookie "$target" "$host" "$port" https)
    h2load -t1 -c"$WRK_CONNECTIONS" -m10 -D"$SECONDS_PER_TEST" --warm-up-time=1 -H "cookie: $cookie" "https://$host:$port/" >"$work/h2load" 2>&1
    results[$target,h2_rps]+="$(awk '/^finished in/ { print $4 }' "$work/h2load") "
    results[$target,h2_mean]+="$(awk '/^time for request:/ { v = $6; u = 1
        if (v ~ /us$/) u = 1; else if (v ~ /ms$/) u = 1000; else if (v ~ /s$/) u = 1000000
        sub(/[a-z]+$/, "", v); print v * u }' "$work/h2load") "
  done
done

# Memory: fresh proxies, resident set before and with IDLE_CONNECTIONS held.
stop_proxies
start_proxies
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
# Bytes of resident memory each of IDLE_CONNECTIONS idle connections costs
# the proxy at PID, held open to SERVICE (3 plain, 5 TLS) by the holder.
idle_cost() { # pid service [CA.pem]
  local pid=$1 host port holder before after
  read -r host port <<<"$(endpoint "$target" "$2")"
  # Warm up with a handful, so one-time allocations are in the baseline.
  "$IDLE_TOOL" hold "$host:$port" 50 ${3:-} >"$work/hold" & holder=$!
  until grep -q ready "$work/hold" 2>/dev/null; do sleep 0.1; done
  kill "$holder"; wait "$holder" 2>/dev/null || true
  sleep 1
  before=$(rss_kib "$pid")
  "$IDLE_TOOL" hold "$host:$port" "$IDLE_CONNECTIONS" ${3:-} >"$work/hold" & holder=$!
  until grep -q ready "$work/hold" 2>/dev/null; do
    kill -0 "$holder" 2>/dev/null || { echo "holding $IDLE_CONNECTIONS connections through $target failed" >&2; exit 1; }
    sleep 0.2
  done
  sleep 1
  after=$(rss_kib "$pid")
  kill "$holder"; wait "$holder" 2>/dev/null || true
  sleep 1
  echo $(( (after - before) * 1024 / IDLE_CONNECTIONS ))
}
for target in "${targets[@]}"; do
  [ "$target" = direct ] && continue
  pid_var=${target}_pid
  results[$target,idle]="$(idle_cost "${!pid_var}" 3) "
  results[$target,tls_idle]="$(idle_cost "${!pid_var}" 5 "$work/tls.pem") "
done

# A contact center's worst minute: fresh proxies; a reconnect storm of
# STORM_AGENTS agents (plain, TLS resuming their sessions, TLS in full),
# then HELD_AGENTS agents held with 50 of them talking.
stop_proxies
start_proxies
AGENTS_TOOL=target/release/examples/agents
# Waits until FILE has a line starting with WORD (the tool at PID must
# live meanwhile).
wait_line() { # file word pid
  until grep -q "^$2" "$1" 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || { echo "the agents tool failed:" >&2; cat "$1" >&2; exit 1; }
    sleep 0.02
  done
}
field() { tr ' ' '\n' <"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'; }
storm() { # target service key [CA.pem mode]
  local host port tool ticks0 ticks1 pid_var=${1}_pid
  read -r host port <<<"$(endpoint "$1" "$2")"
  "$AGENTS_TOOL" storm "$host:$port" "$STORM_AGENTS" ${4:-} ${5:-} >"$work/storm" & tool=$!
  wait_line "$work/storm" closing "$tool"
  [ "$1" != direct ] && ticks0=$(cpu_ticks "${!pid_var}")
  wait "$tool" || { echo "the storm through $1 failed" >&2; exit 1; }
  results[$1,${3}_back]="$(field "$work/storm" back_ms) "
  results[$1,${3}_fail]="$(field "$work/storm" failures) "
  results[$1,${3}_p99]="$(field "$work/storm" p99_ms) "
  if [ "$1" != direct ]; then
    ticks1=$(cpu_ticks "${!pid_var}")
    results[$1,${3}_cpu]="$(awk -v t="$(getconf CLK_TCK)" -v n="$STORM_AGENTS" -v a="$ticks0" -v b="$ticks1" 'BEGIN { print (b - a) / t * 1e6 / n }') "
  fi
  sleep 2
}
kernel_kib() { # socket memory (TCP pages) and slab, KiB
  echo $(( $(awk '/^TCP:/ { for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1) }' /proc/net/sockstat) * 4 + $(awk '/^Slab:/ { print $2 }' /proc/meminfo) ))
}
held() { # target
  local host port tool rss0 rss1 kernel0 kernel1 ticks0 ticks1 pid_var=${1}_pid
  read -r host port <<<"$(endpoint "$1" 3)"
  kernel0=$(kernel_kib)
  [ "$1" != direct ] && rss0=$(rss_kib "${!pid_var}")
  "$AGENTS_TOOL" held "$host:$port" "$HELD_AGENTS" 50 "$HELD_IDLE_SECONDS" "$HELD_TALK_SECONDS" >"$work/held" & tool=$!
  wait_line "$work/held" ready "$tool"
  sleep 1
  kernel1=$(kernel_kib)
  results[$1,held_kernel]="$(( (kernel1 - kernel0) * 1024 / HELD_AGENTS )) "
  if [ "$1" != direct ]; then
    rss1=$(rss_kib "${!pid_var}")
    results[$1,held_rss]="$(( (rss1 - rss0) * 1024 / HELD_AGENTS )) "
    ticks0=$(cpu_ticks "${!pid_var}")
    sleep $((HELD_IDLE_SECONDS - 2))
    ticks1=$(cpu_ticks "${!pid_var}")
    results[$1,held_idle_cpu]="$(awk -v t="$(getconf CLK_TCK)" -v s=$((HELD_IDLE_SECONDS - 2)) -v a="$ticks0" -v b="$ticks1" 'BEGIN { print (b - a) / t * 1000 / s }') "
  fi
  wait_line "$work/held" "held " "$tool"
  results[$1,held_p50]="$(field "$work/held" p50_us) "
  results[$1,held_p99]="$(field "$work/held" p99_us) "
  kill "$tool"; wait "$tool" 2>/dev/null || true
  sleep 2
}
for target in "${targets[@]}"; do
  echo "worst minute: $target" >&2
  # Held first, while the proxy is fresh: its memory growth is then the
  # agents', not the storm's freed memory used again.
  held "$target"
  storm "$target" 3 storm
  if [ "$target" != direct ]; then
    storm "$target" 5 tls_storm "$work/tls.pem" resume
    storm "$target" 5 tls_full "$work/tls.pem" full
  fi
done

m() { echo "${results[$1,$2]:-}" | tr ' ' '\n' | { grep -v '^$' || true; } | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && a != "-" && b > 0) printf "%.2f", a / b; else print "-" }'; }
number() { # value decimals
  if [ -z "$1" ] || [ "$1" = - ]; then printf '%10s' -; else printf "%10.${2}f" "$1"; fi
}

echo
echo "vipgate $("$VIPGATE" --version | awk '{print $2}') vs HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), $THREADS threads each, $(nproc) cores, median of $ROUNDS x ${SECONDS_PER_TEST}s, logs $LOGS"
[ -n "$BEFORE" ] && echo "before: $BEFORE"
if [ -n "$haproxy_cpu_map" ]; then
  echo "threads pinned one per core (PIN=1): HAProxy $haproxy_cpu_map, vipgate $vipgate_cpu_affinity"
else
  echo "threads not pinned (as both ship: HAProxy's default, vipgate's cpu_affinity \"spread\"; PIN=1 pins both)"
fi
echo
header="| measure                              |     direct |    HAProxy |    vipgate |  vipgate/direct | vipgate/HAProxy |"
rule="|--------------------------------------|------------|------------|------------|-----------------|-----------------|"
if [ -n "$BEFORE" ]; then
  header+="     before |  before/HAProxy |"
  rule+="------------|-----------------|"
fi
echo "$header"; echo "$rule"
row() { # label key decimals [no-direct]
  local d h v b line
  d=$([ -z "${4:-}" ] && m direct "$2" || echo -); h=$(m haproxy "$2"); v=$(m vipgate "$2")
  line=$(printf '| %-36s | %s | %s | %s | %15s | %15s |' "$1" "$(number "$d" "$3")" "$(number "$h" "$3")" "$(number "$v" "$3")" "$(ratio "$v" "$d")" "$(ratio "$v" "$h")")
  if [ -n "$BEFORE" ]; then
    b=$(m before "$2")
    line+=$(printf ' %s | %15s |' "$(number "$b" "$3")" "$(ratio "$b" "$h")")
  fi
  echo "$line"
}
row "bulk throughput (Gbit/s, iperf3)" bulk 1
row "new connections/s (wrk, close)" cps 0
row "keep-alive requests/s (wrk)" rps 0
row "keep-alive p50 latency (us)" p50 0
row "keep-alive p99 latency (us)" p99 0
row "HTTP cookie-sticky requests/s" cookie_rps 0
row "HTTP cookie-sticky p50 latency (us)" cookie_p50 0
row "HTTP cookie-sticky p99 latency (us)" cookie_p99 0
row "HTTP cookie-sticky, new conn. each/s" cookie_cps 0
row "HTTP URL-param-sticky requests/s" url_rps 0
row "HTTP URL-param-sticky p99 (us)" url_p99 0
row "TLS handshakes/s (wrk, close)" tls_cps 0 -
row "TLS handshake: proxy CPU (us each)" tls_proxy_cpu 0 -
row "TLS handshake: wrk CPU (us each)" tls_client_cpu 0 -
row "TLS throughput (Gbit/s, 1 MiB GETs)" tls_bulk 2 -
row "HTTP/2 cookie-sticky requests/s" h2_rps 0 -
row "HTTP/2 cookie-sticky mean lat. (us)" h2_mean 0 -
row "memory per idle connection (bytes)" idle 0 -
row "memory per idle TLS connection (B)" tls_idle 0 -
row "storm: all agents back (ms)" storm_back 0
row "storm: failed attempts" storm_fail 0
row "storm: proxy CPU per reconnect (us)" storm_cpu 1 -
row "storm: p99 reconnect latency (ms)" storm_p99 2
row "TLS storm, resumed: back (ms)" tls_storm_back 0 -
row "TLS storm, resumed: failed" tls_storm_fail 0 -
row "TLS storm, resumed: CPU each (us)" tls_storm_cpu 1 -
row "TLS storm, resumed: p99 (ms)" tls_storm_p99 2 -
row "TLS storm, full: back (ms)" tls_full_back 0 -
row "TLS storm, full: CPU each (us)" tls_full_cpu 1 -
row "held: proxy memory per agent (B)" held_rss 0 -
row "held: kernel memory per agent (B)" held_kernel 0
row "held: proxy CPU while idle (ms/s)" held_idle_cpu 2 -
row "held: 50 talking, p50 (us)" held_p50 0
row "held: 50 talking, p99 (us)" held_p99 0
echo
echo "(idle memory: resident set growth with $IDLE_CONNECTIONS connections held open, divided by $IDLE_CONNECTIONS;"
echo " TLS handshake CPU: user + system time over the run, divided by the handshakes; wrk is one thread,"
echo " so handshakes/s x its CPU each near 1,000,000 us means the client, not the proxy, set the rate)"

# Where the CPU time of the goal rows went: no proxy path runs faster than
# the machine's two cores can pay for it, whatever the proxy's own share.
echo
echo "Where the CPU went (medians): both cores busy, CPU time of the whole machine per unit (clients, members,"
echo "proxy and the kernel's work outside any process; /proc/stat), the proxy's own (/proc/PID/stat), and the rest"
echo
echo "| measure                   | target   |     rate | machine busy | machine CPU/unit | proxy CPU/unit | rest/unit |"
echo "|---------------------------|----------|----------|--------------|------------------|----------------|-----------|"
cpu_row() { # label key rate-decimals unit scale (us divided by it)
  local target rate busy machine proxy
  for target in "${targets[@]}"; do
    machine=$(m "$target" "${2}_machine")
    [ -z "$machine" ] && continue
    rate=$(m "$target" "$2"); busy=$(m "$target" "${2}_busy"); proxy=
    [ -n "${results[$target,${2}_proxy]:-}" ] && proxy=$(m "$target" "${2}_proxy")
    awk -v label="$1" -v target="$target" -v rate="$rate" -v decimals="$3" -v unit="$4" -v scale="$5" \
      -v busy="$busy" -v machine="$machine" -v proxy="$proxy" 'BEGIN {
        m = machine / scale
        p = proxy == "" ? "-" : sprintf("%.1f %s", proxy / scale, unit)
        r = proxy == "" ? "-" : sprintf("%.1f %s", m - proxy / scale, unit)
        printf "| %-25s | %-8s | %8s | %11.1f%% | %13.1f %s | %14s | %9s |\n", label, target, sprintf("%." decimals "f", rate), busy, m, unit, p, r
      }'
  done
}
cpu_row "bulk (Gbit/s)" bulk 1 ms 1000
cpu_row "new connections/s" cps 0 us 1
cpu_row "keep-alive requests/s" rps 0 us 1
cpu_row "HTTP cookie-sticky req/s" cookie_rps 0 us 1
echo
echo "(per unit: per Gbit for bulk, per connection or request for the rest; rest = machine - proxy: what the"
echo " clients, members and the kernel outside the proxy's own time cost. At machine busy 100% a proxy path"
echo " cannot exceed (cores x 1 s) / machine CPU per unit; see docs/performance.md)"
