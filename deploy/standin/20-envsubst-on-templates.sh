#!/bin/sh
# As in the official image: render every $NGINX_ENVSUBST_TEMPLATE_DIR
# (/etc/nginx/templates) file ending in $NGINX_ENVSUBST_TEMPLATE_SUFFIX
# (.template) into $NGINX_ENVSUBST_OUTPUT_DIR (/etc/nginx/conf.d), keeping
# the subfolders, with envsubst replacing only the variables defined in the
# environment (nginx's own $variables stay as they are).  An optional
# $NGINX_ENVSUBST_FILTER restricts the names to those matching it.
set -e

dir=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
out=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
filter=${NGINX_ENVSUBST_FILTER:-}

[ -d "$dir" ] || exit 0
if [ ! -w "$out" ]; then
    echo "$0: $out is not writable, templates not rendered" >&2
    exit 0
fi

defined=$(printf '${%s} ' $(awk "END { for (n in ENVIRON)
          if (n ~ /${filter}/) print n }" < /dev/null))

find "$dir" -follow -type f -name "*$suffix" -print | while read -r t; do
    rel=${t#"$dir/"}
    o="$out/${rel%"$suffix"}"
    mkdir -p "$(dirname "$o")"
    [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] \
        || echo "$0: rendering $t to $o" >&2
    envsubst "$defined" < "$t" > "$o"
done
