#!/bin/sh
# etcd under the workload of `paxosd bench` (see etcd_bench.py): installs Debian's etcd-server
# and etcd-client if etcd is missing, then runs the benchmark with the arguments given.
set -e
if ! command -v etcd >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq etcd-server etcd-client
fi
exec python3 "$(dirname "$0")/etcd_bench.py" "$@"
