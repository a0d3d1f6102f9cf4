#!/bin/sh
# journal-guard.sh CONFIG JOURNAL: run before the shard and its Litestream start (shards.yaml, init container
# journal-guard). It exits 0 when the shard may start: its journal is there, or neither the journal nor a replica of
# it exists (a new shard). It exits 1 when the journal is missing but its replica holds one: the volume was lost or
# replaced. Started on an empty volume, the shard would create a new, empty journal and serve under the old shard's
# id, and Litestream, finding the replica ahead of that journal, would upload it as the replica's newest state. So the
# pod waits here (the kubelet retries this container) until the journal is restored: ../README.md, "Losing a shard's
# volume". A replica that cannot be listed also stops the start: it cannot tell a new shard from a lost volume.
set -u
config=$1
journal=$2

if [ -e "$journal" ]; then
    exit 0
fi
# Every level: level 0 files expire within minutes, the snapshots (level 9) remain. A listing is JSON: [] for none.
# An unreachable store is retried for about two minutes; the timeout bounds it below the kubelet's back-off.
if ! listed=$(timeout 150 litestream ltx -config "$config" -level all -json "$journal"); then
    echo "journal-guard: $journal is missing and its replica cannot be listed (the error is above): not starting" \
        "until it can be, since a new shard and a lost volume look alike without it" >&2
    exit 1
fi
if [ "$listed" = "[]" ]; then
    echo "journal-guard: no journal and no replica of it: a new shard, starting"
    exit 0
fi
echo "journal-guard: $journal is missing, but its replica holds a journal. Restore it (deploy/k8s/README.md," \
    "\"Losing a shard's volume\": restore-job.yaml), or, if this shard is meant to start empty, delete or move" \
    "the replica's prefix first. Not starting." >&2
exit 1
