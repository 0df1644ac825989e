# Shared functions of the chaos scripts (sourced by bench/chaos/run).
#
# chaos_start renders front.conf and upstream.conf into $RUN and starts,
# on free loopback ports: one redis-server (the limiter in db 0, the cache
# in db 1), the Kafka mock (t/kmock.c, 3 brokers, topic "chaos"), the fast
# app (nginx), the slow app (slow-app.py) and the front nginx with the
# three modules.  Every process started is written to $RUN/pids and
# chaos_stop stops exactly those (the nginx masters gracefully first).

now_ms() { date +%s%3N; }

log() { printf '  %s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

free_port() {
    perl -MIO::Socket::INET -e \
        'print IO::Socket::INET->new(Listen => 1, ReuseAddr => 1,
             LocalAddr => "127.0.0.1:0")->sockport, "\n"'
}

wait_port() {
    local i
    for i in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "chaos: nothing listens on port $1" >&2
    return 1
}

track() { echo "$1 $2" >> "$RUN/pids"; }

rcli() { redis-cli -p "$REDIS_PORT" "$@"; }

start_redis() {
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' \
        --appendonly no --dir "$RUN/redis" --logfile "$RUN/redis/redis.log" \
        --daemonize no &
    REDIS_PID=$!
    track redis "$REDIS_PID"
    wait_port "$REDIS_PORT"
}

chaos_start() {
    mkdir -p "$RUN/tmp" "$RUN/redis"
    : > "$RUN/pids"
    PORT=$(free_port) APP_PORT=$(free_port) SLOW_PORT=$(free_port)
    REDIS_PORT=$(free_port)

    start_redis

    "$KMOCK" -n 3 -t "chaos:4" -f "$RUN/bootstrap" -c "$RUN/control" \
        > "$RUN/kmock.log" 2>&1 &
    track kmock $!
    local i
    for i in $(seq 200); do
        [ -s "$RUN/bootstrap" ] && [ -s "$RUN/control" ] && break
        sleep 0.05
    done
    BROKERS=$(head -1 "$RUN/bootstrap")
    KCTL=$(head -1 "$RUN/control")

    "$PYTHON" "$HERE/slow-app.py" "$SLOW_PORT" 2> "$RUN/slow-app.log" &
    track slow $!

    local pad
    pad=$(printf '%0900d' 0)
    sed -e "s|@RUN@|$RUN|g" -e "s|@APP@|$APP_PORT|g" -e "s|@PAD@|$pad|" \
        "$HERE/upstream.conf" > "$RUN/upstream.conf"
    "$NGINX" -p "$RUN" -c "$RUN/upstream.conf"
    track nginx-upstream "$(cat "$RUN/upstream.pid")"

    sed -e "s|@RUN@|$RUN|g" -e "s|@BUILD@|$BUILD|g" -e "s|@PORT@|$PORT|g" \
        -e "s|@APP@|$APP_PORT|g" -e "s|@SLOW@|$SLOW_PORT|g" \
        -e "s|@REDIS@|$REDIS_PORT|g" -e "s|@BROKERS@|$BROKERS|g" \
        -e "s|@TIMEOUT@|${CHAOS_REDIS_TIMEOUT_MS}ms|g" \
        -e "s|@CACHE_VALID@|$CHAOS_CACHE_VALID|g" \
        "$HERE/front.conf" > "$RUN/nginx.conf"
    # CHAOS_KAFKA_PROPS="name value, name value": extra producer properties
    if [ -n "${CHAOS_KAFKA_PROPS:-}" ]; then
        local props
        props=$(tr ',' '\n' <<< "$CHAOS_KAFKA_PROPS" | sed -n \
            's/^ *\([^ ]*\) *\([^ ]*\) *$/    aai_kafka_property \1 \2;/p')
        awk -v p="$props" '{print} /aai_kafka_brokers/ {print p}' \
            "$RUN/nginx.conf" > "$RUN/nginx.conf.tmp"
        mv "$RUN/nginx.conf.tmp" "$RUN/nginx.conf"
    fi
    "$NGINX" -p "$RUN" -c "$RUN/nginx.conf"
    track nginx "$(cat "$RUN/nginx.pid")"

    wait_port "$APP_PORT"
    wait_port "$SLOW_PORT"
    wait_port "$PORT"
    # warm up: every worker connected to Redis and Kafka
    for i in $(seq 20); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/api/item/warm$i"
    done
}

pid_alive() { kill -0 "$1" 2>/dev/null; }

stop_pid() {  # kind pid
    local kind=$1 pid=$2 i
    pid_alive "$pid" || return 0
    case $kind in
    nginx*) kill -QUIT "$pid" 2>/dev/null ;;
    *) kill -TERM "$pid" 2>/dev/null ;;
    esac
    for i in $(seq 100); do
        pid_alive "$pid" || return 0
        sleep 0.05
    done
    kill -TERM "$pid" 2>/dev/null
    sleep 0.5
    pid_alive "$pid" && kill -KILL "$pid" 2>/dev/null
    return 0
}

chaos_stop() {
    [ -n "${WRK_PID:-}" ] && pid_alive "$WRK_PID" && kill "$WRK_PID" 2>/dev/null
    [ -n "${PROBE_PID:-}" ] && pid_alive "$PROBE_PID" && kill "$PROBE_PID" 2>/dev/null
    [ -f "$RUN/pids" ] || return 0
    # nginx first (its workers flush to Kafka and close Redis), then the rest
    local kind pid
    while read -r kind pid; do
        case $kind in nginx*) stop_pid "$kind" "$pid" ;; esac
    done < "$RUN/pids"
    while read -r kind pid; do
        case $kind in nginx*) ;; *) stop_pid "$kind" "$pid" ;; esac
    done < "$RUN/pids"
    wait 2>/dev/null || true
}

master_pid() { cat "$RUN/nginx.pid"; }

worker_pids() {  # of the master in $1 (default: the current one)
    ps -o pid= --ppid "${1:-$(master_pid)}" | tr -d ' ' | sort -n
}

rss_kb() {  # summed VmRSS of the given pids
    local p sum=0 v
    for p in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

workers_rss_kb() { rss_kb $(worker_pids); }

redis_clients1() { rcli info clients | awk -F: '/^connected_clients/ {print $2+0}'; }

# Redis clients, the largest (min) of 5 samples over 0.5 s: a connection
# that reconnects after a timeout is missing for a moment, a leaked one
# stays
redis_clients() {
    local i
    for i in 1 2 3 4 5; do redis_clients1; sleep 0.1; done \
        | sort -n | { [ "${1:-max}" = max ] && tail -1 || head -1; }
}

redis_mem() { rcli info memory | awk -F: '/^used_memory:/ {print $2+0}'; }

metrics() { curl -s -m 2 "http://127.0.0.1:$PORT/metrics"; }

metric() {  # name [label-regex]: the summed value of matching lines
    metrics | awk -v n="$1" -v l="${2:-}" '
        $1 ~ "^"n"({|$)" && (l == "" || $1 ~ l) { s += $2 } END { print s+0 }'
}

kctl() {  # a command to the Kafka mock's control port
    exec 5<>"/dev/tcp/127.0.0.1/$KCTL"
    printf '%s\n' "$*" >&5
    local reply
    read -r -t 2 reply <&5
    exec 5>&-
    [ "$reply" = ok ] || { echo "chaos: kmock '$*': $reply" >&2; return 1; }
}

# wrk in the background for $1 seconds; its summary goes to $RUN/wrk.out
wrk_start() {
    CHAOS_DELAY_MS=$CHAOS_DELAY_MS CHAOS_SLOW=${CHAOS_SLOW:-0} \
    CHAOS_URLS=$CHAOS_URLS \
        wrk -t "$CHAOS_THREADS" -c "$CHAOS_CONNS" -d "${1}s" --timeout 5s \
            -s "$HERE/load.lua" "http://127.0.0.1:$PORT" \
            > "$RUN/wrk${2:-}.out" 2>&1 &
    WRK_PID=$!
    rm -f "$RUN/probe.lines"
    "$PYTHON" "$HERE/probe.py" "$PORT" "$1" "$RUN/probe.lines" \
        "$CHAOS_PROBE_CONNS" "$CHAOS_DELAY_MS" > "$RUN/probe.out" 2>&1 &
    PROBE_PID=$!
    # the probe is running when its file appears
    local i
    for i in $(seq 200); do
        [ -e "$RUN/probe.lines" ] && break
        sleep 0.05
    done
}

probe_wait() {
    wait "$PROBE_PID" || true
    PROBE_PID=
    pf() { sed -n "s/.*chaos-probe.* $1=\([^ ]*\).*/\1/p" "$RUN/probe.out"; }
    P_REQ=$(sed -n 's/.*chaos-probe requests=\([0-9]*\).*/\1/p' "$RUN/probe.out")
    P_FAIL=$(pf failed) P_NON2XX=$(pf non2xx) P_RETRIED=$(pf retried)
    P_MAX=$(pf max_ms) P_P99=$(pf p99_ms) P_REASONS=$(pf reasons)
    P_SLOW=$(pf over1s)
    if [ -z "$P_REQ" ]; then
        echo "chaos: the probe printed no summary:" >&2
        cat "$RUN/probe.out" >&2
        P_REQ=0 P_FAIL=unknown P_NON2XX=unknown
        return 1
    fi
}

probe_summary() {
    echo "probe: $P_REQ requests, failed $P_FAIL, non-2xx $P_NON2XX," \
         "retried after an idle keepalive close $P_RETRIED, max $P_MAX ms" \
         "p99 $P_P99 ms, over 1 s $P_SLOW"
}

# the slowest probe request (ms) that ended (or "start": started) in
# [from, to] ms
probe_max_ms() {
    awk -v f="$1" -v t="$2" -v s="${3:-}" '{ m = $1 }
        s != "" { m -= $2 }
        m >= f && m <= t && $2 > x { x = $2 } END { printf "%d", x }' \
        "$RUN/probe.lines"
}

wrk_wait() {
    probe_wait || true
    wait "$WRK_PID" || true
    WRK_PID=
    wrk_field() { sed -n "s/.*chaos-wrk.* $1=\([0-9]*\).*/\1/p" "$RUN/wrk${2:-}.out"; }
    W_REQ=$(sed -n 's/.*chaos-wrk requests=\([0-9]*\).*/\1/p' "$RUN/wrk${1:-}.out")
    W_ERR=0
    local f v
    for f in connect read write status timeout; do
        v=$(wrk_field "$f" "${1:-}")
        W_ERR=$((W_ERR + ${v:-0}))
    done
    W_ERRS=$(sed -n 's/.*chaos-wrk requests=[0-9]* \(connect.*timeout=[0-9]*\).*/\1/p' "$RUN/wrk${1:-}.out")
    W_MAX_MS=$(( $(wrk_field max_us "${1:-}") / 1000 ))
    W_P99_MS=$(awk -v u="$(wrk_field p99_us "${1:-}")" 'BEGIN {printf "%.1f", u/1000}')
    W_RPS=$(awk -v r="$W_REQ" -v d="$(wrk_field duration_us "${1:-}")" \
        'BEGIN {printf "%d", d ? r / (d / 1e6) : 0}')
    if [ -z "$W_REQ" ]; then
        echo "chaos: wrk printed no summary:" >&2
        cat "$RUN/wrk${1:-}.out" >&2
        return 1
    fi
}

# Wait until no event is queued in any worker (at most $1 seconds)
kafka_drain() {
    local i depth
    for i in $(seq $(( ${1:-20} * 10 ))); do
        depth=$(metric aai_kafka_queue_depth)
        [ "$depth" = 0 ] && return 0
        sleep 0.1
    done
    return 1
}

# Kafka accounting: the ids nginx logged against the ids in the topic.
# Sets K_LOGGED K_ARRIVED K_LOST K_DUP K_EXTRA and the metric figures.
# With CHAOS_READBACK=0 (the soak: the mock serves reads at a few thousand
# events a second) only the number of events in the topic is compared: the
# sum of its partitions' high watermarks.
kafka_account() {
    awk '{print $2}' "$RUN"/access.log | sort -u > "$RUN/ids.logged"
    K_LOGGED=$(wc -l < "$RUN/ids.logged")
    if [ "${CHAOS_READBACK:-1}" = 0 ]; then
        K_ARRIVED=$(for p in 0 1 2 3; do
                kcat -b "$BROKERS" -Q -t "chaos:$p:-1" 2>/dev/null; done \
            | awk '{s += $NF} END {print s+0}')
        K_DUP=? K_EXTRA=?
        K_LOST=$((K_LOGGED - K_ARRIVED))
    else
        timeout "${CHAOS_READBACK_SECS:-180}" \
            kcat -b "$BROKERS" -C -t chaos -o beginning -e -q -f '%s\n' \
                2>/dev/null \
            | sed -n 's/.*"id":"\([0-9a-f]*\)".*/\1/p' > "$RUN/ids.topic.all" \
            || true
        sort -u "$RUN/ids.topic.all" > "$RUN/ids.topic"
        K_ARRIVED=$(wc -l < "$RUN/ids.topic")
        K_DUP=$(( $(wc -l < "$RUN/ids.topic.all") - K_ARRIVED ))
        K_LOST=$(comm -23 "$RUN/ids.logged" "$RUN/ids.topic" | wc -l)
        K_EXTRA=$(comm -13 "$RUN/ids.logged" "$RUN/ids.topic" | wc -l)
    fi
    metrics > "$RUN/metrics.end"
    M_PRODUCED=$(metric aai_kafka_events_total 'outcome="produced"')
    M_DELIVERED=$(metric aai_kafka_events_total 'outcome="delivered"')
    M_FAILED=$(metric aai_kafka_events_total 'outcome="failed"')
    M_DROPPED=$(metric aai_kafka_events_total 'outcome="dropped"')
    M_DEPTH=$(metric aai_kafka_queue_depth)
}

kafka_summary() {
    echo "kafka: logged=$K_LOGGED arrived=$K_ARRIVED lost=$K_LOST dup=$K_DUP" \
         "extra=$K_EXTRA; metrics produced=$M_PRODUCED" \
         "delivered=$M_DELIVERED failed=$M_FAILED dropped=$M_DROPPED" \
         "queue_depth=$M_DEPTH"
}

# access.log: requests (lines) and their non-2xx statuses
log_statuses() {
    awk '{c[$4]++} END {for (s in c) printf "%s=%d ", s, c[s]}' "$RUN/access.log"
}

# non-2xx but 499: wrk closes its connections when its time is up
log_non2xx() { awk '$4 !~ /^2/ && $4 != 499' "$RUN/access.log" | wc -l; }

# the largest $request_time (ms) of the requests that ended (or with
# "start": started) in [from, to] ms
log_max_ms() {
    awk -v f="$1" -v t="$2" -v s="${3:-}" '{ m = $1 * 1000 }
        s != "" { m -= $5 * 1000 }
        m >= f && m <= t { if ($5 > x) x = $5 } END { printf "%d", x * 1000 }' \
        "$RUN/access.log"
}

log_count_over() {  # from to ms [start]: requests in the window over ms
    awk -v f="$1" -v t="$2" -v ms="$3" -v s="${4:-}" '{ m = $1 * 1000 }
        s != "" { m -= $5 * 1000 }
        m >= f && m <= t && $5 * 1000 > ms { n++ } END { print n+0 }' \
        "$RUN/access.log"
}

RESULT=0
verdict() {  # name ok(0/1) figures...
    local name=$1 ok=$2
    shift 2
    if [ "$ok" = 1 ]; then
        echo "PASS $name: $*"
    else
        echo "FAIL $name: $*"
        RESULT=1
    fi
}
