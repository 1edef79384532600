#!/bin/bash
set -e
M=/sys/fs/cgroup/memory
UID_=8833712d-6e69-4f5c-95f3-aebd020ce2e7
CID=4b3f1d9a7c2e8f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a
UID2=3e61aa2b-7c1d-4c7e-9d39-2c1f0a6b8e11
CID2=9c1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d
ROOT=$M/oomtrace-sample
cleanup() { for d in $(find $ROOT -depth -type d 2>/dev/null); do for p in $(cat $d/cgroup.procs 2>/dev/null); do kill -9 $p 2>/dev/null; done; rmdir $d 2>/dev/null || true; done; }
cleanup; sleep 0.2; cleanup
C1=$ROOT/kubepods/burstable/pod$UID_/$CID
C2=$ROOT/kubepods/besteffort/pod$UID2/$CID2
mkdir -p $C1 $C2
echo $((32<<20)) > $C1/memory.limit_in_bytes
START=$(python3 -c 'import os;fd=os.open("/dev/kmsg",os.O_RDONLY|os.O_NONBLOCK);os.lseek(fd,0,2)
import sys
try:
  while True: os.read(fd,8192)
except BlockingIOError: pass
print("ok")')
SEQ0=$(python3 - <<'PY'
import os
fd=os.open("/dev/kmsg",os.O_RDONLY|os.O_NONBLOCK)
last=0
try:
    while True:
        r=os.read(fd,8192); last=int(r.split(b',')[1])
except BlockingIOError: pass
print(last)
PY
)
${OOMTRACE:-/work/main/target/debug/oomtrace} --format json --record-dir ${OUT:-/tmp/rec}/ring > ${OUT:-/tmp/rec}/agent.json 2>${OUT:-/tmp/rec}/agent.err &
AG=$!
sleep 3
# 1: container limit kill (Burstable pod, adj 985)
sh -c "echo \$\$ > $C1/cgroup.procs; echo 985 > /proc/self/oom_score_adj; exec dd if=/dev/zero of=/dev/null bs=128M count=1 status=none" || true
sleep 1
# 2: allocatable kill: limit on kubepods, victim the BestEffort pod
echo $((48<<20)) > $ROOT/kubepods/memory.limit_in_bytes
sh -c "echo \$\$ > $C2/cgroup.procs; echo 1000 > /proc/self/oom_score_adj; exec dd if=/dev/zero of=/dev/null bs=128M count=1 status=none" || true
sleep 2
kill -TERM $AG; wait $AG || true
python3 - $SEQ0 <<'PY' > ${OUT:-/tmp/rec}/kmsg.txt
import os,sys
seq0=int(sys.argv[1])
fd=os.open("/dev/kmsg",os.O_RDONLY|os.O_NONBLOCK)
try:
    while True:
        r=os.read(fd,8192)
        if int(r.split(b',')[1])>seq0: sys.stdout.write(r.decode('utf-8','replace'))
except BlockingIOError: pass
PY
cleanup
echo done
