#!/bin/sh
# etcd driven by its native gRPC client (see etcd_native.py): installs Debian's etcd-server,
# golang-go and golang-etcd-server-dev if etcd, go or the clientv3 sources are missing, builds
# the Go client offline (GOPATH mode, Debian's sources only) and runs it with the arguments given.
set -e
if ! command -v etcd >/dev/null 2>&1 || ! command -v go >/dev/null 2>&1 \
        || ! [ -d /usr/share/gocode/src/go.etcd.io/etcd ]; then
    apt-get update -qq && apt-get install -y -qq etcd-server golang-go golang-etcd-server-dev
fi
exec python3 "$(dirname "$0")/etcd_native.py" "$@"
