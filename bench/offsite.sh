#!/usr/bin/env bash
# offsite-sync of an archive of N segment objects (default 2000) into a fresh local restic
# repository, then of 10 new ones: the incremental sync must cost time proportional to the
# new data, not to the archive. Objects are 1 MiB of random bytes (about what a zstd-
# compressed busy 16 MiB segment weighs), named as archive-wal names them.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${SEGMENTS:-2000}
NEW=${NEW_SEGMENTS:-10}
command -v restic >/dev/null || { echo "restic missing: apt-get install -y restic" >&2; exit 1; }
cargo build --release -q -p offsite-sync
work=$(mktemp -d /tmp/pgpitr-bench-offsite.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/archive/wal/0000000100000000" "$work/archive/wal/0000000100000001" "$work/backups"
echo "bench-password" > "$work/pw"; chmod 600 "$work/pw"
cat > "$work/cfg.toml" <<CFG
instance = "bench"
[archive]
dir = "$work/archive"
[backup]
dir = "$work/backups"
[offsite]
repository = "$work/repo"
password_file = "$work/pw"
init = true
CFG
make_objects() { # first count
  python3 - "$work/archive/wal" "$1" "$2" <<'PY'
import os, sys, hashlib
root, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for segno in range(first, first + count):
    log, seg = divmod(segno, 256)
    name = f"00000001{log:08X}{seg:08X}"
    data = os.urandom(1 << 20)
    sha = hashlib.sha256(data).hexdigest()
    d = os.path.join(root, f"00000001{log:08X}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"{name}-{sha}.zst"), "wb") as f:
        f.write(data)
PY
}
make_objects 1 "$N"
size=$(du -sh "$work/archive" | cut -f1)
t0=$(date +%s.%N)
./target/release/offsite-sync --config "$work/cfg.toml" --what wal --json > "$work/first.json"
t1=$(date +%s.%N)
make_objects $((N + 1)) "$NEW"
t2=$(date +%s.%N)
./target/release/offsite-sync --config "$work/cfg.toml" --what wal --json > "$work/second.json"
t3=$(date +%s.%N)
./target/release/offsite-sync --config "$work/cfg.toml" --what wal --json > "$work/third.json"
t4=$(date +%s.%N)
added() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['wal']['files_new'], d['bytes_added'])" "$1"; }
printf '%-34s %10s %10s %14s\n' "run" "seconds" "new files" "bytes added"
printf '%-34s %10.2f %10s %14s\n' "initial sync of $N objects ($size)" "$(echo "$t1 - $t0" | bc)" $(added "$work/first.json")
printf '%-34s %10.2f %10s %14s\n' "incremental: $NEW new objects" "$(echo "$t3 - $t2" | bc)" $(added "$work/second.json")
printf '%-34s %10.2f %10s %14s\n' "incremental: nothing new" "$(echo "$t4 - $t3" | bc)" $(added "$work/third.json")
