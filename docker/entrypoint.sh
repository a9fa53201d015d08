#!/bin/sh
# nfdseg image entrypoint: make the container work under any user, then run `nfdseg ARGS...`.
#
# The image runs as uid 10001 by default. A host folder mounted with `-v $PWD/runs:/work/runs` belongs to the
# host user, so run the container as that user: `docker run --user $(id -u):$(id -g) ...`. Such a uid has no
# home in the image: when $HOME is not writable, a temporary one is made (gradio, matplotlib and torch keep
# caches there). When the runs folder is not writable, this says so before the command starts, with the fix,
# instead of the command failing later on its first write.
set -eu

writable() {  # a real write, not `test -w`: right for root, read-only mounts and user namespaces alike
    [ -d "$1" ] || return 1
    probe="$1/.nfdseg-write-test.$$"
    if (: > "$probe") 2>/dev/null; then rm -f "$probe"; return 0; fi
    return 1
}

if ! writable "${HOME:-/nonexistent}"; then
    HOME="$(mktemp -d /tmp/nfdseg-home.XXXXXX)"
    export HOME
fi
export MPLCONFIGDIR="${MPLCONFIGDIR:-$HOME/.config/matplotlib}" XDG_CACHE_HOME="${XDG_CACHE_HOME:-$HOME/.cache}"

runs="${NFDSEG_RUNS_DIR:-/work/runs}"
if [ -e "$runs" ] && ! writable "$runs"; then
    owner="$(stat -c '%u:%g' "$runs" 2>/dev/null || echo '?')"
    echo "nfdseg: warning: $runs (owned by $owner) is not writable by uid $(id -u): commands that write there" \
         "will fail. Run the container as the folder's owner: docker run --user \$(id -u):\$(id -g) ..." \
         "(docs/deploying.md, Docker)" >&2
fi

exec "${NFDSEG_COMMAND:-nfdseg}" "$@"
