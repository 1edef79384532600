#!/bin/bash
# Records the signal_generate ring-buffer records of killer-shaped signals
# on this host (run as root, one at a time with the other privileged tests:
# flock /tmp/oomtrace-host-tests.lock record.sh). No OOM is caused: shells
# renamed after memory killers signal sleepers in a kubelet-shaped cgroup.
#   OOMTRACE=path/to/oomtrace OUT=dir record.sh
set -e
M=/sys/fs/cgroup/memory
[ -d $M ] || M=/sys/fs/cgroup
UID_=8833712d-6e69-4f5c-95f3-aebd020ce2e7
CID=4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a
ROOT=$M/oomtrace-sample-killers
C=$ROOT/kubepods/burstable/pod$UID_/$CID
OUT=${OUT:-/tmp/rec-killers}
cleanup() { for d in $(find $ROOT -depth -type d 2>/dev/null); do for p in $(cat $d/cgroup.procs 2>/dev/null); do kill -9 $p 2>/dev/null; done; rmdir $d 2>/dev/null || true; done; }
cleanup
rm -rf "$OUT"; mkdir -p "$OUT"
mkdir -p $C
sleeper() { sh -c "echo \$\$ > $C/cgroup.procs; echo $1 > /proc/self/oom_score_adj; exec $2" & }
${OOMTRACE:-target/debug/oomtrace} --format json --no-kmsg --record-dir $OUT/ring > $OUT/agent.json 2> $OUT/agent.err &
AG=$!
for _ in $(seq 50); do grep -q 'ready:' $OUT/agent.err 2>/dev/null && break; sleep 0.2; done
# 1: SIGTERM to a sleeper that exits on it.
sleeper 985 "sleep 600"; A=$!
# 2: SIGTERM to a sleeper that ignores it, then SIGKILL (earlyoom's escalation).
sleeper 985 "sh -c 'trap \"\" TERM; exec sleep 600'"; B=$!
# 3: one pass over a cgroup's three processes (systemd-oomd's cg_kill).
sleeper 500 "sleep 600"; D1=$!
sleeper 500 "sleep 600"; D2=$!
sleeper 500 "sleep 600"; D3=$!
sleep 1
sh -c "printf earlyoom > /proc/self/comm && kill -TERM $A"
sleep 0.5
sh -c "printf earlyoom > /proc/self/comm && kill -TERM $B && sleep 0.3 && kill -KILL $B"
sleep 0.5
sh -c "printf systemd-oomd > /proc/self/comm && kill -KILL $D1 $D2 $D3"
sleep 1
wait $A $B $D1 $D2 $D3 2>/dev/null || true
kill -TERM $AG; wait $AG || true
echo "pids: term-exits $A term-then-kill $B cgroup-pass $D1 $D2 $D3" | tee $OUT/pids.txt
cleanup
ls $OUT/ring
