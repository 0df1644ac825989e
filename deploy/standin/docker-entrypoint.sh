#!/bin/sh
# Entry point of the nginx stand-in image, with the official image's
# behaviour: when the command is nginx or nginx-debug, run every executable
# /docker-entrypoint.d/*.sh in order and source every *.envsh (so that they
# can export variables for the next ones), then exec the command.
# NGINX_ENTRYPOINT_QUIET_LOGS=1 silences it.
set -e

say() {
    [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$0: $*" >&2
}

if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
    if find /docker-entrypoint.d/ -mindepth 1 -maxdepth 1 -type f \
            -print -quit 2>/dev/null | grep -q .; then
        say "running the scripts in /docker-entrypoint.d/"
        for f in $(find /docker-entrypoint.d/ -mindepth 1 -maxdepth 1 \
                        -type f | sort -V); do
            case $f in
            *.envsh)
                if [ -x "$f" ]; then
                    say "sourcing $f"
                    . "$f"
                else
                    say "ignoring $f, not executable"
                fi
                ;;
            *.sh)
                if [ -x "$f" ]; then
                    say "launching $f"
                    "$f"
                else
                    say "ignoring $f, not executable"
                fi
                ;;
            *)
                say "ignoring $f"
                ;;
            esac
        done
        say "configuration complete; ready for start up"
    else
        say "no files in /docker-entrypoint.d/, skipping configuration"
    fi
fi

exec "$@"
