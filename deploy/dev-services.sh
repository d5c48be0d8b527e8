#!/usr/bin/env bash
# Makes sure what orgprov's demo and tests need runs on this machine, and starts what does not:
#   - PostgreSQL on 127.0.0.1:5432, user `postgres` with trust auth over TCP (no password);
#   - NATS with JetStream on 127.0.0.1:4222;
#   - the `kill` and `psql` programs the tests and this script use.
# Where something is missing it is installed and started with the package manager (apt-get on
# Debian and Ubuntu: packages postgresql, nats-server, procps), else with `docker compose`
# (docker-compose.yml's nats and postgres services) when a Docker engine answers, else it says
# what to install. Idempotent, and quiet when everything already runs.
#
# Usage: deploy/dev-services.sh [--check]
#   --check   only report what is missing (exit 1 if anything is), change nothing.
# Environment (for other ports, and for testing this script):
#   ORGPROV_DEV_PG_HOST / ORGPROV_DEV_PG_PORT       default 127.0.0.1 / 5432
#   ORGPROV_DEV_PG_CLUSTER                          Debian cluster to start and allow, default main
#   ORGPROV_DEV_NATS_HOST / ORGPROV_DEV_NATS_PORT   default 127.0.0.1 / 4222
#   ORGPROV_DEV_NATS_STORE                          JetStream directory, default /var/lib/nats-server
#   ORGPROV_DEV_WAIT_SECS                           how long to wait for a started service, default 60
# Used by the README's two commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_HOST=${ORGPROV_DEV_PG_HOST:-127.0.0.1}
PG_PORT=${ORGPROV_DEV_PG_PORT:-5432}
PG_CLUSTER=${ORGPROV_DEV_PG_CLUSTER:-main}
NATS_HOST=${ORGPROV_DEV_NATS_HOST:-127.0.0.1}
NATS_PORT=${ORGPROV_DEV_NATS_PORT:-4222}
NATS_STORE=${ORGPROV_DEV_NATS_STORE:-/var/lib/nats-server}
WAIT_SECS=${ORGPROV_DEV_WAIT_SECS:-60}
CHECK_ONLY=false
case "${1:-}" in
    "") ;;
    --check) CHECK_ONLY=true ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

say() { printf 'dev-services: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
pg_up() { port_open "$PG_HOST" "$PG_PORT"; }
nats_up() { port_open "$NATS_HOST" "$NATS_PORT"; }
have() { command -v "$1" >/dev/null 2>&1; }
# Connects as the tests do: user postgres, no password (-w never prompts).
pg_trusts() {
    have psql && PGCONNECT_TIMEOUT=5 psql -w -h "$PG_HOST" -p "$PG_PORT" -U postgres -d postgres -Atqc 'select 1' \
        >/dev/null 2>&1
}
kill_tool() { type -P kill >/dev/null 2>&1; }

missing() {
    local m=()
    pg_up || m+=("PostgreSQL on $PG_HOST:$PG_PORT")
    if pg_up && ! have psql; then m+=("psql (to check PostgreSQL's auth)"); fi
    if pg_up && have psql && ! pg_trusts; then m+=("trust auth for user postgres on $PG_HOST:$PG_PORT"); fi
    nats_up || m+=("NATS with JetStream on $NATS_HOST:$NATS_PORT")
    kill_tool || m+=("the kill program (procps)")
    if [ ${#m[@]} -gt 0 ]; then printf '%s\n' "${m[@]}"; fi
}

todo=$(missing)
if [ -z "$todo" ]; then
    exit 0
fi
if $CHECK_ONLY; then
    say "missing:"
    while IFS= read -r line; do say "  - $line"; done <<<"$todo"
    exit 1
fi

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif have sudo; then sudo "$@"; else return 1; fi
}
can_root() { [ "$(id -u)" = 0 ] || have sudo; }
docker_engine() { have docker && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; }

# The newest PostgreSQL cluster of Debian's postgresql-common, e.g. "15".
pg_version() {
    find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n1
}

# Lets user postgres in over TCP from this machine without a password, as the tests expect:
# two lines at the top of the cluster's pg_hba.conf, then a reload.
pg_trust_locally() {
    local version hba
    version=$(pg_version)
    hba="/etc/postgresql/$version/$PG_CLUSTER/pg_hba.conf"
    [ -n "$version" ] && [ -f "$hba" ] || return 1
    if ! grep -q 'orgprov dev-services' "$hba"; then
        say "allowing user postgres over TCP from this machine without a password ($hba)"
        as_root sh -c "{ printf '%s\n' '# orgprov dev-services: the tests connect as postgres without a password' \
            'host all postgres 127.0.0.1/32 trust' 'host all postgres ::1/128 trust'; cat '$hba'; } > '$hba.new' \
            && chown --reference='$hba' '$hba.new' && chmod --reference='$hba' '$hba.new' && mv '$hba.new' '$hba'"
    fi
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" reload
}

with_apt() {
    local packages=()
    if ! pg_up && ! have pg_ctlcluster; then packages+=(postgresql); fi
    if ! have psql; then packages+=(postgresql-client); fi
    if ! nats_up && [ ! -x /usr/sbin/nats-server ]; then packages+=(nats-server); fi
    kill_tool || packages+=(procps)
    if [ ${#packages[@]} -gt 0 ]; then
        say "installing ${packages[*]} (apt-get)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
    fi
    if ! pg_up; then
        local version
        version=$(pg_version)
        [ -n "$version" ] || { say "PostgreSQL is installed but has no cluster in /etc/postgresql"; return 1; }
        say "starting PostgreSQL $version (cluster $version/$PG_CLUSTER)"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start || true
    fi
    if ! nats_up; then
        say "starting NATS with JetStream on $NATS_HOST:$NATS_PORT (store $NATS_STORE)"
        as_root mkdir -p "$NATS_STORE"
        as_root start-stop-daemon --start --oknodo --background --make-pidfile \
            --pidfile "/run/orgprov-nats-$NATS_PORT.pid" --exec /usr/sbin/nats-server -- \
            -a "$NATS_HOST" -p "$NATS_PORT" -js -sd "$NATS_STORE" -l "/var/log/nats-server-$NATS_PORT.log"
    fi
}

with_docker() {
    say "starting nats and postgres with docker compose"
    docker compose -f docker-compose.yml -f deploy/dev-services.compose.yml up -d nats postgres
}

wait_for() {
    local what=$1 check=$2
    for _ in $(seq 1 "$WAIT_SECS"); do
        if $check; then return 0; fi
        sleep 1
    done
    say "$what did not come up within $WAIT_SECS s"
    return 1
}

if have apt-get && can_root; then
    with_apt
elif docker_engine; then
    with_docker
else
    say "cannot install what is missing: no apt-get usable as root (or with sudo) and no Docker engine."
    say "Missing:"
    while IFS= read -r line; do say "  - $line"; done <<<"$todo"
    say "Install and start them yourself, then run this again:"
    say "  - PostgreSQL (any recent version) listening on $PG_HOST:$PG_PORT, with trust auth for user"
    say "    postgres over TCP (pg_hba.conf: host all postgres 127.0.0.1/32 trust), and its psql client;"
    say "  - NATS server 2.9 or newer with JetStream on $NATS_HOST:$NATS_PORT (nats-server -js -p $NATS_PORT);"
    say "  - procps (for kill)."
    say "Or install Docker, and this script runs docker compose up -d nats postgres."
    exit 1
fi

wait_for "PostgreSQL on $PG_HOST:$PG_PORT" pg_up
wait_for "NATS on $NATS_HOST:$NATS_PORT" nats_up
if ! pg_trusts; then
    # A fresh Debian cluster asks for a password over TCP; a compose database has trust.
    pg_trust_locally || true
    wait_for "trust auth for user postgres on $PG_HOST:$PG_PORT" pg_trusts || {
        say "PostgreSQL on $PG_HOST:$PG_PORT refuses user postgres without a password. Add"
        say "  host all postgres 127.0.0.1/32 trust"
        say "at the top of its pg_hba.conf and reload it (with docker compose: 'docker compose down -v', then run"
        say "this again, so the database is created with trust auth)."
        exit 1
    }
fi
kill_tool || { say "the kill program is still missing (install procps)"; exit 1; }
say "PostgreSQL on $PG_HOST:$PG_PORT and NATS on $NATS_HOST:$NATS_PORT are up"
