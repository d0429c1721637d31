# The jobs' textfile metrics, scraped by a real node_exporter (the host's, reading the
# container's textfile folder).
scenario_metrics() {
  local dir="$ROOT/var/lib/pgpitr-rig/metrics" port=$((19100 + RANDOM % 800)) body=""
  ls "$dir"/*.prom >/dev/null 2>&1 || fail "no .prom files in $dir"
  "$NODE_EXPORTER" --web.listen-address="127.0.0.1:$port" --collector.disable-defaults \
    --collector.textfile --collector.textfile.directory="$dir" >"$RUN/node_exporter.log" 2>&1 &
  local ne=$! n
  for ((n = 0; n < 50; n++)); do
    body="$( (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3) 2>/dev/null || true)"
    [ -n "$body" ] && break
    sleep 0.2
  done
  kill "$ne" 2>/dev/null || true
  assert_contains "$body" 'node_textfile_scrape_error 0' "node_exporter textfile collector"
  for i in main second; do
    assert_contains "$body" "instance=\"$i\"" "metrics of $i"
  done
  assert_contains "$body" "pgpitr_" "pgpitr metrics"
}
