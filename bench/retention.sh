#!/usr/bin/env bash
# walprune --dry-run and pgpitr verify --quick over a synthetic archive of N segment objects
# (default 100,000: a year of one segment every 5 minutes is ~105,000) and a catalog of
# daily backups. Objects are 64-byte files with valid names; only names and sizes matter.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SEGMENTS:-100000}
cargo build --release -q -p walprune -p pgpitr
work=$(mktemp -d /tmp/pgpitr-bench-retention.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 - "$work" "$N" <<'PY'
import os, sys, json, hashlib
root, n = sys.argv[1], int(sys.argv[2])
seg = 16 << 20
for segno in range(1, n + 1):
    log, s = divmod(segno, 256)
    d = os.path.join(root, "archive", "wal", f"00000001{log:08X}")
    os.makedirs(d, exist_ok=True)
    name = f"00000001{log:08X}{s:08X}"
    sha = hashlib.sha256(name.encode()).hexdigest()
    with open(os.path.join(d, f"{name}-{sha}.zst"), "wb") as f:
        f.write(b"\x28\xb5\x2f\xfd" + b"\0" * 60)
with open(os.path.join(root, "archive", "archive.json"), "w") as f:
    json.dump({"format": 1, "system_identifier": 1, "pg_version": 15, "wal_segment_size": seg, "created": "2026-01-01T00:00:00Z"}, f)
# one backup a day (every 288 segments)
for day, start in enumerate(range(2, n, 288)):
    bid = f"2026{(day // 28) % 12 + 1:02d}{day % 28 + 1:02d}T000000Z-{day}"
    d = os.path.join(root, "backups", bid)
    os.makedirs(d)
    lsn = lambda x: f"{x >> 32:X}/{x & 0xffffffff:X}"
    info = {"format": 1, "id": bid, "instance": "bench", "label": "x",
            "start_lsn": lsn(start * seg + 40), "checkpoint_lsn": lsn(start * seg + 96), "stop_lsn": lsn(start * seg + 400),
            "timeline": 1, "start_time": f"2026-01-01T00:00:00Z", "stop_time": f"2026-{(day // 28) % 12 + 1:02d}-{day % 28 + 1:02d}T00:10:00Z",
            "system_identifier": "1", "pg_version_num": 150000, "wal_segment_size": seg, "next_xid": 0,
            "compression": "zstd", "encrypted": False, "files": [], "manifest_sha256": "", "duration_seconds": 1.0}
    with open(os.path.join(d, "backup.json"), "w") as f:
        json.dump(info, f)
PY
cat > "$work/cfg.toml" <<CFG
instance = "bench"
[archive]
dir = "$work/archive"
[backup]
dir = "$work/backups"
[retention]
keep_daily = 7
keep_weekly = 4
CFG
backups=$(ls "$work/backups" | wc -l)
t0=$(date +%s.%N); ./target/release/walprune --config "$work/cfg.toml" --dry-run --json > "$work/plan.json"; t1=$(date +%s.%N)
t2=$(date +%s.%N); ./target/release/pgpitr --config "$work/cfg.toml" verify --quick --json > "$work/verify.json" || true; t3=$(date +%s.%N)
deleted=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['delete_objects']))" "$work/plan.json")
checked=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['objects_checked'])" "$work/verify.json")
printf '%-52s %10s\n' "run ($N segment objects, $backups backups)" "seconds"
printf '%-52s %10.2f\n' "walprune --dry-run (would delete $deleted objects)" "$(echo "$t1 - $t0" | bc)"
printf '%-52s %10.2f\n' "pgpitr verify --quick ($checked objects)" "$(echo "$t3 - $t2" | bc)"
