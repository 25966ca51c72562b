# shellcheck shell=bash
# Shared by scripts/test.sh and scripts/run.sh (sourced, not run): progress lines, running as
# root, and installing the Debian packages of missing programs. Non-interactive: works with
# CI=true and no stdin.

# Prints a step heading.
step() { printf '\n==> %s\n' "$*"; }

# Runs a command as root: directly when we are root, else through sudo when it exists.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
    else
        echo "error: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# ensure_programs PROGRAM=PACKAGE[,PACKAGE…] …
#
# Installs with apt-get the Debian packages of every PROGRAM that is not on PATH (each
# package once), then checks that every PROGRAM is there; returns 1 if one is still missing.
# Example: ensure_programs prometheus=prometheus kubectl=kubernetes-client \
#              python3=python3,python3-venv
ensure_programs() {
    local spec program packages package
    local -a programs=() apt_packages=() wanted=()
    for spec in "$@"; do
        program="${spec%%=*}"
        packages="${spec#*=}"
        programs+=("$program")
        if ! command -v "$program" >/dev/null 2>&1; then
            IFS=',' read -r -a wanted <<<"$packages"
            for package in "${wanted[@]}"; do
                case " ${apt_packages[*]} " in
                    *" $package "*) ;;
                    *) apt_packages+=("$package") ;;
                esac
            done
        fi
    done
    if [ "${#apt_packages[@]}" -eq 0 ]; then
        step "Packages: $(printf '%s, ' "${programs[@]}" | sed 's/, $//') already installed"
        return 0
    fi
    step "Installing Debian packages: ${apt_packages[*]}"
    as_root apt-get update -q
    # The prometheus package may try to start its service; without an init system (or with a
    # policy-rc.d that forbids it) that is refused, which is fine: the tests and the demo start
    # their own.
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${apt_packages[@]}"; then
        echo "warning: apt-get install reported an error; checking the programs anyway" >&2
    fi
    for program in "${programs[@]}"; do
        if ! command -v "$program" >/dev/null 2>&1; then
            echo "error: $program is still missing after apt-get install" >&2
            return 1
        fi
    done
}

# The absolute path of cargo's target directory ($CARGO_TARGET_DIR, relative to ROOT when it
# is relative; else ROOT/target).
target_dir() {
    local root="$1" dir="${CARGO_TARGET_DIR:-$1/target}"
    case "$dir" in /*) ;; *) dir="$root/$dir" ;; esac
    printf '%s\n' "$dir"
}
