# Sourced by the load scripts here: a temp dir, three NGINX `return 200`
# backends on free loopback ports ($b1 $b2 $b3), two more free ports for
# the proxy ($lp, $ap), a stickylb config for them in $tmp/stickylb.toml
# (more sections from `stickylb_config EXTRA`), and a trap that stops
# everything started (by PID, from $pids) and removes the temp dir.
command -v nginx > /dev/null || { echo "$0: needs nginx for the backends" >&2; exit 2; }
tmp="$(mktemp -d)"
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$tmp"
}
trap stop EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
b1=$(free_port); b2=$(free_port); b3=$(free_port); lp=$(free_port); ap=$(free_port)
cat > "$tmp/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp; proxy_temp_path $tmp; fastcgi_temp_path $tmp; uwsgi_temp_path $tmp; scgi_temp_path $tmp;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$b1; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$b2; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$b3; location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$tmp/nginx.conf" -p "$tmp" > /dev/null 2>&1 &
pids+=($!)

# Writes $tmp/stickylb.toml: listen on $lp, admin on $ap, key from
# X-Client-Id, the three backends; $1 adds sections.
stickylb_config() {
  cat > "$tmp/stickylb.toml" <<CONF
[listen]
address = "127.0.0.1:$lp"
[admin]
address = "127.0.0.1:$ap"
[routing]
key = ["header:x-client-id"]
${1:-}
[[backend]]
name = "backend-1"
address = "127.0.0.1:$b1"
[[backend]]
name = "backend-2"
address = "127.0.0.1:$b2"
[[backend]]
name = "backend-3"
address = "127.0.0.1:$b3"
CONF
}

# Waits up to $1 seconds (default 60) for stickylb's admin port to answer
# /healthz.
wait_for_admin() {
  local until=$((SECONDS + ${1:-60}))
  until curl -sf -o /dev/null "http://127.0.0.1:$ap/healthz"; do
    ((SECONDS < until)) || { echo "stickylb did not answer on 127.0.0.1:$ap" >&2; return 1; }
    sleep 0.1
  done
}
