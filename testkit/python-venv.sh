# Sourced by the installer scripts (`*/ci/*-venv.sh`), not run.
#
# make_venv VENV MIN_PYTHON NEEDED_BY: (re)creates the virtualenv VENV with the machine's python3,
# after checking that python3 exists, is at least MIN_PYTHON (e.g. 3.11; empty for any version)
# and has its venv module, and that the new virtualenv has pip. A missing prerequisite exits 3
# with the reason on stderr (the installers' "cannot run here" status, which nereid-testkit turns
# into a skip, or a failure where the suite is required); NEEDED_BY names what wants that version.
make_venv() {
    local venv="$1" min_python="$2" needed_by="$3"
    if ! command -v python3 >/dev/null 2>&1; then
        echo "python3 not found" >&2
        exit 3
    fi
    if [ -n "$min_python" ] && ! python3 -c "import sys; sys.exit(0 if sys.version_info >= tuple(map(int, '$min_python'.split('.'))) else 1)" >/dev/null 2>&1; then
        echo "$(python3 --version 2>&1) is older than $min_python, which $needed_by needs" >&2
        exit 3
    fi
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "python3 has no venv/ensurepip module (install python3-venv)" >&2
        exit 3
    fi
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || { echo "python3 -m venv failed" >&2; exit 3; }
    if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        echo "pip is not available in the virtualenv" >&2
        exit 3
    fi
}

# install_pinned VENV MIN_PYTHON NEEDED_BY PACKAGE [DEP...]: makes VENV hold PACKAGE and the DEPs,
# each pinned exactly and installed with --no-deps (no resolver runs, no pip cache), once: a
# marker named after the whole set skips the work next time (changing any pin reinstalls), and a
# lock on VENV.lock, held until the calling script exits, serialises concurrent test processes.
# Nothing goes to stdout; missing prerequisites exit 3 as in make_venv.
install_pinned() {
    local venv="$1" min_python="$2" needed_by="$3"
    shift 3
    local set_hash marker
    set_hash=$(printf '%s\n' "$@" | sha256sum | cut -c1-12)
    marker="$venv/.nereid-installed-$1-$set_hash"
    exec 9>"$venv.lock"
    flock 9
    if [ -f "$marker" ] && [ -x "$venv/bin/python" ]; then
        return 0
    fi
    make_venv "$venv" "$min_python" "$needed_by"
    echo "installing $1 and $(($# - 1)) pinned dependencies into $venv" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --no-cache-dir \
        --quiet --no-deps "$@" >&2
    touch "$marker"
}
