# ngx_http_aai_cache_module: the stampede lock (one upstream request for
# concurrent misses, on one instance or several), stale serving
# (aai_cache_use_stale, stale-if-error, stale-while-revalidate, updating),
# background update, and purge.
#
# An "app" nginx instance stands for the upstream and logs each request it
# serves; its /slow/ answers after 300 ms (a proxy to a listener that never
# answers, read timeout 300 ms, error_page 504 =200).

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use AaiTest qw( :DEFAULT wait_until );
use IO::Socket::INET ();
use IO::Select ();
use Time::HiRes qw( sleep time );
use Errno qw( EAGAIN EWOULDBLOCK EINTR );

$ENV{TEST_NGINX_REDIS_PORT} ||= 6379;
$ENV{TEST_NGINX_HUNG_PORT} = hung_listener();
$ENV{TEST_NGINX_DEAD_PORT} = free_port();

my ($app_port, $app_stop, $app_prefix) = start_nginx_instance('c051app',
                                                              <<'_EOC_');
    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;
        default_type text/plain;

        location /slow/ {
            proxy_read_timeout 300ms;
            proxy_pass http://127.0.0.1:$TEST_NGINX_HUNG_PORT;
            error_page 504 =200 @slow;
        }

        location @slow {
            add_header X-App-Id $request_id;
            add_header Cache-Control "max-age=60";
            return 200 "slow $request_id\n";
        }

        location /slow-nostore/ {
            proxy_read_timeout 300ms;
            proxy_pass http://127.0.0.1:$TEST_NGINX_HUNG_PORT;
            error_page 504 =200 @slow_nostore;
        }

        location @slow_nostore {
            add_header X-App-Id $request_id;
            add_header Cache-Control "no-store";
            return 200 "slow-nostore $request_id\n";
        }

        location /slow-ttl1/ {
            proxy_read_timeout 300ms;
            proxy_pass http://127.0.0.1:$TEST_NGINX_HUNG_PORT;
            error_page 504 =200 @slow_ttl1;
        }

        location @slow_ttl1 {
            add_header X-App-Id $request_id;
            add_header Cache-Control "max-age=1";
            return 200 "v $request_id\n";
        }

        location /ttl1/ {
            if ($http_x_fail) {
                return 500 "failing\n";
            }
            add_header X-App-Id $request_id;
            add_header Cache-Control "max-age=1";
            return 200 "v $request_id\n";
        }

        location /sie/ {
            if ($http_x_fail) {
                return 503 "failing\n";
            }
            add_header X-App-Id $request_id;
            add_header Cache-Control "max-age=1, stale-if-error=60";
            return 200 "v $request_id\n";
        }

        location /swr/ {
            add_header X-App-Id $request_id;
            add_header Cache-Control "max-age=1, stale-while-revalidate=60";
            return 200 "v $request_id\n";
        }

        location /vary/ {
            add_header Cache-Control "max-age=60";
            add_header Vary "X-Lang";
            return 200 "lang=$http_x_lang\n";
        }

        location /plain/ {
            add_header Cache-Control "max-age=60";
            return 200 "plain $request_id\n";
        }

        location /hang/ {
            proxy_read_timeout 5s;
            proxy_pass http://127.0.0.1:$TEST_NGINX_HUNG_PORT;
        }
    }
_EOC_

$ENV{TEST_NGINX_APP_PORT} = $app_port;

my $front = <<'_EOC_';
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;

    upstream app {
        server 127.0.0.1:$TEST_NGINX_APP_PORT;
        keepalive 16;
    }

    proxy_http_version 1.1;
    proxy_set_header Connection "";

    server {
        listen 127.0.0.1:$TEST_NGINX_INSTANCE_PORT;

        add_header X-Status $aai_cache_status always;

        location /lock/ {
            aai_cache on;
            aai_cache_lock on;
            proxy_pass http://app/slow/;
        }

        location /lock-nostore/ {
            aai_cache on;
            aai_cache_lock on;
            proxy_pass http://app/slow-nostore/;
        }

        location /lock-short/ {
            aai_cache on;
            aai_cache_lock on;
            aai_cache_lock_timeout 100ms;
            proxy_pass http://app/slow/;
        }

        location /nolock/ {
            aai_cache on;
            proxy_pass http://app/slow/;
        }

        # one cache key, reached through a working and a dead upstream
        location /up/ {
            aai_cache on;
            aai_cache_key "stale $arg_k";
            aai_cache_use_stale error timeout http_500 http_503;
            proxy_pass http://app/ttl1/;
        }

        location /down/ {
            aai_cache on;
            aai_cache_key "stale $arg_k";
            aai_cache_use_stale error timeout http_500 http_503;
            proxy_pass http://127.0.0.1:$TEST_NGINX_DEAD_PORT;
        }

        location /hung/ {
            aai_cache on;
            aai_cache_key "stale $arg_k";
            aai_cache_use_stale error timeout http_500 http_503;
            proxy_read_timeout 200ms;
            proxy_pass http://app/hang/;
        }

        location /down-nostale/ {
            aai_cache on;
            aai_cache_key "stale $arg_k";
            proxy_pass http://127.0.0.1:$TEST_NGINX_DEAD_PORT;
        }

        location /fail-nostale/ {
            aai_cache on;
            aai_cache_key "stale $arg_k";
            aai_cache_use_stale error timeout;
            proxy_pass http://app/ttl1/;
        }

        # stale-if-error from the response, no aai_cache_use_stale
        location /sie/ {
            aai_cache on;
            aai_cache_key "sie $arg_k";
            proxy_pass http://app/sie/;
        }

        location /sie-down/ {
            aai_cache on;
            aai_cache_key "sie $arg_k";
            proxy_pass http://127.0.0.1:$TEST_NGINX_DEAD_PORT;
        }

        # updating: served stale while the lock holder fetches
        location /upd/ {
            aai_cache on;
            aai_cache_key "upd $arg_k";
            aai_cache_use_stale updating;
            proxy_pass http://app/ttl1/;
        }

        location /upd-slow/ {
            aai_cache on;
            aai_cache_key "upd $arg_k";
            aai_cache_lock on;
            aai_cache_use_stale updating;
            proxy_pass http://app/slow-ttl1/;
        }

        # background update
        location /bg/ {
            aai_cache on;
            aai_cache_use_stale updating;
            aai_cache_background_update on;
            proxy_pass http://app/slow-ttl1/;
        }

        location /swr/ {
            aai_cache on;
            aai_cache_background_update on;
            proxy_pass http://app/swr/;
        }

        location /purge/ {
            allow 127.0.0.1;
            deny all;
            aai_cache_purge "p $arg_k";
            aai_cache_key "p $arg_k";
        }

        location /p/ {
            aai_cache on;
            aai_cache_key "p $arg_k";
            proxy_pass http://app/vary/;
        }

        location = /metrics {
            aai_metrics;
        }

        location /purge-denied/ {
            deny all;
            aai_cache_purge "p $arg_k";
        }
    }
_EOC_

my ($a_port, $a_stop, $a_prefix) = start_nginx_instance('c051a', $front);
my ($b_port, $b_stop, $b_prefix) = start_nginx_instance('c051b', $front);

# the app writes its log line just after its response: wait until the
# count has not changed for 100 ms
sub app_count {
    my $re = shift;
    my ($n, $last, $since) = (-1, -1, time);
    my $deadline = time + 2;
    while (time < $deadline) {
        $n = grep { /$re/ } file_lines("$app_prefix/logs/access.log");
        $since = time if $n != $last;
        $last = $n;
        last if time - $since >= 0.1;
        sleep 0.02;
    }
    return $n;
}

sub get {
    my ($port, $path, $hdrs, $method) = @_;
    my $t0 = time;
    my ($st, $h, $body) = http_get($port, $path, $hdrs || {}, $method);
    return { status => $st // 0, x => $h->{'x-status'} // '',
             cs => $h->{'cache-status'} // '', body => $body // '',
             id => $h->{'x-app-id'} // '', took => time - $t0 };
}

# reads until the Content-Length of the body has arrived
sub get_body_only {
    my ($port, $path) = @_;
    my $t0 = time;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Timeout => 3)
        or die "connect: $!";
    syswrite($s, "GET $path HTTP/1.1\r\nHost: localhost\r\n\r\n");
    my $raw = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(3)) {
        last unless sysread($s, my $buf, 4096);
        $raw .= $buf;
        my $i = index($raw, "\r\n\r\n");
        next if $i < 0;
        my ($len) = substr($raw, 0, $i) =~ /Content-Length: (\d+)/i;
        last if defined $len && length($raw) - $i - 4 >= $len;
    }
    my $took = time - $t0;
    close $s;
    my $r = parse_response($raw);
    $r->{took} = $took;
    return $r;
}

sub parse_response {
    my $raw = shift;
    my $i = index($raw, "\r\n\r\n");
    return { status => 0, x => '', cs => '', body => $raw } if $i < 0;
    my @lines = split /\r\n/, substr($raw, 0, $i);
    my ($st) = (shift @lines) =~ m{^HTTP/\S+ (\d+)};
    my %h = map { my ($k, $v) = split /:\s*/, $_, 2; (lc $k, $v) } @lines;
    my $body = substr($raw, $i + 4);
    if (($h{'transfer-encoding'} // '') =~ /chunked/) {
        my $out = '';
        while ($body =~ s/^([0-9a-f]+)\r\n//i) {
            my $n = hex $1;
            last unless $n;
            $out .= substr($body, 0, $n);
            substr($body, 0, $n + 2) = '';
        }
        $body = $out;
    }
    return { status => $st, x => $h{'x-status'} // '',
             cs => $h{'cache-status'} // '', body => $body };
}

# N requests at once (N connections written before any is read)
sub concurrent {
    my (@targets) = @_;    # [port, path] ...
    return map {
        my ($st, $h, $body) = @$_;
        +{ status => $st // 0, x => $h->{'x-status'} // '',
           cs => $h->{'cache-status'} // '', body => $body }
    } http_concurrent(\@targets);
}

sub counts {
    my %c;
    $c{$_->{x}}++ for @_;
    return join ' ', map { "$_=$c{$_}" } sort keys %c;
}


# --- the stampede lock -------------------------------------------------------

redis_flushdb();

{
    my @r = concurrent(map { [$a_port, '/lock/one'] } 1 .. 50);
    is(scalar(grep { $_->{status} == 200 } @r), 50, 'lock: 50 answered 200');
    is(app_count(qr{GET /slow/one }), 1,
       'lock: 50 concurrent misses, the upstream saw 1');
    is(counts(@r), 'HIT=49 MISS=1', 'lock: 1 miss, 49 hits');
    my %bodies = map { $_->{body} => 1 } @r;
    is(scalar keys %bodies, 1, 'lock: all got the same response');
    is(scalar(grep { $_->{cs} =~ /^aai; hit; ttl=\d+; collapsed$/ } @r), 49,
       'lock: the waiters are "collapsed" hits');
}

{
    my @r = concurrent(map { [$_ % 2 ? $a_port : $b_port, '/lock/two'] }
                       1 .. 50);
    is(scalar(grep { $_->{status} == 200 } @r), 50,
       'lock, two instances: 50 answered 200');
    is(app_count(qr{GET /slow/two }), 1,
       'lock, two instances: the upstream saw 1');
    is(counts(@r), 'HIT=49 MISS=1', 'lock, two instances: 1 miss, 49 hits');
}

{
    my $t0 = time;
    my @r = concurrent(map { [$a_port, '/lock-nostore/x'] } 1 .. 10);
    my $took = time - $t0;
    is(app_count(qr{GET /slow-nostore/x }), 10,
       'lock, not storable: every waiter goes upstream');
    cmp_ok($took, '<', 1.5, "lock, not storable: woken at once ($took s)");
    is(scalar(grep { $_->{cs} =~ /; collapsed; detail=no-store$/ } @r), 9,
       'lock, not storable: 9 woken by the holder')
        or diag(join "\n", map { $_->{cs} } @r);
}

{
    my $t0 = time;
    my @r = concurrent(map { [$a_port, '/lock-short/x'] } 1 .. 5);
    is(app_count(qr{GET /slow/x }), 5, 'lock timeout: waiters go upstream')
        or diag(join "\n", map { "$_->{status} $_->{cs}" } @r);
    is(scalar(grep { $_->{cs} =~ /detail=lock-timeout/ } @r), 4,
       'lock timeout: 4 timed out');
}

{
    my @r = concurrent(map { [$a_port, '/nolock/y'] } 1 .. 10);
    is(app_count(qr{GET /slow/y }), 10,
       'no lock: 10 concurrent misses, 10 upstream requests');
}


# --- stale ---------------------------------------------------------------

redis_flushdb();

my %first;
for my $k (qw( error timeout http500 nostale nohttp500 sie upd expired )) {
    my $loc = $k eq 'sie' ? 'sie' : $k eq 'upd' ? 'upd' : 'up';
    my $r = get($a_port, "/$loc/?k=$k");
    is("$r->{status} $r->{x}", '200 MISS', "stale $k: stored");
    $first{$k} = $r->{body};
}

{
    my $r = get($a_port, '/bg/x');
    is("$r->{status} $r->{x}", '200 MISS', 'bg: stored');
    $first{bg} = $r->{body};
    $r = get($a_port, '/swr/x');
    is("$r->{status} $r->{x}", '200 MISS', 'swr: stored');
    $first{swr} = $r->{body};
}

sleep 1.1;

{
    my $r = get($a_port, '/down/?k=error');
    is("$r->{status} $r->{x}", '200 STALE', 'error: stale served');
    is($r->{body}, $first{error}, 'error: the stored body');
    like($r->{cs}, qr/^aai; fwd=stale; fwd-status=502; ttl=-\d+; detail=stale-if-error$/,
         'error: Cache-Status');

    $r = get($a_port, '/hung/?k=timeout');
    is("$r->{status} $r->{x}", '200 STALE', 'timeout: stale served');
    like($r->{cs}, qr/fwd-status=504/, 'timeout: Cache-Status');

    $r = get($a_port, '/up/?k=http500', { 'X-Fail' => 1 });
    is("$r->{status} $r->{x} $r->{body}", "200 STALE $first{http500}",
       'http_500: stale served');

    $r = get($a_port, '/fail-nostale/?k=nohttp500', { 'X-Fail' => 1 });
    is("$r->{status} $r->{x} $r->{body}", "500 EXPIRED failing\n",
       'http_500 not listed: the error passes');

    $r = get($a_port, '/down-nostale/?k=nostale');
    is("$r->{status} $r->{x}", '502 EXPIRED',
       'no aai_cache_use_stale: the error passes');

    $r = get($a_port, '/sie-down/?k=sie');
    is("$r->{status} $r->{x} $r->{body}", "200 STALE $first{sie}",
       'stale-if-error from the response');

    $r = get($a_port, '/up/?k=expired');
    is("$r->{status} $r->{x}", '200 EXPIRED', 'expired: refreshed upstream');
    like($r->{cs}, qr/^aai; fwd=stale; fwd-status=200; stored$/,
         'expired: Cache-Status');
    isnt($r->{body}, $first{expired}, 'expired: a new response');
    $r = get($a_port, '/up/?k=expired');
    is($r->{x}, 'HIT', 'expired: then a hit');
}

{
    # the lock holder fetches for 300 ms; meanwhile others get it stale

    my %locks = map { $_ => 1 } @{ redis_cmd('KEYS', 'aai:c:*:l') };
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $a_port, Timeout => 3);
    syswrite($s, "GET /upd-slow/?k=upd HTTP/1.0\r\nHost: localhost\r\n\r\n");
    # the holder has taken the lock (not a sleep that assumes it)
    ok(wait_until(3, sub {
           grep { !$locks{$_} } @{ redis_cmd('KEYS', 'aai:c:*:l') } }),
       'updating: the holder took the lock');
    my $r = get($b_port, '/upd-slow/?k=upd');
    is("$r->{status} $r->{x} $r->{body}", "200 UPDATING $first{upd}",
       'updating: stale while another instance updates');
    # at once: answered while the holder still waits for the upstream (its
    # response not there yet), however long the request took on a loaded
    # machine
    ok(!IO::Select->new($s)->can_read(0),
       "updating: at once, before the holder's response ($r->{took} s)");
    like($r->{cs}, qr/^aai; hit; ttl=-\d+; detail=updating$/,
         'updating: Cache-Status');
    my $raw = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(3)) {
        last unless sysread($s, my $buf, 4096);
        $raw .= $buf;
    }
    my $w = parse_response($raw);
    is("$w->{status} $w->{x}", '200 EXPIRED', 'updating: the holder updated');
}

{
    # the response is complete at once; the connection stays open until
    # the background update is done (as with proxy_cache_background_update)

    my $r = get_body_only($a_port, '/bg/x');
    is("$r->{status} $r->{x} $r->{body}", "200 STALE $first{bg}",
       'background update: stale served');
    # (waiting for the upstream would take its 300 ms at least)
    cmp_ok($r->{took}, '<', 0.3,
           "background update: without waiting for the upstream ($r->{took} s)");
    like($r->{cs}, qr/^aai; hit; ttl=-\d+; detail=background-update$/,
         'background update: Cache-Status');

    my $deadline = time + 3;
    do {
        sleep 0.1;
        $r = get($a_port, '/bg/x');
    } while ($r->{x} ne 'HIT' && time < $deadline);
    is($r->{x}, 'HIT', 'background update: then a hit');
    isnt($r->{body}, $first{bg}, 'background update: of the new response');
    is(app_count(qr{GET /slow-ttl1/x }), 2,
       'background update: one upstream request');

    $r = get($a_port, '/swr/x');
    is("$r->{status} $r->{x} $r->{body}", "200 STALE $first{swr}",
       'stale-while-revalidate from the response');
}


# --- purge ---------------------------------------------------------------

redis_flushdb();

{
    # what the responses said they store is in Redis before the checks (a
    # store is sent after the response: not the time the next request
    # takes, on a loaded machine)
    my $stored = sub {
        metrics_get($a_port)->{aai_cache_stored_total} // 0 };
    my $before = $stored->();
    my $storing = 0;
    my $all = 1;
    # each store acknowledged before the next request: with two Redis
    # connections a HEAD's lookup could overtake the GET's store and miss
    # (its header-only entry is then not stored over the GET's: t/058)
    my $req = sub {
        return unless get($a_port, @_)->{cs} =~ /; stored$/;
        $storing++;
        $all &&= AaiTest::wait_until(5,
                     sub { $stored->() >= $before + $storing });
    };
    for my $h ({ 'X-Lang' => 'en' }, { 'X-Lang' => 'fr' }) {
        $req->('/p/?k=1', $h, $_) for 'GET', 'HEAD';
    }
    $req->('/p/?k=2');
    ok($all && $storing >= 3, "purge: the $storing entries stored");
    is(get($a_port, '/p/?k=1', { 'X-Lang' => 'fr' })->{x}, 'HIT',
       'purge: stored');

    my $r = get($a_port, '/purge/?k=1', {}, 'PURGE');
    is("$r->{status} $r->{body}", "200 {\"purged\":3}\n",
       'purge: GET and HEAD entries, all variants');
    is(get($a_port, '/p/?k=1', { 'X-Lang' => 'fr' })->{x}, 'MISS',
       'purge: then a miss');
    is(get($a_port, '/p/?k=2')->{x}, 'HIT', 'purge: other keys stay');

    $r = get($a_port, '/purge/?k=404', {}, 'DELETE');
    is("$r->{status} $r->{body}", "404 {\"purged\":0}\n",
       'purge: nothing to purge');

    $r = get($a_port, '/purge-denied/?k=2', {}, 'PURGE');
    is($r->{status}, 403, 'purge: allow/deny protect it');
    is(get($a_port, '/p/?k=2')->{x}, 'HIT', 'purge: denied did nothing');
}

# --- metrics ---------------------------------------------------------------

{
    my $ma = metrics_get($a_port);
    my $mb = metrics_get($b_port);
    is($ma->{'aai_cache_requests_total{status="stale"}'}, 6,
       'metrics: stale responses counted');
    is($mb->{'aai_cache_requests_total{status="updating"}'}, 1,
       'metrics: updating counted');
    cmp_ok($ma->{'aai_cache_requests_total{status="expired"}'} // 0, '>=', 3,
           'metrics: expired counted');
    cmp_ok($ma->{'aai_cache_requests_total{status="hit"}'} // 0, '>=', 49,
           'metrics: hits counted');
    is($ma->{'aai_cache_store_failures_total'}, 0, 'metrics: no store failure');
    cmp_ok($ma->{'aai_cache_bytes_served_total'} // 0, '>', 0,
           'metrics: bytes served counted');
}

for my $p ($a_prefix, $b_prefix, $app_prefix) {
    my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ }
              file_lines("$p/logs/error.log");
    is(scalar @bad, 0, "no alert in $p") or diag(@bad);
}

run_tests();

AaiTest::logs_once_more();

$a_stop->();
$b_stop->();
$app_stop->();

__DATA__

=== TEST 1: purge through a regex location: GET and HEAD entries of a URI
--- http_config
    aai_cache_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT timeout=3s;
--- config
    location /api/ {
        aai_cache on;
        add_header X-Status $aai_cache_status;
        proxy_pass http://127.0.0.1:$TEST_NGINX_APP_PORT/plain/;
    }
    location ~ ^/purge(/.*)$ {
        allow 127.0.0.1;
        deny all;
        aai_cache_purge $scheme$request_method$host$1$is_args$args;
    }
--- request eval
["GET /api/x?a=1", "HEAD /api/x?a=1", "GET /api/x?a=1", "HEAD /api/x?a=1",
 "PURGE /purge/api/x?a=1", "GET /api/x?a=1", "PURGE /purge/api/x?a=1"]
--- error_code eval
[200, 200, 200, 200, 200, 200, 200]
--- response_headers eval
["X-Status: MISS", "X-Status: MISS", "X-Status: HIT", "X-Status: HIT",
 "Content-Type: application/json", "X-Status: MISS", ""]
--- response_body_like eval
["^plain ", "^\$", "^plain ", "^\$", "^\\{\"purged\":2\\}\$", "^plain ",
 "^\\{\"purged\":1\\}\$"]
--- no_error_log
[error]
