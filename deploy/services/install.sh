#!/usr/bin/env bash
# Installs the real services that dte-stream's integration tests run against:
#   - Debian packages: mosquitto, influxdb (1.6), victoria-metrics, prometheus-alertmanager, prometheus,
#     systemd (systemd-analyze verify for the generated unit; not run as PID 1), chromium (headless, for the
#     dashboard test through Playwright with the system browser)
#   - Apache Kafka broker jars, resolved from Maven Central with Maven (deploy/services/kafka/pom.xml)
#     into ${DTE_CACHE_DIR:-<repo>/.cache}/kafka/libs
#
# Idempotent and non-interactive (works with CI=true and no stdin); a second run that finds
# everything in place does no network work and returns in about a second.
# The packages' daemons are NOT started (a temporary policy-rc.d forbids it during the install);
# tests start their own instances on free loopback ports through deploy/services/devservices.py.
#
# Usage: deploy/services/install.sh [--no-apt] [--no-kafka]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE_DIR="${DTE_CACHE_DIR:-$REPO/.cache}"
KAFKA_LIBS="$CACHE_DIR/kafka/libs"
KAFKA_POM="$HERE/kafka/pom.xml"

DEB_PACKAGES=(mosquitto influxdb victoria-metrics prometheus-alertmanager prometheus systemd chromium)
# binaries the tests need (checked after the install)
BINARIES=(mosquitto mosquitto_passwd influxd victoria-metrics prometheus-alertmanager prometheus systemd-analyze openssl chromium)
# systemd/init service names the packages ship
DAEMONS=(mosquitto influxdb victoria-metrics prometheus-alertmanager prometheus)
# default ports of those daemons: mosquitto, influxdb http + rpc, victoria-metrics, alertmanager + cluster, prometheus
DEFAULT_PORTS=(1883 8086 8088 8428 9093 9094 9090)

DO_APT=1
DO_KAFKA=1
for arg in "$@"; do
    case "$arg" in
        --no-apt) DO_APT=0 ;;
        --no-kafka) DO_KAFKA=0 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { printf '[install.sh] %s\n' "$*" >&2; }
die() { printf '[install.sh] ERROR: %s\n' "$*" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo is not installed"
    SUDO=(sudo -n DEBIAN_FRONTEND=noninteractive)
fi

pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

listening_on() {  # prints the ports of DEFAULT_PORTS that something listens on
    local port
    for port in "${DEFAULT_PORTS[@]}"; do
        if command -v ss >/dev/null 2>&1; then
            if ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then echo "$port"; fi
        elif (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
        fi
    done
}

# --- policy-rc.d: keep postinst scripts from starting the daemons ----------------------------
POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
POLICY_INSTALLED=0
restore_policy() {
    if [ "$POLICY_INSTALLED" = 1 ]; then
        if [ -n "$POLICY_BACKUP" ]; then
            "${SUDO[@]}" mv -f "$POLICY_BACKUP" "$POLICY"
        else
            "${SUDO[@]}" rm -f "$POLICY"
        fi
        POLICY_INSTALLED=0
    fi
}
block_daemon_starts() {
    if [ -e "$POLICY" ]; then
        POLICY_BACKUP="$("${SUDO[@]}" mktemp /usr/sbin/policy-rc.d.dte-backup.XXXXXX)"
        "${SUDO[@]}" cp -p "$POLICY" "$POLICY_BACKUP"
    fi
    POLICY_INSTALLED=1
    trap restore_policy EXIT
    printf '#!/bin/sh\n# temporary, written by dte-stream deploy/services/install.sh\nexit 101\n' \
        | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
}

# Under systemd, stop and disable the packaged daemons' units (e.g. from an install made before
# this script); the tests never use them. systemctl only touches each unit's own processes.
# Without systemd nothing is done: the policy-rc.d above kept the postinst scripts from starting
# anything, and the init scripts' stop/status match daemons by program name, which could hit
# instances that devservices.py started for someone else.
stop_packaged_daemons() {
    local d
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        for d in "${DAEMONS[@]}"; do
            if systemctl list-unit-files "$d.service" >/dev/null 2>&1; then
                "${SUDO[@]}" systemctl disable --now "$d.service" >/dev/null 2>&1 || true
            fi
        done
    fi
}

install_debs() {
    local missing=() p
    for p in "${DEB_PACKAGES[@]}"; do
        pkg_installed "$p" || missing+=("$p")
    done
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if [ "${#missing[@]}" -eq 0 ]; then
        log "Debian packages already installed: ${DEB_PACKAGES[*]}"
    else
        log "installing Debian packages: ${missing[*]}"
        block_daemon_starts
        local apt_opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef
                        -o Dpkg::Options::=--force-confold)
        if ! "${SUDO[@]}" apt-get install "${apt_opts[@]}" "${missing[@]}" </dev/null; then
            log "apt-get install failed; running apt-get update and retrying"
            "${SUDO[@]}" apt-get update -q </dev/null
            "${SUDO[@]}" apt-get install "${apt_opts[@]}" "${missing[@]}" </dev/null
        fi
        restore_policy
    fi
    stop_packaged_daemons
    local b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || die "binary $b not found after install"
    done
    local busy
    busy="$(listening_on | tr '\n' ' ')"
    if [ -n "${busy// /}" ]; then
        log "note: something listens on default service ports: $busy(the tests do not use them; they pick free ports)"
    fi
}

install_kafka() {
    command -v java >/dev/null 2>&1 || die "java not found (Kafka needs Java 17+)"
    command -v mvn >/dev/null 2>&1 || die "mvn not found (needed to resolve the Kafka jars)"
    local stamp="$KAFKA_LIBS/.pom.sha256" want
    want="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null; then
        log "Kafka jars already in $KAFKA_LIBS"
        return 0
    fi
    log "resolving Kafka broker jars with Maven into $KAFKA_LIBS"
    local tmp="$KAFKA_LIBS.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    local mvn_log="$CACHE_DIR/kafka/mvn.log"
    if ! mvn -q -B -Dstyle.color=never -f "$KAFKA_POM" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" </dev/null >"$mvn_log" 2>&1; then
        tail -n 40 "$mvn_log" >&2
        rm -rf "$tmp"
        die "mvn could not resolve the Kafka jars (output above, all of it in $mvn_log)"
    fi
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "no kafka_2.13 jar was resolved"; }
    echo "$want" > "$tmp/.pom.sha256"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    log "Kafka jars: $(find "$KAFKA_LIBS" -name 'kafka_2.13-*.jar' -printf '%f\n')"
}

if [ "$DO_APT" = 1 ]; then install_debs; fi
if [ "$DO_KAFKA" = 1 ]; then install_kafka; fi
log "done (cache: $CACHE_DIR)"
